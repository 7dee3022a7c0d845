"""Builtin point-supervised datasets, registered on ``import point_sup`` under ``$DETECTRON2_DATASETS``.

P_N training sets (paper §3.3) are named after their mask-annotated training set and found by the
file names the simulator is told to write (datasets/README.md), so no Python is needed to use one:

=====================================================  ============================================
dataset name                                           file under ``$DETECTRON2_DATASETS``
=====================================================  ============================================
``{base}_p{N}``                                        ``{dir}/{stem}_n{N}_v0_without_masks.json``
``{base}_p{N}_v{K}`` (K >= 1, §3.3.1's versions)       ``{dir}/{stem}_n{N}_v{K}_without_masks.json``
``{base}_p{N}[_v{K}]_{tag}`` (e.g. ``random5``)        ``{dir}/{stem}_n{N}_v{K}_{tag}_without_masks.json``
=====================================================  ============================================

with (base, dir, stem, image root; validation set):

- ``coco_2017_train``: ``coco/annotations``, ``instances_train2017``, ``coco/train2017``; ``coco_2017_val``.
- ``lvis_v1_train``: ``lvis``, ``lvis_v1_train`` (LVIS format: images found from their ``coco_url``
  under ``coco/``); ``lvis_v1_val``.
- ``cityscapes_fine_instance_seg_train``: ``cityscapes``, ``cityscapes_fine_instance_seg_train``,
  ``cityscapes/leftImg8bit/train``; ``cityscapes_fine_instance_seg_val``.
- ``voc_2012_train_instance``: ``voc_2012_instance/annotations``, ``voc_2012_train_instance``,
  ``voc_2012_instance/JPEGImages``; ``voc_2012_val_instance``.

Detectron2 PointSup's name for COCO, ``coco_2017_train_points_n{N}_v{K}_without_masks``, names the
same file. Registered are: the four P10 sets always (:data:`POINT_SUP_DATASET_PAIRS`), every such file
that exists at import, and any name of the scheme that a point_sup tool is given
(:func:`register_point_datasets`; a missing file is then reported when the dataset is loaded, with
the file's path). Registration is lazy: nothing is read until the dataset is loaded.

The COCO, LVIS and Cityscapes validation sets are Detectron2's builtin ones; the VOC 2012 instance
sets (``voc_2012_{train,val}_instance``, COCO JSON with masks) are registered here. Each P_N set copies
the class metadata of its mask-supervised counterpart (``coco_2017_train``, ...), so a model trained
on points is evaluated with the same classes, and records its validation set under the metadata key
``paired_val_dataset``.

Box-only views for BoxInst (the paper's box-only baseline): ``{base}_boxes`` for each of the four
mask-annotated training sets above and for the nuclei sets is the same data with every annotation's
mask and points removed (:func:`register_box_only_dataset`).

:func:`register_nuclei` registers the small real nuclei dataset of :mod:`point_sup.data.nuclei`, and
:func:`register_nuclei_folds` its K-fold protocol: ``nuclei_fold{k}of{K}_train`` / ``_val`` (masks),
``nuclei_fold{k}of{K}_train_p{N}`` (P_N), ``nuclei_fold{k}of{K}_train_p{N}_m10`` / ``_b50`` (mixed) and
``nuclei_fold{k}of{K}_train_boxes`` (box only).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.data.datasets.pascal_voc import CLASS_NAMES as VOC_CLASS_NAMES

from point_sup_labels.point_file import write_point_annotation_file

from .cityscapes import register_cityscapes_fallback
from .datasets import register_coco_instances_with_points, register_lvis_instances_with_points
from .nuclei import DEFAULT_NUM_FOLDS, build_nuclei_coco, build_nuclei_folds_coco

__all__ = [
    "BOX_ONLY_SUFFIX",
    "POINT_DATASET_FAMILIES",
    "POINT_SUP_DATASET_PAIRS",
    "PointDatasetFamily",
    "box_only_dicts",
    "point_dataset_file",
    "register_all_point_sup",
    "register_box_only_dataset",
    "register_nuclei",
    "register_nuclei_files",
    "register_nuclei_folds",
    "register_point_datasets",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PointDatasetFamily:
    """The P_N training sets made from one mask-annotated training set (see the module docstring)."""

    base: str  # mask-annotated training set, whose class metadata the P_N sets share
    val: str  # the mask-annotated set they are evaluated on
    json_dir: str  # relative to the datasets root
    stem: str  # the P_N file names start with it
    image_root: str  # relative to the datasets root
    lvis_format: bool = False


POINT_DATASET_FAMILIES: tuple[PointDatasetFamily, ...] = (
    PointDatasetFamily(
        "coco_2017_train", "coco_2017_val", "coco/annotations", "instances_train2017", "coco/train2017"
    ),
    PointDatasetFamily("lvis_v1_train", "lvis_v1_val", "lvis", "lvis_v1_train", "coco/", lvis_format=True),
    PointDatasetFamily(
        "cityscapes_fine_instance_seg_train",
        "cityscapes_fine_instance_seg_val",
        "cityscapes",
        "cityscapes_fine_instance_seg_train",
        "cityscapes/leftImg8bit/train",
    ),
    PointDatasetFamily(
        "voc_2012_train_instance",
        "voc_2012_val_instance",
        "voc_2012_instance/annotations",
        "voc_2012_train_instance",
        "voc_2012_instance/JPEGImages",
    ),
)

# P10 training set -> mask-annotated validation set (always registered).
POINT_SUP_DATASET_PAIRS: dict[str, str] = {f"{f.base}_p10": f.val for f in POINT_DATASET_FAMILIES}

# A tag is a word that cannot be read as a version ("v3").
_TAG = r"(?!v\d+$)[a-z][a-z0-9]*"
_FILE_RE = re.compile(
    rf"^(?P<stem>.+)_n(?P<n>[1-9]\d*)_v(?P<k>\d+)(?:_(?P<tag>{_TAG}))?_without_masks\.json$"
)
_D2_POINT_SUP_RE = re.compile(r"^coco_2017_train_points_n(?P<n>[1-9]\d*)_v(?P<k>\d+)_without_masks$")

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

# Class metadata shared between a P_N set and its mask-supervised counterpart; paths and the
# evaluator type stay the P_N set's own.
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


def _canonical_name(family: PointDatasetFamily, n: int, k: int, tag: str | None) -> str:
    return f"{family.base}_p{n}" + (f"_v{k}" if k else "") + (f"_{tag}" if tag else "")


def _file_name(family: PointDatasetFamily, n: int, k: int, tag: str | None) -> str:
    return f"{family.stem}_n{n}_v{k}" + (f"_{tag}" if tag else "") + "_without_masks.json"


def point_dataset_file(name: str) -> tuple[PointDatasetFamily, str] | None:
    """The family and the file (relative to the datasets root) that a P_N dataset name stands for.

    Returns None for a name outside the scheme of the module docstring. ``{base}_p{N}_v0`` is
    accepted as ``{base}_p{N}``.
    """
    match = _D2_POINT_SUP_RE.match(name)
    if match:
        family = POINT_DATASET_FAMILIES[0]
        return family, f"{family.json_dir}/{_file_name(family, int(match['n']), int(match['k']), None)}"
    for family in POINT_DATASET_FAMILIES:
        match = re.match(
            rf"^{re.escape(family.base)}_p(?P<n>[1-9]\d*)(?:_v(?P<k>\d+))?(?:_(?P<tag>{_TAG}))?$", name
        )
        if match:
            n, k, tag = int(match["n"]), int(match["k"] or 0), match["tag"]
            return family, f"{family.json_dir}/{_file_name(family, n, k, tag)}"
    return None


def _register_point_dataset(name: str, family: PointDatasetFamily, json_file: str, root: str) -> None:
    metadata = {**_class_metadata(family.base), "paired_val_dataset": family.val}
    register = (
        register_lvis_instances_with_points if family.lvis_format else register_coco_instances_with_points
    )
    register(name, metadata, os.path.join(root, json_file), os.path.join(root, family.image_root))


def register_point_datasets(names: Iterable[str], root: str | os.PathLike | None = None) -> list[str]:
    """Register the P_N datasets of the naming scheme among ``names`` that are not registered yet.

    Called by point_sup's tools with the datasets they are given, so that a name of the scheme works
    before its file exists (its loading then fails naming the missing file). Names outside the scheme
    are left to Detectron2 (whose error lists the registered datasets).

    Args:
        names: dataset names (e.g. ``cfg.DATASETS.TRAIN``).
        root: the datasets root; default ``$DETECTRON2_DATASETS`` or ``datasets``.

    Returns:
        The names registered by this call.
    """
    root = os.fspath(root) if root is not None else os.getenv("DETECTRON2_DATASETS", "datasets")
    registered = []
    for name in names:
        if name in DatasetCatalog:
            continue
        found = point_dataset_file(name)
        if found is not None:
            _register_point_dataset(name, *found, root)
            registered.append(name)
    return registered


def _register_existing_point_files(root: str) -> None:
    """Register the P_N files of the naming scheme that exist under ``root`` (a directory listing)."""
    for family in POINT_DATASET_FAMILIES:
        directory = Path(root) / family.json_dir
        try:
            entries = sorted(os.listdir(directory))
        except OSError:  # no such dataset here
            continue
        for entry in entries:
            match = _FILE_RE.match(entry)
            if match is None or match["stem"] != family.stem:
                continue
            name = _canonical_name(family, int(match["n"]), int(match["k"]), match["tag"])
            if name not in DatasetCatalog:
                _register_point_dataset(name, family, f"{family.json_dir}/{entry}", root)


def register_all_point_sup(root: str | os.PathLike) -> None:
    """Register the builtin datasets of this module with paths under ``root``.

    Names already registered are left as they are (so importing or calling this twice is harmless;
    remove a name from both catalogs first to re-register it elsewhere). Reads the directory listing
    of the four P_N annotation folders, no file.
    """
    root = os.fspath(root)
    for name, (json_rel, image_rel) in _VOC_MASKS.items():
        if name in DatasetCatalog:
            continue
        register_coco_instances(
            name, _voc_metadata(), os.path.join(root, json_rel), os.path.join(root, image_rel)
        )
    register_point_datasets(POINT_SUP_DATASET_PAIRS, root)
    _register_existing_point_files(root)


NUCLEI_DIR = "nuclei"  # under $DETECTRON2_DATASETS


# The mixed-supervision training sets of the miniature (issue 15), ``nuclei_train_p{N}_{key}``:
# (keep-masks fraction, box-only fraction) of the objects, the others P_N (tools/prepare_point_annotations.py
# --keep-masks-fraction / --box-only-fraction, same seed).
NUCLEI_MIXED = {"m10": (0.1, 0.0), "b50": (0.0, 0.5)}


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
    needs the cached or downloadable stardist wheel). Also the mixed-supervision training sets of
    :data:`NUCLEI_MIXED`: ``nuclei_train_p{N}_m10`` (10 % of the objects keep their mask, the others
    P_N) and ``nuclei_train_p{N}_b50`` (P_N, half of the objects box only), for
    ``MODEL.MIXED_SUP``. Registering again (e.g. under another
    ``root``) replaces the previous registration. Built under ``$DETECTRON2_DATASETS/nuclei``, the
    dataset is registered again by every later ``import point_sup`` (:func:`register_nuclei_files`),
    so ``tools/train_net.py`` finds it.

    Returns:
        ``{"train": json, "val": json, "train_p{N}": json, "val_p{N}": json, "train_p{N}_m10": json,
        "train_p{N}_b50": json, "image_root": dir}``.
    """
    paths = build_nuclei_coco(root, cache_dir)
    for split in ("train", "val"):
        p_json = paths[split].with_name(f"nuclei_{split}_p{num_points}.json")
        write_point_annotation_file(paths[split], p_json, num_points=num_points, seed=seed)
        paths[f"{split}_p{num_points}"] = p_json
    paths.update(_write_mixed_point_files(paths["train"], "nuclei_train", num_points, seed))
    register_nuclei_files(root, replace=True)
    return paths


def _write_mixed_point_files(train_json: Path, stem: str, num_points: int, seed: int) -> dict[str, Path]:
    """The :data:`NUCLEI_MIXED` files ``{stem}_p{N}_{key}.json`` next to ``train_json``, keyed
    ``train_p{N}_{key}``."""
    paths = {}
    for key, (masks, boxes) in NUCLEI_MIXED.items():
        name = f"train_p{num_points}_{key}"
        paths[name] = train_json.with_name(f"{stem}_p{num_points}_{key}.json")
        write_point_annotation_file(
            train_json,
            paths[name],
            num_points=num_points,
            seed=seed,
            keep_masks_fraction=masks,
            box_only_fraction=boxes,
        )
    return paths


def register_nuclei_folds(
    root: str | os.PathLike,
    num_folds: int = DEFAULT_NUM_FOLDS,
    folds: Iterable[int] | None = None,
    cache_dir: str | os.PathLike | None = None,
    num_points: int = 10,
    seed: int = 0,
) -> dict[int, dict[str, Path]]:
    """Build the folds ``folds`` (default all) of the nuclei K-fold protocol under ``root`` and
    register them with their P_N and box-only versions (:mod:`point_sup.data.nuclei`).

    Registered names, for each fold k of K = ``num_folds``:

    - ``nuclei_fold{k}of{K}_train`` and ``nuclei_fold{k}of{K}_val``: masks (compressed RLE: use
      ``INPUT.MASK_FORMAT = "bitmask"``); the validation set has crowd annotations for the parts of
      nuclei scored in another tile (:func:`point_sup.data.nuclei.nuclei_folds`).
    - ``nuclei_fold{k}of{K}_train_p{N}``: P_N simulated from the training masks as ``nuclei_train_p{N}``
      is (``num_points``, ``seed``: the seed is the points' version; the file is overwritten by
      each call, as :func:`register_nuclei` does).
    - ``nuclei_fold{k}of{K}_train_p{N}_m10`` / ``_b50``: the mixed-supervision sets of
      :data:`NUCLEI_MIXED`, same simulator and seed.
    - ``nuclei_fold{k}of{K}_train_boxes`` (and ``_val_boxes``): the box-only views
      (:func:`register_box_only_dataset`).

    Like :func:`register_nuclei` this writes files (:func:`point_sup.data.nuclei.build_nuclei_folds_coco`)
    and replaces earlier registrations of the nuclei names under ``root``; built under
    ``$DETECTRON2_DATASETS/nuclei``, the folds are registered again by every later ``import point_sup``.
    Other P_N variants of a fold (another N, label noise) are written by the caller next to the
    fold's training file as ``nuclei_fold{k}of{K}_train_p{N}[_...].json`` and registered by
    :func:`register_nuclei_files`.

    Raises:
        ValueError: ``num_folds`` or a fold index is not allowed (the message names it).

    Returns:
        ``{k: {"train": json, "val": json, "train_p{N}": json, "train_p{N}_m10": json,
        "train_p{N}_b50": json, "image_root": dir}}`` for each fold k built.
    """
    built = build_nuclei_folds_coco(root, num_folds, folds, cache_dir)
    for paths in built.values():
        stem = paths["train"].stem  # nuclei_fold{k}of{K}_train
        p_json = paths["train"].with_name(f"{stem}_p{num_points}.json")
        write_point_annotation_file(paths["train"], p_json, num_points=num_points, seed=seed)
        paths[f"train_p{num_points}"] = p_json
        paths.update(_write_mixed_point_files(paths["train"], stem, num_points, seed))
    register_nuclei_files(root, replace=True)
    return built


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
            if replace:
                _unregister(name + BOX_ONLY_SUFFIX)
            names.append(register_box_only_dataset(name))
        names.append(name)
    return names


# Box-only views (BoxInst, the box-only baseline): ``{base}_boxes`` is ``{base}`` with every
# annotation's mask and points removed, so a box-supervised config cannot be given more by mistake.
BOX_ONLY_SUFFIX = "_boxes"
_BOX_ONLY_DROPPED = ("segmentation", "point_coords", "point_labels")


def box_only_dicts(dicts: Iterable[dict]) -> list[dict]:
    """Copies of Detectron2 dataset dicts whose annotations keep everything but their mask
    (``segmentation``) and P_N points: boxes, classes, ``iscrowd``, ids."""
    return [
        {
            **record,
            "annotations": [
                {k: v for k, v in anno.items() if k not in _BOX_ONLY_DROPPED}
                for anno in record.get("annotations", [])
            ],
        }
        for record in dicts
    ]


def register_box_only_dataset(base: str, name: str | None = None) -> str:
    """Register ``name`` (default ``{base}_boxes``) as the box-only view of the registered dataset
    ``base`` (:func:`box_only_dicts`, loaded lazily from ``base``), sharing its class metadata.
    Returns the name; an existing registration is left as it is."""
    name = name or base + BOX_ONLY_SUFFIX
    if name in DatasetCatalog:
        return name
    DatasetCatalog.register(name, lambda: box_only_dicts(DatasetCatalog.get(base)))
    base_meta = MetadataCatalog.get(base)
    shared = {
        k: getattr(base_meta, k) for k in (*_SHARED_METADATA_KEYS, "evaluator_type") if hasattr(base_meta, k)
    }
    MetadataCatalog.get(name).set(**shared, box_only_of=base)
    return name


def _unregister(name: str) -> None:
    if name in DatasetCatalog:
        DatasetCatalog.remove(name)
        MetadataCatalog.pop(name, None)


register_all_point_sup(os.getenv("DETECTRON2_DATASETS", "datasets"))
register_cityscapes_fallback()  # Detectron2 HEAD's Cityscapes loader cannot import cityscapesscripts
for _family in POINT_DATASET_FAMILIES:
    if _family.base in DatasetCatalog:
        register_box_only_dataset(_family.base)
register_nuclei_files(os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), NUCLEI_DIR))
