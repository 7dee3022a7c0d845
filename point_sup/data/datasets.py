"""Registration and loading of P_N point-annotated datasets (COCO and LVIS JSON formats).

A P_N annotation file is a COCO-format JSON (the format of Detectron2's PointSup project) in which
each annotation carries, besides ``bbox`` and ``category_id``:

``point_coords``
    list of ``[x, y]`` **integer pixel indices** (``x`` = column, ``y`` = row) of the labelled points;
``point_labels``
    list of the same length, 1 = object, 0 = background.

``segmentation`` is usually absent (a "without masks" file). The loaders here return Detectron2
dataset dicts whose annotations carry the points in Detectron2's **continuous** image coordinates:
pixel ``i`` covers ``[i, i + 1)``, so the centre of pixel index ``i`` is ``i + 0.5`` and the loader
adds 0.5 to every coordinate:

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
from itertools import chain

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

__all__ = [
    "POINT_ANNOTATION_KEYS",
    "convert_point_annotations",
    "load_coco_json_with_points",
    "load_lvis_json_with_points",
    "register_coco_instances_with_points",
    "register_lvis_instances_with_points",
]

logger = logging.getLogger(__name__)

POINT_ANNOTATION_KEYS = ("point_coords", "point_labels")
_NUMBER_TYPES = {int, float}  # what a JSON number parses to (bool, a subclass of int, is not one)
# "id" is kept as well so that errors (here and in the mapper) can name the offending annotation.
_EXTRA_ANNOTATION_KEYS = [*POINT_ANNOTATION_KEYS, "id"]


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
            has = [key in anno for key in POINT_ANNOTATION_KEYS]
            if not any(has):
                continue
            if not all(has):
                missing = POINT_ANNOTATION_KEYS[has.index(False)]
                raise ValueError(f"{_where(source, record, anno)}: has point annotations but no '{missing}'")
            entries.append((record, anno))
    if not entries:  # e.g. a mask-annotated file: nothing to convert
        logger.info(f"No point annotations in {source}")
        return dataset_dicts
    # Validate all points at once (a per-annotation loop takes minutes on COCO's 860k instances);
    # on any problem, the per-annotation validator finds the annotation and words the error.
    coords, labels, offsets = _concatenate(entries)
    if coords is None:
        for record, anno in entries:
            _validated_points(record, anno, source)
        raise AssertionError("unreachable: the points could not be stacked but each annotation is valid")
    height = np.repeat([r["height"] for r, _ in entries], np.diff(offsets))
    width = np.repeat([r["width"] for r, _ in entries], np.diff(offsets))
    x, y = coords[:, 0], coords[:, 1]
    with np.errstate(invalid="ignore"):
        ok = (
            ((labels == 0) | (labels == 1))
            & np.isfinite(coords).all(axis=1)
            & (coords == np.round(coords)).all(axis=1)
            & (x >= 0)
            & (x < width)
            & (y >= 0)
            & (y < height)
        )
    if not ok.all():
        first = int(np.searchsorted(offsets, np.flatnonzero(~ok)[0], side="right")) - 1
        _validated_points(*entries[first], source)
        raise AssertionError(f"unreachable: point {np.flatnonzero(~ok)[0]} failed only the vectorized check")
    # Views into one array per field: cheap to build, and each pickles (DatasetFromList) on its own.
    split = offsets[1:-1]
    for (_, anno), c, lab in zip(
        entries,
        np.split((coords + 0.5).astype(np.float32), split),
        np.split(labels.astype(np.uint8), split),
        strict=True,
    ):
        anno["point_coords"], anno["point_labels"] = c, lab
    logger.info(f"Loaded {len(labels)} labelled points of {len(entries)} instances from {source}")
    return dataset_dicts


def _concatenate(entries: list[tuple[dict, dict]]) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
    """All points of ``entries`` as coords (N, 2) and labels (N,) float64, with annotation k's points at
    ``offsets[k]:offsets[k + 1]``; coords None where the fields do not stack (ragged, wrong lengths)."""
    try:
        num_coords = np.array([len(a["point_coords"]) for _, a in entries], dtype=np.int64)
        num_labels = np.array([len(a["point_labels"]) for _, a in entries], dtype=np.int64)
    except TypeError:  # not lists
        return None, None, np.zeros(1, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(num_coords)])
    if not np.array_equal(num_coords, num_labels):
        return None, None, offsets
    points = [p for _, a in entries for p in a["point_coords"]]
    label_list = [v for _, a in entries for v in a["point_labels"]]
    # JSON numbers only: numpy would turn "3" or true into 3.0 or 1.0 without a word.
    if not (
        set(map(type, points)) <= {list}
        and set(map(type, chain.from_iterable(points))) <= _NUMBER_TYPES
        and set(map(type, label_list)) <= _NUMBER_TYPES
    ):
        return None, None, offsets
    try:
        coords = np.array(points, dtype=np.float64)
        labels = np.array(label_list, dtype=np.float64)
    except (TypeError, ValueError):
        return None, None, offsets
    if coords.size == 0:
        coords = coords.reshape(0, 2)
    if coords.ndim != 2 or coords.shape[1] != 2 or labels.ndim != 1:
        return None, None, offsets
    return coords, labels, offsets


def _validated_points(record: Mapping, anno: Mapping, source: str) -> tuple[np.ndarray, np.ndarray]:
    """One annotation's points as float64 arrays (P, 2) and (P,); ValueError describing the first problem."""
    height, width = record["height"], record["width"]
    try:
        coords = np.asarray(anno["point_coords"], dtype=np.float64)
        labels = np.asarray(anno["point_labels"], dtype=np.float64)
    except (TypeError, ValueError) as e:  # ragged lists, non-numbers
        raise ValueError(
            f"{_where(source, record, anno)}: point_coords must be a list of [x, y] and "
            f"point_labels a list of 0/1 ({e})"
        ) from e
    if coords.size == 0:
        coords = coords.reshape(0, 2)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(
            f"{_where(source, record, anno)}: point_coords must be a list of [x, y], got shape {coords.shape}"
        )
    if labels.ndim != 1 or len(labels) != len(coords):
        raise ValueError(
            f"{_where(source, record, anno)}: {len(coords)} point_coords but {labels.size} point_labels"
        )
    # JSON numbers only: numpy turned "3" or true into 3.0 or 1.0 above without a word.
    for field, values in (
        ("point_coords", [v for point in anno["point_coords"] for v in point]),
        ("point_labels", anno["point_labels"]),
    ):
        bad = [v for v in values if type(v) not in _NUMBER_TYPES]
        if bad:
            raise ValueError(
                f"{_where(source, record, anno)}: {field} must hold JSON numbers, got "
                f"{type(bad[0]).__name__} {bad[0]!r}"
            )
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(
            f"{_where(source, record, anno)}: point_labels must be 0 (background) or "
            f"1 (object), got {sorted(set(labels.tolist()) - {0.0, 1.0})}"
        )
    if not np.isfinite(coords).all():
        raise ValueError(f"{_where(source, record, anno)}: point_coords are not all finite")
    if not (coords == np.round(coords)).all():
        # A fractional value means the file is not in the pixel-index convention: adding 0.5 would
        # silently shift every point by half a pixel.
        raise ValueError(
            f"{_where(source, record, anno)}: point_coords must be integer pixel indices "
            f"(x = column, y = row), got {coords[(coords != np.round(coords)).any(axis=1)][0]}"
        )
    inside = (coords[:, 0] >= 0) & (coords[:, 0] < width) & (coords[:, 1] >= 0) & (coords[:, 1] < height)
    if not inside.all():
        point = anno["point_coords"][int(np.flatnonzero(~inside)[0])]  # as written, however large
        raise ValueError(
            f"{_where(source, record, anno)}: point {list(point)} lies "
            f"outside the {width}x{height} image (pixel indices must be in [0, width) x [0, height))"
        )
    return coords, labels


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
            for key in ("id", "iscrowd", "segmentation", *POINT_ANNOTATION_KEYS):
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
