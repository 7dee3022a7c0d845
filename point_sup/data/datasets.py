"""Registration and loading of P_N point-annotated datasets (COCO and LVIS JSON formats).

The file format and its rules are those of :mod:`point_sup_labels.point_fields` (the one validator,
which the loaders here run on every annotation). The loaders return Detectron2 dataset dicts whose
annotations carry the points in Detectron2's **continuous** image coordinates (pixel ``i`` covers
``[i, i + 1)``; each pixel index gets ``+ 0.5``, its centre):

``point_coords``
    ``np.ndarray`` float32, shape (P, 2): ``[x + 0.5, y + 0.5]``;
``point_labels``
    ``np.ndarray`` uint8, shape (P,): 0 / 1.

Every transform of :mod:`detectron2.data.transforms` maps such continuous coordinates with
``apply_coords`` consistently with how it maps pixels, which is what keeps a point's label equal to
the transformed mask at the transformed point (see :mod:`point_sup.data.dataset_mapper`).
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from collections.abc import Mapping

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

from point_sup_labels.point_fields import (
    PIXEL_CENTRE,
    POINT_FIELDS,
    PointFieldError,
    missing_point_field,
    validate_points,
)

__all__ = [
    "convert_point_annotations",
    "load_coco_json_with_points",
    "load_lvis_json_with_points",
    "register_coco_instances_with_points",
    "register_lvis_instances_with_points",
]

logger = logging.getLogger(__name__)


# "id" is kept as well so that errors (here and in the mapper) can name the offending annotation.
_EXTRA_ANNOTATION_KEYS = [*POINT_FIELDS, "id"]


def _where(source: str, record: Mapping, anno: Mapping) -> str:
    return f"{source}: image id {record.get('image_id')}, annotation id {anno.get('id', '?')}"


def convert_point_annotations(dataset_dicts: list[dict], source: str) -> list[dict]:
    """Validate the point fields of loaded dataset dicts and move them to continuous coordinates.

    In place: each annotation's ``point_coords`` (P, 2) integer pixel indices become float32
    ``index + 0.5`` (pixel centres), ``point_labels`` (P,) become uint8. Annotations without either
    field are left alone (the start-up checks and the mapper report them where points are needed).

    Args:
        dataset_dicts: records as returned by ``load_coco_json`` with ``extra_annotation_keys``
            including ``point_coords`` and ``point_labels``; records need ``height`` and ``width``.
        source: named in error messages (the JSON file).

    Returns:
        ``dataset_dicts``.

    Raises:
        ValueError: naming ``source``, the image id and the annotation id, when only one of the two
            fields is present, their lengths differ, a label is not 0/1, a coordinate is not a finite
            integer, or a point lies outside ``[0, width) x [0, height)``.
    """
    entries = []  # (record, annotation) of every annotation with points
    for record in dataset_dicts:
        for anno in record.get("annotations", []):
            missing = missing_point_field(anno)
            if missing is not None:
                raise ValueError(f"{_where(source, record, anno)}: has point annotations but no '{missing}'")
            if POINT_FIELDS[0] in anno:
                entries.append((record, anno))
    if not entries:  # e.g. a mask-annotated file: nothing to convert
        logger.info(f"No point annotations in {source}")
        return dataset_dicts
    try:
        coords, labels, offsets = validate_points(
            [a["point_coords"] for _, a in entries],
            [a["point_labels"] for _, a in entries],
            [r["height"] for r, _ in entries],
            [r["width"] for r, _ in entries],
        )
    except PointFieldError as e:
        raise ValueError(f"{_where(source, *entries[e.index])}: {e}") from None
    # Views into one array per field: cheap to build, and each pickles (DatasetFromList) on its own.
    split = offsets[1:-1]
    for (_, anno), c, lab in zip(
        entries,
        np.split((coords + PIXEL_CENTRE).astype(np.float32), split),
        np.split(labels.astype(np.uint8), split),
        strict=True,
    ):
        anno["point_coords"], anno["point_labels"] = c, lab
    logger.info(f"Loaded {len(labels)} labelled points of {len(entries)} instances from {source}")
    return dataset_dicts


def load_coco_json_with_points(
    json_file: str | os.PathLike, image_root: str | os.PathLike, dataset_name: str | None = None
) -> list[dict]:
    """Detectron2's ``load_coco_json`` keeping the point fields, converted by
    :func:`convert_point_annotations` (pixel indices -> continuous pixel centres, ``+ 0.5``).

    With ``dataset_name``, category ids are mapped to contiguous ids and the metadata's
    ``thing_classes`` / ``thing_dataset_id_to_contiguous_id`` are set from the file where missing. Where
    the registration already set them (builtin datasets copy them from the mask-supervised dataset), a
    different number of classes or id mapping is an error naming the file; names that differ only in
    spelling are logged (LVIS files name one category differently from Detectron2's LVIS metadata).
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    if dataset_name is None:
        dicts = load_coco_json(json_file, image_root, None, extra_annotation_keys=_EXTRA_ANNOTATION_KEYS)
        return convert_point_annotations(dicts, json_file)
    # load_coco_json asserts when it sets metadata that differs from what is registered; let it write
    # into a scratch entry instead and reconcile here, with an error that names the file.
    scratch = f"__point_sup_loading__{dataset_name}"
    MetadataCatalog.pop(scratch, None)
    try:
        dicts = load_coco_json(json_file, image_root, scratch, extra_annotation_keys=_EXTRA_ANNOTATION_KEYS)
        loaded = MetadataCatalog.get(scratch).as_dict()
    finally:
        MetadataCatalog.pop(scratch, None)
    meta = MetadataCatalog.get(dataset_name)
    for key in ("thing_classes", "thing_dataset_id_to_contiguous_id"):
        if key not in loaded:
            continue
        if not hasattr(meta, key):
            meta.set(**{key: loaded[key]})
            continue
        registered = getattr(meta, key)
        if len(registered) != len(loaded[key]) or (
            key == "thing_dataset_id_to_contiguous_id" and dict(registered) != dict(loaded[key])
        ):
            raise ValueError(
                f"{json_file}: its categories ({len(loaded[key])} in {key}) do not match those registered "
                f"for dataset '{dataset_name}' ({len(registered)}); was the file made from another dataset?"
            )
        if key == "thing_classes" and list(registered) != list(loaded[key]):
            differ = [(a, b) for a, b in zip(registered, loaded[key], strict=True) if a != b]
            logger.info(
                f"{json_file}: {len(differ)} category names differ from the metadata of '{dataset_name}' "
                f"(kept the metadata's), e.g. {differ[0]}"
            )
    return convert_point_annotations(dicts, json_file)


def load_lvis_json_with_points(
    json_file: str | os.PathLike, image_root: str | os.PathLike, dataset_name: str | None = None
) -> list[dict]:
    """Load a P_N file in LVIS format: as :func:`load_coco_json_with_points`, for LVIS conventions.

    Detectron2's ``load_lvis_json`` requires masks, which a "without masks" P_N file lacks, hence this
    loader. LVIS conventions: an image without ``file_name`` is found from its ``coco_url`` as
    ``image_root + <split folder>/<file>`` (``image_root`` is the COCO folder, e.g. ``datasets/coco/``);
    category ids 1..C become contiguous ids 0..C-1; ``not_exhaustive_category_ids`` and
    ``neg_category_ids`` are kept on the records. Points are converted by
    :func:`convert_point_annotations`. Needs no ``lvis`` package.
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    with PathManager.open(json_file) as f:
        data = json.load(f)
    num_classes = len(data["categories"])
    if sorted(c["id"] for c in data["categories"]) != list(range(1, num_classes + 1)):
        raise ValueError(f"{json_file}: LVIS category ids must be 1..{num_classes}")
    if dataset_name is not None:
        meta = MetadataCatalog.get(dataset_name)
        if hasattr(meta, "thing_classes") and len(meta.thing_classes) != num_classes:
            raise ValueError(
                f"{json_file}: its categories ({num_classes}) do not match those registered for dataset "
                f"'{dataset_name}' ({len(meta.thing_classes)}); was the file made from another dataset?"
            )
        if not hasattr(meta, "thing_classes"):
            meta.set(thing_classes=[c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])])
    annotations = defaultdict(list)
    for ann in data["annotations"]:
        annotations[ann["image_id"]].append(ann)
    dicts = []
    for img in data["images"]:
        if "file_name" in img:
            file_name = os.path.join(image_root, img["file_name"])
        else:
            split_folder, name = img["coco_url"].split("/")[-2:]
            file_name = os.path.join(image_root + split_folder, name)
        objs = []
        for ann in annotations.get(img["id"], []):
            obj = {"bbox": ann["bbox"], "bbox_mode": BoxMode.XYWH_ABS, "category_id": ann["category_id"] - 1}
            for key in ("id", "iscrowd", "segmentation", *POINT_FIELDS):
                if key in ann:
                    obj[key] = ann[key]
            objs.append(obj)
        dicts.append(
            {
                "file_name": file_name,
                "height": img["height"],
                "width": img["width"],
                "image_id": img["id"],
                "not_exhaustive_category_ids": img.get("not_exhaustive_category_ids", []),
                "neg_category_ids": img.get("neg_category_ids", []),
                "annotations": objs,
            }
        )
    logger.info(f"Loaded {len(dicts)} images in the LVIS format from {json_file}")
    return convert_point_annotations(dicts, json_file)


def _check_args(name, metadata, json_file, image_root) -> None:
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a str, got {type(name).__name__}")
    if not isinstance(metadata, Mapping):
        raise TypeError(f"{name}: metadata must be a dict, got {type(metadata).__name__}")
    for what, value in (("json_file", json_file), ("image_root", image_root)):
        if not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"{name}: {what} must be a path, got {type(value).__name__}")


def register_coco_instances_with_points(
    name: str, metadata: dict, json_file: str | os.PathLike, image_root: str | os.PathLike
) -> None:
    """Register a P_N dataset in COCO JSON format: Detectron2's ``register_coco_instances`` for points.

    Same call shape. Nothing is read until ``DatasetCatalog.get(name)``, which returns dicts whose
    annotations carry ``point_coords`` (P, 2) float32 continuous pixel centres (file index + 0.5) and
    ``point_labels`` (P,) uint8 (see :func:`convert_point_annotations`), plus ``segmentation`` where the
    file has masks.

    Metadata: ``json_file``, ``image_root``, ``evaluator_type="coco"`` and ``point_supervision=True``
    (read by :func:`point_sup.data.checks.check_point_supervision`), then ``metadata``, whose entries
    win (e.g. a different ``evaluator_type``).
    """
    _register(name, metadata, json_file, image_root, load_coco_json_with_points, "coco")


def register_lvis_instances_with_points(
    name: str, metadata: dict, json_file: str | os.PathLike, image_root: str | os.PathLike
) -> None:
    """As :func:`register_coco_instances_with_points` for a P_N file in LVIS format
    (:func:`load_lvis_json_with_points`); ``evaluator_type="lvis"``."""
    _register(name, metadata, json_file, image_root, load_lvis_json_with_points, "lvis")


def _register(name, metadata, json_file, image_root, loader, evaluator_type: str) -> None:
    """Lazy registration (nothing is read until the dataset is first loaded) with point metadata."""
    _check_args(name, metadata, json_file, image_root)
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)

    def load() -> list[dict]:
        if not PathManager.exists(json_file):
            raise FileNotFoundError(
                f"dataset '{name}': its annotation file {json_file} does not exist (P_N files are made "
                "with tools/prepare_point_annotations.py; datasets/README.md lists where each goes)"
            )
        return loader(json_file, image_root, name)

    DatasetCatalog.register(name, load)
    defaults = {"json_file": json_file, "image_root": image_root, "evaluator_type": evaluator_type}
    MetadataCatalog.get(name).set(**{**defaults, "point_supervision": True, **metadata})  # metadata wins
