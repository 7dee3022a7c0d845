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

import dis
import functools
import importlib
import importlib.abc
import importlib.util
import sys

__all__ = [
    "HAS_C_EXTENSION",
    "MissingExtensionError",
    "apply",
    "coco_eval_fast_impl_available",
    "detectron2_cityscapes_usable",
]

_EXTENSION = "detectron2._C"

ADVICE = (
    "This detectron2 has no usable compiled extension (detectron2._C). Rotated boxes, deformable "
    "convolution and the C++ COCOeval need it: install detectron2 from source "
    "(docs/getting_started.md, 'Installing on your own GPU machine'), or avoid the feature (for COCO "
    "evaluation use COCOEvaluator(..., use_fast_impl=False), which point_sup's evaluators select "
    "automatically)."
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
            "(tools/setup_env.sh) or see docs/getting_started.md, 'Installing on your own GPU machine'."
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


def detectron2_cityscapes_usable() -> bool:
    """Whether Detectron2's own Cityscapes instance loader and evaluator can import cityscapesscripts.

    True for Detectron2 from before December 2024 (such as the mid-2024 wheel of the virtualenv),
    which imports the public ``cityscapesscripts`` package, when that is installed. False for
    Detectron2 HEAD since December 2024, which imports it from a Meta-internal path
    (``deeplearning.projects.cityscapesApi.cityscapesscripts``), so that its
    ``cityscapes_fine_instance_seg_*`` datasets and ``CityscapesInstanceEvaluator`` fail with
    ``No module named 'deeplearning'``; point_sup then uses its own loader and evaluator
    (:mod:`point_sup.data.cityscapes`, :mod:`point_sup.evaluation.cityscapes`). Cached; executes no
    cityscapesscripts module (see :func:`_detectron2_cityscapes_problem`).
    """
    return _detectron2_cityscapes_problem() is None


# Where Detectron2 imports cityscapesscripts from is read from the bytecode of these functions
# (their imports are local, executed only when a Cityscapes dataset is loaded or evaluated).
_D2_CITYSCAPES_FUNCTIONS = {
    "detectron2.data.datasets.cityscapes": ("load_cityscapes_instances", "_cityscapes_files_to_dict"),
    "detectron2.evaluation.cityscapes_evaluation": (
        "CityscapesInstanceEvaluator.process",
        "CityscapesInstanceEvaluator.evaluate",
    ),
}
# What Detectron2 imported before the change; assumed if no import is found in those functions.
_PUBLIC_CITYSCAPES_MODULES = (
    "cityscapesscripts.helpers.labels",
    "cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling",
)


@functools.cache
def _detectron2_cityscapes_problem() -> str | None:
    """Why Detectron2's Cityscapes code cannot import cityscapesscripts, or None if it can.

    Looks up each ``cityscapesscripts`` module that Detectron2's functions import with
    :func:`importlib.util.find_spec`: the module itself is not executed, only its parent packages
    are imported (empty ``__init__`` files for cityscapesscripts), so this costs milliseconds.
    Reading the import statements from the functions' bytecode, rather than comparing Detectron2
    versions, is exact for any build, also one whose internal path has been made importable.
    """
    modules: dict[str, None] = {}  # ordered set: the loader's imports are reported first
    for module_name, qualnames in _D2_CITYSCAPES_FUNCTIONS.items():
        module = importlib.import_module(module_name)
        for qualname in qualnames:
            function = functools.reduce(getattr, qualname.split("."), module)
            for ins in dis.get_instructions(function):
                if ins.opname == "IMPORT_NAME" and "cityscapesscripts" in ins.argval:
                    modules[ins.argval] = None
    for name in list(modules) or _PUBLIC_CITYSCAPES_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
            reason = "not found"
        except ImportError as e:  # a parent package is missing, e.g. "No module named 'deeplearning'"
            found, reason = False, f"{type(e).__name__}: {e}"
        if not found:
            return f"Detectron2's Cityscapes code imports {name}, which is not importable ({reason})"
    return None
