"""Data for training from points: P_N dataset registration and loading, the point-aware mapper.

The P_N labels themselves (simulation, the COCO-format reader and writer, the annotation tool) are
made by the separate package :mod:`point_sup_labels`, which imports neither torch nor Detectron2.

Importing this package registers the builtin point-supervised datasets (:mod:`.builtin`).
"""

from . import builtin  # noqa: F401  (registers the builtin datasets)
from .builtin import (
    POINT_SUP_DATASET_PAIRS,
    register_all_point_sup,
    register_nuclei,
    register_nuclei_files,
    register_point_datasets,
)
from .checks import check_point_supervision
from .dataset_mapper import PointSupDatasetMapper, transform_point_annotations
from .datasets import (
    load_coco_json_with_points,
    load_lvis_json_with_points,
    register_coco_instances_with_points,
    register_lvis_instances_with_points,
)

__all__ = [
    "POINT_SUP_DATASET_PAIRS",
    "PointSupDatasetMapper",
    "check_point_supervision",
    "load_coco_json_with_points",
    "load_lvis_json_with_points",
    "register_all_point_sup",
    "register_coco_instances_with_points",
    "register_lvis_instances_with_points",
    "register_nuclei",
    "register_nuclei_files",
    "register_point_datasets",
    "transform_point_annotations",
]
