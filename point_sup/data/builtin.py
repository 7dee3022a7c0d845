"""Builtin point-supervised datasets, registered on ``import point_sup`` under ``$DETECTRON2_DATASETS``.

P10 training sets (paper §3.3), paths under ``$DETECTRON2_DATASETS``, and the mask-annotated set each
is evaluated on (:data:`POINT_SUP_DATASET_PAIRS`):

- ``coco_2017_train_p10``: ``coco/annotations/instances_train2017_n10_v0_without_masks.json``,
  images ``coco/train2017``; validation ``coco_2017_val``.
- ``lvis_v1_train_p10``: ``lvis/lvis_v1_train_n10_v0_without_masks.json``, images ``coco/``;
  validation ``lvis_v1_val``.
- ``cityscapes_fine_instance_seg_train_p10``:
  ``cityscapes/cityscapes_fine_instance_seg_train_n10_v0_without_masks.json``, images
  ``cityscapes/leftImg8bit/train``; validation ``cityscapes_fine_instance_seg_val``.
- ``voc_2012_train_instance_p10``:
  ``voc_2012_instance/annotations/voc_2012_train_instance_n10_v0_without_masks.json``, images
  ``voc_2012_instance/JPEGImages``; validation ``voc_2012_val_instance``.

The COCO, LVIS and Cityscapes validation sets are Detectron2's builtin ones; the VOC 2012 instance
sets (``voc_2012_{train,val}_instance``, COCO JSON with masks) are registered here. Each P10 set
copies the class metadata of its mask-supervised counterpart (``coco_2017_train``, ...), so a model
trained on points is evaluated with the same classes, and records its validation set under the
metadata key ``paired_val_dataset``. Registration reads nothing from disk.

:func:`register_nuclei` registers the small real nuclei dataset of :mod:`point_sup.data.nuclei`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.data.datasets.pascal_voc import CLASS_NAMES as VOC_CLASS_NAMES

from .datasets import register_coco_instances_with_points, register_lvis_instances_with_points
from .nuclei import build_nuclei_coco
from .point_simulation import write_point_annotation_file

__all__ = [
    "POINT_SUP_DATASET_PAIRS",
    "register_all_point_sup",
    "register_nuclei",
    "register_nuclei_files",
]

logger = logging.getLogger(__name__)

# P10 training set -> mask-annotated validation set.
POINT_SUP_DATASET_PAIRS: dict[str, str] = {
    "coco_2017_train_p10": "coco_2017_val",
    "lvis_v1_train_p10": "lvis_v1_val",
    "cityscapes_fine_instance_seg_train_p10": "cityscapes_fine_instance_seg_val",
    "voc_2012_train_instance_p10": "voc_2012_val_instance",
}

# name -> (mask-supervised dataset whose class metadata it shares, P10 JSON, image root), relative
# to the datasets root. The LVIS P10 file is in LVIS format (images found from their coco_url under
# coco/), the others in COCO format.
_P10: dict[str, tuple[str, str, str]] = {
    "coco_2017_train_p10": (
        "coco_2017_train",
        "coco/annotations/instances_train2017_n10_v0_without_masks.json",
        "coco/train2017",
    ),
    "lvis_v1_train_p10": ("lvis_v1_train", "lvis/lvis_v1_train_n10_v0_without_masks.json", "coco/"),
    "cityscapes_fine_instance_seg_train_p10": (
        "cityscapes_fine_instance_seg_train",
        "cityscapes/cityscapes_fine_instance_seg_train_n10_v0_without_masks.json",
        "cityscapes/leftImg8bit/train",
    ),
    "voc_2012_train_instance_p10": (
        "voc_2012_train_instance",
        "voc_2012_instance/annotations/voc_2012_train_instance_n10_v0_without_masks.json",
        "voc_2012_instance/JPEGImages",
    ),
}

# Mask-annotated VOC 2012 instance segmentation (SBD-augmented train, VOC val) in COCO JSON.
_VOC_MASKS: dict[str, tuple[str, str]] = {
    "voc_2012_train_instance": (
        "voc_2012_instance/annotations/voc_2012_train_instance.json",
        "voc_2012_instance/JPEGImages",
    ),
    "voc_2012_val_instance": (
        "voc_2012_instance/annotations/voc_2012_val_instance.json",
        "voc_2012_instance/JPEGImages",
    ),
}

# Class metadata shared between a P10 set and its mask-supervised counterpart; paths and the
# evaluator type stay the P10 set's own.
_SHARED_METADATA_KEYS = (
    "thing_classes",
    "thing_colors",
    "thing_dataset_id_to_contiguous_id",
    "class_image_count",
)


def _voc_metadata() -> dict:
    # COCO-style category ids 1..20 in Detectron2's PASCAL VOC class order.
    return {
        "thing_classes": list(VOC_CLASS_NAMES),
        "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(VOC_CLASS_NAMES))},
    }


def _class_metadata(name: str) -> dict:
    meta = MetadataCatalog.get(name)
    return {key: getattr(meta, key) for key in _SHARED_METADATA_KEYS if hasattr(meta, key)}


def register_all_point_sup(root: str | os.PathLike) -> None:
    """Register the builtin datasets of this module with paths under ``root``.

    Names already registered are left as they are (so importing or calling this twice is harmless;
    remove a name from both catalogs first to re-register it elsewhere). Reads nothing from disk.
    """
    root = os.fspath(root)
    for name, (json_rel, image_rel) in _VOC_MASKS.items():
        if name in DatasetCatalog:
            continue
        register_coco_instances(
            name, _voc_metadata(), os.path.join(root, json_rel), os.path.join(root, image_rel)
        )
    for name, (mask_name, json_rel, image_rel) in _P10.items():
        if name in DatasetCatalog:
            logger.debug(f"{name} is already registered; left as it is")
            continue
        metadata = {**_class_metadata(mask_name), "paired_val_dataset": POINT_SUP_DATASET_PAIRS[name]}
        register = (
            register_lvis_instances_with_points
            if name.startswith("lvis")
            else register_coco_instances_with_points
        )
        register(name, metadata, os.path.join(root, json_rel), os.path.join(root, image_rel))


NUCLEI_DIR = "nuclei"  # under $DETECTRON2_DATASETS


def register_nuclei(
    root: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    num_points: int = 10,
    seed: int = 0,
) -> dict[str, Path]:
    """Build the nuclei dataset under ``root`` and register its mask and P_N versions.

    Registered names: ``nuclei_train`` and ``nuclei_val`` (masks; compressed RLE, so use
    ``INPUT.MASK_FORMAT = "bitmask"``), and ``nuclei_train_p{N}`` / ``nuclei_val_p{N}``: P_N
    simulated from those masks with point_sup's simulator (``num_points``, ``seed``), without masks.
    Unlike the builtin sets this writes files (:func:`point_sup.data.nuclei.build_nuclei_coco`, which
    needs the cached or downloadable stardist wheel). Registering again (e.g. under another
    ``root``) replaces the previous registration. Built under ``$DETECTRON2_DATASETS/nuclei``, the
    dataset is registered again by every later ``import point_sup`` (:func:`register_nuclei_files`),
    so ``tools/train_net.py`` finds it.

    Returns:
        ``{"train": json, "val": json, "train_p{N}": json, "val_p{N}": json, "image_root": dir}``.
    """
    paths = build_nuclei_coco(root, cache_dir)
    for split in ("train", "val"):
        p_json = paths[split].with_name(f"nuclei_{split}_p{num_points}.json")
        write_point_annotation_file(paths[split], p_json, num_points=num_points, seed=seed)
        paths[f"{split}_p{num_points}"] = p_json
    register_nuclei_files(root, replace=True)
    return paths


def register_nuclei_files(root: str | os.PathLike, replace: bool = False) -> list[str]:
    """Register the nuclei dataset files that exist under ``root`` (see :func:`register_nuclei`).

    Reads nothing but the directory listing. Returns the names registered.
    """
    ann_dir = Path(root) / "annotations"
    image_root = str(Path(root) / "images")
    metadata = {"thing_classes": ["nucleus"]}
    names = []
    for path in sorted(ann_dir.glob("nuclei_*.json")) if ann_dir.is_dir() else []:
        name = path.stem
        if name in DatasetCatalog:
            if not replace:
                continue
            _unregister(name)
        if "_p" in name:
            register_coco_instances_with_points(name, metadata, str(path), image_root)
        else:
            register_coco_instances(name, metadata, str(path), image_root)
        names.append(name)
    return names


def _unregister(name: str) -> None:
    if name in DatasetCatalog:
        DatasetCatalog.remove(name)
        MetadataCatalog.pop(name, None)


register_all_point_sup(os.getenv("DETECTRON2_DATASETS", "datasets"))
register_nuclei_files(os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), NUCLEI_DIR))
