"""Evaluation: Detectron2's evaluators chosen per dataset, and point-level metrics for point-only data."""

from .build import build_evaluator, dataset_has_masks, dataset_has_points
from .point_evaluator import PointSupEvaluator, score_points

__all__ = ["PointSupEvaluator", "build_evaluator", "dataset_has_masks", "dataset_has_points", "score_points"]
