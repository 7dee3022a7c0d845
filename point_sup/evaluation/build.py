"""Choosing the evaluators for a dataset, working with or without detectron2's C++ extension."""

from __future__ import annotations

import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, DatasetEvaluators

from .. import compat
from .point_evaluator import PointSupEvaluator

__all__ = ["build_evaluator", "dataset_has_masks", "dataset_has_points"]


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


def build_evaluator(cfg, dataset_name: str, output_folder: str | None = None) -> DatasetEvaluator:
    """Evaluators for ``dataset_name`` according to its metadata's ``evaluator_type``.

    * ``coco`` (COCO, VOC-with-masks in COCO format, user data): mask and box AP with COCOEvaluator.
      VOC is reported as COCO-style AP50 (the ``AP50`` entry), which is what the paper's VOC
      numbers are. Without detectron2's C++ extension, pycocotools' COCOeval is used.
      A dataset with point labels but no masks gets box AP plus :class:`PointSupEvaluator`.
    * ``lvis``: Detectron2's LVISEvaluator (needs ``pip install lvis``), through
      :class:`.lvis.LVISEvaluator`, which lets lvis 0.5.3 (PyPI's latest) evaluate on numpy >= 1.24.
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
    fast = compat.coco_eval_fast_impl_available()
    if dataset_has_masks(dataset_name):
        return COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=fast)
    evaluators: list[DatasetEvaluator] = [
        COCOEvaluator(dataset_name, tasks=("bbox",), output_dir=output_folder, use_fast_impl=fast)
    ]
    if dataset_has_points(dataset_name):
        evaluators.append(PointSupEvaluator(dataset_name))
    return DatasetEvaluators(evaluators)
