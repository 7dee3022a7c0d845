"""Old numpy names for the official evaluation scripts of LVIS and Cityscapes, whose latest releases
call functions that numpy has since removed.

* ``lvis`` 0.5.3 (PyPI's latest, 2020) computes its precision curves with ``np.float``, removed in
  numpy 1.24: ``LVISEval.accumulate``, and so Detectron2's ``LVISEvaluator``, fails with
  ``AttributeError: module 'numpy' has no attribute 'float'`` (fixed in the lvis-api repository,
  never released).
* ``cityscapesscripts`` 2.3.0 (its latest release) finds the void pixels of the ground truth with
  ``np.in1d``, removed in numpy 2.4 (https://github.com/mcordts/cityscapesScripts/pull/196,
  unreleased).

:func:`numpy_with_old_names` gives one such module, for the time of a block, a global ``np`` that is
numpy plus exactly the missing names, defined as numpy defined them, and restores the module's own
``np`` afterwards. numpy itself and every other module are left alone; where numpy still has a name,
nothing is replaced. Only the evaluators of this package use it, around the call that needs it.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import numpy as np

__all__ = ["OLD_NUMPY_NAMES", "numpy_with_old_names"]


def _in1d(ar1, ar2, assume_unique: bool = False, invert: bool = False) -> np.ndarray:
    # numpy < 2.4's in1d: membership of each element of ar1, flattened to (ar1.size,).
    return np.isin(ar1, ar2, assume_unique=assume_unique, invert=invert).ravel()


# The removed names, as numpy defined them: np.float was the builtin float (numpy < 1.24).
OLD_NUMPY_NAMES = {"float": float, "in1d": _in1d}


class _NumpyWithOldNames(types.ModuleType):
    """numpy, plus some of its removed names (what a module of an old evaluation script sees)."""

    def __init__(self, names: dict) -> None:
        super().__init__("numpy")
        self.__dict__.update(names)

    def __getattr__(self, name: str):
        return getattr(np, name)


@contextlib.contextmanager
def numpy_with_old_names(module: types.ModuleType, *names: str) -> Iterator[None]:
    """For the time of the block, ``module``'s global ``np`` also has ``names`` (keys of
    :data:`OLD_NUMPY_NAMES`) where this numpy lacks them."""
    missing = {name: OLD_NUMPY_NAMES[name] for name in names if not hasattr(np, name)}
    if not missing:
        yield
        return
    original = module.np
    module.np = _NumpyWithOldNames(missing)
    try:
        yield
    finally:
        module.np = original
