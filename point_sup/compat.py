"""Adjustments for a detectron2 whose C++/CUDA extension (``detectron2._C``) cannot be loaded.

A full upstream install (``pip install 'git+https://github.com/facebookresearch/detectron2.git'``)
has a working extension, and :func:`apply` then changes nothing at all. The offline route of
``tools/setup_env.sh`` installs detectron2's Python code from a wheel whose extension was built
for another Python/torch ABI. Mask R-CNN, PointRend and all of point_sup need no C++ op, and
detectron2 (mid-2024 and later) already guards its optional uses of the extension: deformable
convolution becomes a dummy class, ``COCOEvaluator`` falls back to pycocotools' COCOeval, and
``collect_env_info`` reports the extension as not built. What remains obscure without help:

* ``torch.ops.detectron2.nms_rotated`` and the other rotated-box operators fail with "No such
  operator", which does not say that the extension is missing, nor what to do;
* ``from detectron2 import _C`` (detectron2's C++ COCOeval, or user code) fails with "cannot import
  name '_C'".

:func:`apply` registers the rotated-box operators as stubs and puts an import hook for
``detectron2._C`` in front of ``sys.meta_path``; both raise :class:`MissingExtensionError`,
whose message says the extension is missing and what to do instead. The error is an
``ImportError``, so detectron2's own ``try: from detectron2 import _C / except ImportError``
fallbacks keep working exactly as without point_sup.

Deliberately *not* done: a stand-in ``detectron2._C`` module. It would make ``fast_eval_api``
importable and so switch off ``COCOEvaluator``'s automatic fallback to pycocotools.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys

__all__ = ["HAS_C_EXTENSION", "MissingExtensionError", "apply", "coco_eval_fast_impl_available"]

_EXTENSION = "detectron2._C"

ADVICE = (
    "This detectron2 has no usable compiled extension (detectron2._C). Rotated boxes, deformable "
    "convolution and the C++ COCOeval need it: install detectron2 from source (README.md, "
    "'Installing on your own GPU machine'), or avoid the feature (for COCO evaluation use "
    "COCOEvaluator(..., use_fast_impl=False), which point_sup's evaluators select automatically)."
)


class MissingExtensionError(ImportError, RuntimeError):
    """Something needs detectron2's C++ extension, which is not loadable here.

    An ``ImportError`` (detectron2 falls back on ``except ImportError`` around ``import _C``) and a
    ``RuntimeError`` (what a failing operator call raises).
    """


HAS_C_EXTENSION: bool | None = None
"""True: the real extension loaded. False: it is missing and :func:`apply` adjusted for that.
None: :func:`apply` has not run."""

_reason = ""


class _MissingExtensionFinder(importlib.abc.MetaPathFinder):
    """Answers every import of ``detectron2._C`` with a clear :class:`MissingExtensionError`."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == _EXTENSION:
            raise MissingExtensionError(f"cannot import {_EXTENSION} ({_reason}). {ADVICE}", name=_EXTENSION)
        return None


# Schemas of the operators that detectron2's extension registers under torch.ops.detectron2.
_ROTATED_OP_SCHEMAS = {
    "nms_rotated": "nms_rotated(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor",
    "box_iou_rotated": "box_iou_rotated(Tensor boxes1, Tensor boxes2) -> Tensor",
    "roi_align_rotated_forward": (
        "roi_align_rotated_forward(Tensor input, Tensor rois, float spatial_scale, int pooled_height, "
        "int pooled_width, int sampling_ratio) -> Tensor"
    ),
    "roi_align_rotated_backward": (
        "roi_align_rotated_backward(Tensor grad, Tensor rois, float spatial_scale, int pooled_height, "
        "int pooled_width, int batch_size, int channels, int height, int width, int sampling_ratio) "
        "-> Tensor"
    ),
}
_op_library = None  # keeps the torch.library.Library (and so the stubs) alive


def _register_rotated_op_stubs() -> None:
    global _op_library
    import torch

    if _op_library is not None:
        return
    try:
        lib = torch.library.Library("detectron2", "DEF")
    except RuntimeError:  # the namespace exists already (some other build defines it): leave it
        return
    for name, schema in _ROTATED_OP_SCHEMAS.items():
        lib.define(schema)

        def _stub(*args, _name=name, **kwargs):
            raise MissingExtensionError(
                f"torch.ops.detectron2.{_name} (rotated boxes) is unavailable. {ADVICE}"
            )

        lib.impl(name, _stub, "CompositeExplicitAutograd")
    _op_library = lib


def apply() -> bool:
    """Adjust for a missing ``detectron2._C`` if, and only if, it cannot be imported.

    Idempotent; ``import point_sup`` calls it. Returns :data:`HAS_C_EXTENSION`.

    Raises:
        ImportError: detectron2 itself is not importable (with set-up instructions).
    """
    global HAS_C_EXTENSION, _reason
    if HAS_C_EXTENSION is not None:
        return HAS_C_EXTENSION
    try:
        import detectron2  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"point_sup needs detectron2, which is not importable here ({e}). Run `make setup` "
            "(tools/setup_env.sh) or see README.md, 'Installing on your own GPU machine'."
        ) from e
    try:
        importlib.import_module(_EXTENSION)
    except (ImportError, OSError) as e:  # absent, built for another Python/torch ABI, CUDA libs missing
        _reason = f"{type(e).__name__}: {e}"
    else:
        HAS_C_EXTENSION = True
        return True

    sys.meta_path.insert(0, _MissingExtensionFinder())
    _register_rotated_op_stubs()
    HAS_C_EXTENSION = False
    return False


def coco_eval_fast_impl_available() -> bool:
    """Whether detectron2's C++ COCOeval can be used (for ``COCOEvaluator(use_fast_impl=...)``)."""
    return bool(apply())
