"""The COCO side of the format modules: a COCO JSON of boxes and P_N points
(``point_coords``/``point_labels``) read into and written from the in-memory :class:`~.dataset.Dataset`.

The COCO reader and validator are :mod:`point_sup_labels.coco_format`'s, and a written file is
checked by that validator before it is returned. Frames as in :mod:`.rules`: boxes ``[x, y, w, h]``
continuous, points ``[x, y]`` integer pixel indices.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

from ..coco_format import CocoInstances, dumps_json, load_coco_instances, validate_coco_instances
from .dataset import BoxObject, Dataset, FormatError, ImageRecord, Options

__all__ = ["coco_dict", "read_coco", "write_coco"]

logger = logging.getLogger(__name__)


def read_coco(path: str | os.PathLike, options: Options | None = None) -> Dataset:
    """A COCO JSON of boxes, with or without P_N points (e.g. the annotation tool's output), as a
    :class:`Dataset`.

    Read and validated by :func:`point_sup_labels.coco_format.load_coco_instances` (segmentation
    optional; ``point_coords``/``point_labels`` by :mod:`point_sup_labels.point_fields`). Kept:
    each image's ``file_name``, ``width``, ``height``; each annotation's category (by name), box
    and points. ``iscrowd: 1`` annotations (regions of many objects, not one) are left out with a
    warning; other fields are not carried into the tools' files.
    """
    source = os.fspath(path)
    instances = load_coco_instances(path, require_segmentation=False)
    names: dict[int, str] = {}
    for cid, cat in instances.categories.items():
        name = cat.get("name")
        if not isinstance(name, str) or not name:
            raise FormatError(source, f"category id={cid} has no 'name' (categories are matched by name)")
        if name in names.values():
            raise FormatError(source, f"two categories are named {name!r} (categories are matched by name)")
        names[cid] = name
    by_image: dict[int, list[BoxObject]] = {iid: [] for iid in instances.images}
    crowd = 0
    for ann in instances.annotations:
        if ann.get("iscrowd", 0) == 1:
            crowd += 1
            continue
        coords = ann.get("point_coords", [])
        by_image[ann["image_id"]].append(
            BoxObject(
                category=names[ann["category_id"]],
                box_xywh=tuple(float(v) for v in ann["bbox"]),
                points=tuple((int(x), int(y)) for x, y in coords),
                labels=tuple(int(v) for v in ann.get("point_labels", [])),
                source_id=f"annotation id={ann['id']}",
            )
        )
    if crowd:
        logger.warning("%s: %d iscrowd annotations left out (crowd regions are not objects)", source, crowd)
    images = []
    for img in instances.data["images"]:
        name = img.get("file_name")
        if not isinstance(name, str) or not name:
            raise FormatError(
                source,
                f"image 'file_name' must be a non-empty string, got {name!r}",
                f"image id={img['id']!r}",
            )
        images.append(
            ImageRecord(
                name, img["width"], img["height"], tuple(by_image[img["id"]]), f"image id={img['id']!r}"
            )
        )
    names_in_order = [names[cid] for cid in instances.categories]
    return Dataset(tuple(images), tuple(names_in_order), source)


_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-.")
_Positioned = tuple[int, dict[str, Any]]  # (position in the reference's images, the image)


def _reference_images(
    reference: CocoInstances,
) -> tuple[dict[str, _Positioned], dict[str, list[_Positioned]]]:
    by_name: dict[str, _Positioned] = {}
    by_base: dict[str, list[_Positioned]] = {}
    for position, img in enumerate(reference.data["images"]):
        name = img.get("file_name")
        if isinstance(name, str):
            by_name.setdefault(name, (position, img))
            by_base.setdefault(PurePosixPath(name).name, []).append((position, img))
    return by_name, by_base


def _match_reference(
    img: ImageRecord,
    reference: CocoInstances,
    by_name: dict[str, _Positioned],
    by_base: dict[str, list[_Positioned]],
    source: str,
) -> _Positioned:
    """The reference image of ``img``: the one with its file name, else the only one with its base
    name (for a Label Studio upload ``0a1b2c3d-a.jpg``, also ``a.jpg``: Label Studio prefixes
    uploaded files with 8 hexadecimal digits); :class:`FormatError` if there is none or its size
    differs."""
    where = img.source_id or f"image {img.file_name!r}"
    match = by_name.get(img.file_name)
    base = PurePosixPath(img.file_name).name
    for name in (base, *([base[9:]] if _UPLOAD_PREFIX.match(base) else [])):
        if match is None:
            candidates = by_base.get(name, [])
            match = candidates[0] if len(candidates) == 1 else None
    if match is None:
        raise FormatError(
            source, f"image {img.file_name!r} is not in the reference file {reference.source}", where
        )
    ref = match[1]
    if (ref["width"], ref["height"]) != (img.width, img.height):
        raise FormatError(
            source,
            f"image {img.file_name!r} is {img.width}x{img.height} here but "
            f"{ref['width']}x{ref['height']} in the reference file {reference.source}",
            where,
        )
    return match


def coco_dict(dataset: Dataset, *, reference: CocoInstances | None = None, boxes_only: bool = False) -> dict:
    """The COCO JSON of ``dataset``: with P_N points (``point_coords``, ``point_labels``), or, with
    ``boxes_only``, boxes only (the annotation tool's ``--annotations`` input).

    Without ``reference``: images get ids 1, 2, ... in order, categories ids 1, 2, ... in the
    order of ``dataset.categories``. With ``reference`` (a COCO file, e.g. the boxes the points
    were asked for): its categories are written as they are and each category name must be one of
    them; each image takes the id (and other fields) of the reference image with the same
    ``file_name`` (else the one with the same base name, if exactly one has it), must have its
    size, and images come in the reference's order; other top-level keys such as ``info`` are
    kept, in the reference's order of keys. Annotations get ids 1, 2, ... in order,
    ``area = w * h``, ``iscrowd = 0``.

    Raises:
        FormatError: an image or category that the reference does not have, or a size that differs.
    """
    source = dataset.source
    out: dict[str, Any] = {}
    if reference is not None:
        skip = ("images", "annotations", "categories")
        out.update(
            {k: v for k, v in reference.data.items() if k not in skip and not k.startswith("point_sup")}
        )
        categories = list(reference.data["categories"])
        category_ids = {}
        for c in categories:
            if c.get("name") in category_ids:
                raise FormatError(
                    reference.source,
                    f"two categories are named {c.get('name')!r} (categories are matched by name)",
                )
            category_ids[c.get("name")] = c["id"]
        by_name, by_base = _reference_images(reference)
    else:
        categories = [{"id": k, "name": name} for k, name in enumerate(dataset.categories, start=1)]
        category_ids = {c["name"]: c["id"] for c in categories}
    records: list[tuple[int, dict[str, Any], ImageRecord]] = []  # (position, COCO image, image)
    used_ids: dict[Any, str] = {}
    for k, img in enumerate(dataset.images, start=1):
        if reference is None:
            position, record = (
                k,
                {"id": k, "file_name": img.file_name, "width": img.width, "height": img.height},
            )
        else:
            position, ref = _match_reference(img, reference, by_name, by_base, source)
            if ref["id"] in used_ids:
                raise FormatError(
                    source,
                    f"images {used_ids[ref['id']]!r} and {img.file_name!r} both match the reference image "
                    f"{ref.get('file_name')!r}",
                    img.source_id or f"image {img.file_name!r}",
                )
            record = dict(ref)
        used_ids[record["id"]] = img.file_name
        records.append((position, record, img))
    records.sort(key=lambda r: r[0])  # with a reference, in its order (a labelme folder has none)
    images, annotations = [], []
    for _, record, img in records:
        images.append(record)
        for obj in img.objects:
            if obj.category not in category_ids:
                known = ", ".join(repr(n) for n in category_ids)
                raise FormatError(
                    source,
                    f"unknown category {obj.category!r} (known: {known})"
                    + (f" in the reference file {reference.source}" if reference is not None else ""),
                    f"image {img.file_name!r}: {obj.source_id}"
                    if obj.source_id
                    else f"image {img.file_name!r}",
                )
            x, y, w, h = obj.box_xywh
            ann: dict[str, Any] = {
                "id": len(annotations) + 1,
                "image_id": record["id"],
                "category_id": category_ids[obj.category],
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": 0,
            }
            if not boxes_only:
                ann["point_coords"] = [[px, py] for px, py in obj.points]
                ann["point_labels"] = list(obj.labels)
            annotations.append(ann)
    out["images"] = images
    out["annotations"] = annotations
    out["categories"] = categories
    if reference is not None:  # the reference's order of keys
        order = [k for k in reference.data if k in out] + [k for k in out if k not in reference.data]
        out = {k: out[k] for k in order}
    return out


def write_coco(
    dataset: Dataset, path: Path, options: Options, *, boxes_only: bool = False
) -> dict[Path, bytes]:
    """The COCO file of ``dataset`` (see :func:`coco_dict`), checked by the project's COCO
    validator; returns ``{path: bytes}``."""
    data = coco_dict(dataset, reference=options.reference, boxes_only=boxes_only)
    # The project's own validator as the last word: what it refuses is never written.
    validate_coco_instances(data, source=os.fspath(path), require_segmentation=False)
    return {path: dumps_json(data)}
