"""Evaluation: Detectron2's evaluators chosen per dataset, and point-level metrics for point-only data."""

from .build import (
    COCO_EVAL_CHOICES,
    COCO_EVAL_ENV,
    build_evaluator,
    coco_eval_implementation,
    dataset_has_masks,
    dataset_has_points,
)
from .fast_coco import FasterCOCOEvaluator, FasterLVISEvaluator, faster_coco_eval_available
from .point_evaluator import PointSupEvaluator, score_points

__all__ = [
    "COCO_EVAL_CHOICES",
    "COCO_EVAL_ENV",
    "FasterCOCOEvaluator",
    "FasterLVISEvaluator",
    "PointSupEvaluator",
    "build_evaluator",
    "coco_eval_implementation",
    "dataset_has_masks",
    "dataset_has_points",
    "faster_coco_eval_available",
    "score_points",
]
