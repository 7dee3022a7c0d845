"""LVIS AP with the ``lvis`` package on the numpy of today.

Detectron2's ``LVISEvaluator`` computes LVIS's federated AP with the official ``lvis`` API, whose
latest release (0.5.3) uses ``np.float``, removed in numpy 1.24, so the evaluation fails at its last
step. :class:`LVISEvaluator` is Detectron2's evaluator, unchanged, evaluating with that one name
given back to the ``lvis.eval`` module (:mod:`.numpy_compat`); with an ``lvis`` built from its
repository, or an old numpy, it is exactly Detectron2's.
"""

from __future__ import annotations

from detectron2.evaluation import LVISEvaluator as _DetectronLVISEvaluator

from .numpy_compat import numpy_with_old_names

__all__ = ["LVISEvaluator"]


class LVISEvaluator(_DetectronLVISEvaluator):
    """Detectron2's ``LVISEvaluator`` (same arguments, same results), runnable with numpy >= 1.24."""

    def evaluate(self):
        import lvis.eval  # the module that LVISEval, which Detectron2's evaluation uses, lives in

        with numpy_with_old_names(lvis.eval, "float"):
            return super().evaluate()
