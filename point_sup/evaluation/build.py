"""Choosing the evaluators for a dataset, working with or without detectron2's C++ extension."""

from __future__ import annotations

import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, DatasetEvaluators

from .. import compat
from ..config import is_condinst
from . import fast_coco
from .point_evaluator import PointSupEvaluator

__all__ = [
    "COCO_EVAL_CHOICES",
    "COCO_EVAL_ENV",
    "build_evaluator",
    "coco_eval_implementation",
    "dataset_has_masks",
    "dataset_has_points",
]

COCO_EVAL_ENV = "POINT_SUP_COCO_EVAL"
"""Environment variable that forces the COCOeval of COCO-style and LVIS evaluation (see
:func:`coco_eval_implementation`)."""

COCO_EVAL_CHOICES = ("auto", "faster", "pycocotools", "detectron2")


def _first_annotations(dataset_name: str, max_records: int = 64) -> list[dict]:
    anns: list[dict] = []
    for record in DatasetCatalog.get(dataset_name)[:max_records]:
        anns += record.get("annotations", [])
    return anns


def dataset_has_masks(dataset_name: str) -> bool:
    """Whether the dataset's annotations carry ``segmentation`` (looks at the first records)."""
    return any("segmentation" in a for a in _first_annotations(dataset_name))


def dataset_has_points(dataset_name: str) -> bool:
    """Whether the dataset's annotations carry ``point_coords`` (looks at the first records)."""
    return any("point_coords" in a for a in _first_annotations(dataset_name))


def coco_eval_implementation(evaluator_type: str = "coco") -> str:
    """Which COCOeval :func:`build_evaluator` uses for a dataset of ``evaluator_type``.

    ``POINT_SUP_COCO_EVAL`` (environment, read at each call; unset or empty means ``auto``):

    * ``auto``: for ``coco``, Detectron2's C++ COCOeval where its extension is built, otherwise
      faster-coco-eval's where that is installed, otherwise pycocotools'. For ``lvis``, the official
      ``lvis`` API (faster-coco-eval gives the same numbers, but only on request).
    * ``faster``: faster-coco-eval (:mod:`.fast_coco`), for ``coco`` and ``lvis``; ImportError if
      it is not installed.
    * ``pycocotools``: pycocotools' COCOeval, the official one (``lvis``: the official lvis API).
    * ``detectron2``: Detectron2's own C++ COCOeval (``COCOEvaluator(use_fast_impl=True)``);
      RuntimeError where Detectron2's extension is missing (``lvis``: the official lvis API, which
      is what Detectron2's LVISEvaluator uses).

    Returns:
        ``"faster"``, ``"pycocotools"`` or ``"detectron2"`` for ``coco``; ``"faster"`` or ``"lvis"``
        for ``lvis``. Any other value of the variable raises ValueError.
    """
    choice = os.environ.get(COCO_EVAL_ENV, "").strip().lower() or "auto"
    if choice not in COCO_EVAL_CHOICES:
        raise ValueError(
            f"{COCO_EVAL_ENV}={os.environ[COCO_EVAL_ENV]!r} is not one of {', '.join(COCO_EVAL_CHOICES)}"
        )
    if choice == "faster" and not fast_coco.faster_coco_eval_available():
        raise ImportError(
            f"{COCO_EVAL_ENV}=faster, but faster_coco_eval cannot be imported: "
            "pip install faster-coco-eval==1.8.0 (requirements-eval.txt), or unset the variable"
        )
    if evaluator_type == "lvis":
        return "faster" if choice == "faster" else "lvis"
    d2_fast = compat.coco_eval_fast_impl_available()
    if choice == "detectron2" and not d2_fast:
        raise RuntimeError(
            f"{COCO_EVAL_ENV}=detectron2, but Detectron2's C++ COCOeval is not built (no detectron2._C); "
            "use auto, faster or pycocotools"
        )
    if choice == "auto":
        if d2_fast:
            return "detectron2"
        return "faster" if fast_coco.faster_coco_eval_available() else "pycocotools"
    return choice


def _coco_evaluator(
    dataset_name: str, output_folder: str, tasks: tuple[str, ...] | None = None
) -> COCOEvaluator:
    implementation = coco_eval_implementation("coco")
    if implementation == "faster":
        return fast_coco.FasterCOCOEvaluator(dataset_name, tasks=tasks, output_dir=output_folder)
    return COCOEvaluator(
        dataset_name, tasks=tasks, output_dir=output_folder, use_fast_impl=implementation == "detectron2"
    )


def model_tasks(cfg) -> tuple[str, ...] | None:
    """``("bbox", "segm")`` where the configured model predicts masks (an ROI model with
    ``MODEL.MASK_ON``, CondInst/BoxInst); otherwise None: COCOEvaluator infers the tasks from the
    predictions, as it does by default.

    Given to COCOEvaluator explicitly because, inferred from the predictions, a mask model that
    detects nothing on the test set (early in training, a broken checkpoint) would be reported with
    no segm row at all instead of with the NaN metrics of "no predictions".
    """
    return ("bbox", "segm") if cfg.MODEL.MASK_ON or is_condinst(cfg) else None


def build_evaluator(cfg, dataset_name: str, output_folder: str | None = None) -> DatasetEvaluator:
    """Evaluators for ``dataset_name`` according to its metadata's ``evaluator_type``.

    * ``coco`` (COCO, VOC-with-masks in COCO format, user data): mask and box AP with COCOEvaluator.
      VOC is reported as COCO-style AP50 (the ``AP50`` entry), which is what the paper's VOC
      numbers are. The COCOeval behind it (:func:`coco_eval_implementation`, forced with
      ``POINT_SUP_COCO_EVAL=auto|faster|pycocotools|detectron2``): Detectron2's C++ one where its
      extension is built, otherwise faster-coco-eval's (:class:`.fast_coco.FasterCOCOEvaluator`, same
      numbers as pycocotools') where installed, otherwise pycocotools'.
      A dataset with point labels but no masks gets box AP plus :class:`PointSupEvaluator`.
    * ``lvis``: Detectron2's LVISEvaluator (needs ``pip install lvis``), through
      :class:`.lvis.LVISEvaluator`, which lets lvis 0.5.3 (PyPI's latest) evaluate on numpy >= 1.24;
      with ``POINT_SUP_COCO_EVAL=faster``, :class:`.fast_coco.FasterLVISEvaluator` (same numbers).
    * ``cityscapes_instance``: CityscapesInstanceEvaluator (needs ``cityscapesscripts``), Detectron2's
      where it is usable, otherwise point_sup's :class:`.cityscapes.CityscapesInstanceEvaluator`, the
      same metric through the same files with the public package. Detectron2's is not usable where it
      cannot import cityscapesscripts (HEAD since December 2024 imports it from a Meta-internal path;
      :func:`compat.detectron2_cityscapes_usable`), nor where cityscapesscripts' own evaluation
      driver fails on the installed numpy (numpy >= 2.4;
      :func:`.cityscapes.cityscapesscripts_evaluation_runs_unaided`).
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
    if evaluator_type == "lvis":
        if coco_eval_implementation("lvis") == "faster":
            return fast_coco.FasterLVISEvaluator(dataset_name, output_dir=output_folder)
        from .lvis import LVISEvaluator

        return LVISEvaluator(dataset_name, output_dir=output_folder)
    if evaluator_type == "cityscapes_instance":
        from . import cityscapes

        if compat.detectron2_cityscapes_usable() and cityscapes.cityscapesscripts_evaluation_runs_unaided():
            from detectron2.evaluation import CityscapesInstanceEvaluator
        else:
            from .cityscapes import CityscapesInstanceEvaluator

        return CityscapesInstanceEvaluator(dataset_name)
    if evaluator_type != "coco":
        raise ValueError(
            f"point_sup has no evaluator for dataset '{dataset_name}' of type '{evaluator_type}'"
        )
    if dataset_has_masks(dataset_name):
        return _coco_evaluator(dataset_name, output_folder, tasks=model_tasks(cfg))
    evaluators: list[DatasetEvaluator] = [_coco_evaluator(dataset_name, output_folder, tasks=("bbox",))]
    if dataset_has_points(dataset_name):
        evaluators.append(PointSupEvaluator(dataset_name))
    return DatasetEvaluators(evaluators)
