"""The in-memory form shared by the format modules, their shared rules, and the COCO P_N side.

A :class:`Dataset` is what every reader returns and every writer takes: images (file name, size)
with their objects, each a :class:`BoxObject` (category name, box, P_N points). The format modules
(:mod:`.cvat`, :mod:`.label_studio`, :mod:`.labelme`) translate it from and to the tools' files;
this module translates it from and to the project's COCO P_N JSON (:func:`read_coco`,
:func:`coco_dict`), whose reader and validator are :mod:`point_sup_labels.coco_format`'s.

Conventions, the same in every module:

* A box is COCO's ``[x, y, w, h]`` in **continuous** image coordinates: the image covers
  ``[0, width] x [0, height]`` and pixel column ``i`` covers ``[i, i + 1)``.
* A point is an **integer pixel index** ``(x, y)`` (column, row) with ``0 <= x < width`` and
  ``0 <= y < height``, as :mod:`point_sup_labels.point_fields` requires; its label is 1 (object)
  or 0 (background).
* The tools store points as continuous coordinates. Reading, a point at ``c`` (``0 <= c <= size``)
  becomes the pixel that contains it, :func:`pixel_index` ``= floor(c)``, except that a point on
  the far edge (``c == size``, where CVAT and labelme clamp a click) is the last pixel. Writing, a
  pixel becomes its centre, :func:`pixel_centre` ``= index + 0.5``. So export then import gives
  the same pixels, and a point shown by the tool sits in the middle of its pixel.
* Boxes are converted with floating-point arithmetic only (``xbr = x + w``; percentages
  ``100 * x / width``), never rounded to a grid. The inverse (``w = xbr - x``) is the float of
  shortest decimal form near the arithmetic result that maps back *exactly* to the value read
  (:func:`inverse_float`): a box written by this package is read back bit for bit whenever its
  coordinates have up to 15 significant digits (every box a person or a tool draws); one with
  17 comes back as a float that the written file cannot tell apart from it.

Every problem with an input raises :class:`FormatError`, a :class:`CocoFormatError` whose one-line
message names the file, the shape or record, and the reason.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from ..coco_format import (
    CocoFormatError,
    CocoInstances,
    dumps_json,
    load_coco_instances,
    validate_coco_instances,
)
from ..file_io import StagedFiles
from ..point_fields import PIXEL_CENTRE

__all__ = [
    "BACKGROUND",
    "OBJECT",
    "BoxObject",
    "Dataset",
    "FormatError",
    "ImageRecord",
    "Options",
    "box_problem",
    "check_outputs",
    "coco_dict",
    "format_float",
    "inverse_float",
    "pixel_centre",
    "pixel_index",
    "read_coco",
    "write_coco",
    "write_files",
]

logger = logging.getLogger(__name__)

OBJECT, BACKGROUND = 1, 0


class FormatError(CocoFormatError):
    """Bad input: ``"<file>: <where>: <reason>"`` on one line.

    Attributes:
        source: the file; where: the record in it (e.g. ``"image 'a.jpg': shapes[3] <points>"``),
            or None; reason: what is wrong.
    """

    def __init__(self, source: str | os.PathLike, reason: str, where: str | None = None) -> None:
        super().__init__(f"{where}: {reason}" if where else reason, source=os.fspath(source))
        self.where = where
        self.reason = reason


@dataclass(frozen=True)
class Options:
    """What the readers and writers are told beyond the file itself.

    Attributes:
        object_label, background_label: the names that mark a point object (1) or background (0):
            a CVAT points shape's label (or attribute, see ``point_attribute``), a Label Studio
            keypoint's label, a labelme point shape's label.
        point_attribute: CVAT only: a points shape with an ``<attribute name=point_attribute>``
            takes its object/background from that attribute's value instead of its label.
        image_url_prefix: Label Studio only: written before each file name in ``data.image``, and
            removed from ``data.image`` when reading (e.g. ``/data/local-files/?d=images/``).
        reference: COCO only, when writing: take image ids and categories from this COCO file
            (images matched by file name, categories by name).
    """

    object_label: str = "object"
    background_label: str = "background"
    point_attribute: str = "label"
    image_url_prefix: str = ""
    reference: CocoInstances | None = None

    def point_label(self, name: Any) -> int | None:
        """1 for the object name, 0 for the background name, None for anything else."""
        if name == self.object_label:
            return OBJECT
        if name == self.background_label:
            return BACKGROUND
        return None

    def label_name(self, label: int) -> str:
        return self.object_label if label == OBJECT else self.background_label

    def point_label_problem(self, name: Any) -> str:
        return (
            f"point label {name!r} is neither {self.object_label!r} (object) nor "
            f"{self.background_label!r} (background)"
        )


@dataclass(frozen=True)
class BoxObject:
    """One object: a box and its P_N points.

    Attributes:
        category: the category name.
        box_xywh: COCO ``[x, y, w, h]``, continuous image coordinates (see the module docstring).
        points: ``(x, y)`` integer pixel indices; labels: 1 object / 0 background, one per point.
        source_id: where the object was read (for messages), e.g. ``"shapes[2] <box>"``; not
            compared (two objects are equal if their contents are).
    """

    category: str
    box_xywh: tuple[float, float, float, float]
    points: tuple[tuple[int, int], ...] = ()
    labels: tuple[int, ...] = ()
    source_id: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if len(self.points) != len(self.labels):
            raise ValueError(f"{len(self.points)} points but {len(self.labels)} labels")


@dataclass(frozen=True)
class ImageRecord:
    """One image: ``file_name`` (relative to the image folder, ``/``-separated), its size in
    pixels, and its objects in file order. ``source_id`` says where it was read."""

    file_name: str
    width: int
    height: int
    objects: tuple[BoxObject, ...] = ()
    source_id: str = field(default="", compare=False)


@dataclass(frozen=True)
class Dataset:
    """What a reader returns: images in file order and the category names (in the order that
    gives their COCO ids 1, 2, ... when no reference file says otherwise)."""

    images: tuple[ImageRecord, ...]
    categories: tuple[str, ...]
    source: str = field(default="<memory>", compare=False)

    @property
    def num_objects(self) -> int:
        return sum(len(img.objects) for img in self.images)

    @property
    def num_points(self) -> int:
        return sum(len(obj.points) for img in self.images for obj in img.objects)

    def boxes_only(self) -> Dataset:
        """The same boxes without their points."""
        images = tuple(
            replace(img, objects=tuple(replace(o, points=(), labels=()) for o in img.objects))
            for img in self.images
        )
        return replace(self, images=images)


# ---------------------------------------------------------------------------------- coordinates


def pixel_index(c: float, size: int) -> int | None:
    """The pixel (column or row index) that holds the continuous coordinate ``c``; None if ``c``
    lies outside ``[0, size]``. ``floor(c)``, and the last pixel for ``c == size`` (the far edge,
    where the tools clamp a click)."""
    if not 0 <= c <= size:  # (NaN fails too)
        return None
    return min(math.floor(c), size - 1)


def pixel_centre(index: int) -> float:
    """The continuous coordinate of the centre of pixel ``index``: what writers store."""
    return index + PIXEL_CENTRE


# The neighbours inverse_float tries on either side of the estimate when no short decimal maps
# exactly: two roundings (forward and back) move a value by about 2 units in the last place.
_ULPS = 4


def inverse_float(approx: float, forward: Callable[[float], float], target: float) -> float:
    """The float ``c`` with ``forward(c) == target`` that has the shortest decimal form among
    those near ``approx`` (the arithmetic inverse); ``approx`` itself if none maps exactly.

    Undoes a conversion a writer made (``target = forward(original)``, e.g. ``xbr = x + w``):
    the arithmetic inverse ``xbr - x`` is off in about one case in ten (``(0.1 + 0.2) - 0.1`` is
    ``0.20000000000000004``), and by many units in the last place when ``w`` is small beside
    ``x``. The candidates are ``approx`` rounded to 1, 2, ..., 17 significant digits (the original,
    if it has up to about 15 digits, is the first that maps exactly), then the floats a few units
    in the last place around ``approx``.
    """
    if not math.isfinite(approx):
        return approx
    for digits in range(1, 18):
        c = float(f"{approx:.{digits}g}")
        if forward(c) == target:
            return c
    lo = hi = approx
    for _ in range(_ULPS):
        lo, hi = math.nextafter(lo, -math.inf), math.nextafter(hi, math.inf)
        for c in (hi, lo):
            if forward(c) == target:
                return c
    return approx


def format_float(v: float) -> str:
    """A coordinate as text (XML attributes): the shortest form that reads back as the same float."""
    return repr(float(v))


def box_problem(box: tuple[float, float, float, float], width: int, height: int) -> str | None:
    """Why the COCO box ``[x, y, w, h]`` cannot be a tool's box in a ``width`` x ``height`` image
    (the tools keep boxes inside the image), or None. Far edges may exceed the image by rounding
    (1e-9 of its size), which percentages cause."""
    x, y, w, h = box
    if not all(math.isfinite(v) for v in box):
        return f"box {list(box)} has a non-finite coordinate"
    if w < 0 or h < 0:
        return f"box {list(box)} has a negative width or height"
    slack_x, slack_y = 1e-9 * width, 1e-9 * height
    if x < 0 or y < 0 or x + w > width + slack_x or y + h > height + slack_y:
        return (
            f"box [x, y, w, h] = {list(box)} extends outside the {width}x{height} image "
            f"(x, y >= 0, x + w <= {width}, y + h <= {height})"
        )
    return None


def box_from_corners(x1: float, y1: float, x2: float, y2: float) -> tuple[float, float, float, float]:
    """COCO ``[x, y, w, h]`` of the box with corners ``(x1, y1)`` and ``(x2, y2)`` (any two
    opposite corners), ``w`` chosen so that ``x + w == x2`` exactly where a float allows
    (:func:`inverse_float`)."""
    x, xr = min(x1, x2), max(x1, x2)
    y, yb = min(y1, y2), max(y1, y2)
    w = inverse_float(xr - x, lambda c: x + c, xr)
    h = inverse_float(yb - y, lambda c: y + c, yb)
    return (x, y, w, h)


def box_corners(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """``(x1, y1, x2, y2)`` of COCO ``[x, y, w, h]``: the inverse of :func:`box_from_corners`."""
    x, y, w, h = box
    return (x, y, x + w, y + h)


def checked_size(value: Any) -> int | None:
    """An image width or height as read (int, integral float, or such text); None if it is not a
    positive integer."""
    size = number(value)
    return int(size) if size is not None and size == int(size) and size > 0 else None


def number(value: Any) -> float | None:
    """A coordinate as read (a JSON number, or XML text): a finite float, or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def check_image(image: ImageRecord, source: str) -> None:
    """The rules every image obeys whatever its format (boxes inside the image, points on its
    pixels, labels 0/1); :class:`FormatError` naming the object otherwise. Writers call it before
    writing, so a tool file is never written that its own reader would refuse."""
    for obj in image.objects:
        where = (
            f"image {image.file_name!r}: {obj.source_id}" if obj.source_id else f"image {image.file_name!r}"
        )
        problem = box_problem(obj.box_xywh, image.width, image.height)
        if problem is not None:
            raise FormatError(source, problem, where)
        for (px, py), label in zip(obj.points, obj.labels, strict=True):
            if not (0 <= px < image.width and 0 <= py < image.height):
                raise FormatError(
                    source, f"point {[px, py]} lies outside the {image.width}x{image.height} image", where
                )
            if label not in (OBJECT, BACKGROUND):
                raise FormatError(source, f"point label {label!r} is neither 1 (object) nor 0", where)


def warn_points_outside_boxes(dataset: Dataset) -> None:
    """Log how many points lie outside their object's box (allowed; P_N points are inside)."""
    outside = 0
    for img in dataset.images:
        for obj in img.objects:
            x, y, w, h = obj.box_xywh
            outside += sum(
                not (x <= px + PIXEL_CENTRE <= x + w and y <= py + PIXEL_CENTRE <= y + h)
                for px, py in obj.points
            )
    if outside:
        logger.warning("%d points lie outside their object's box (kept as they are)", outside)


def unique_category_names(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` without repeats, in order of first appearance."""
    return tuple(dict.fromkeys(names))


# ---------------------------------------------------------------------------------- COCO P_N


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


# ---------------------------------------------------------------------------------- outputs


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def check_outputs(outputs: Iterable[Path], inputs: Mapping[str, str | os.PathLike]) -> str | None:
    """Why ``outputs`` may not be written, or None: an output that is (also through a symbolic or
    hard link) one of ``inputs`` (``{what: path}``, e.g. ``{"INPUT": ..., "--reference": ...}``),
    or that lies inside an input folder (a labelme INPUT, whose files would be replaced, or read
    as labelme files the next time)."""
    outputs = list(outputs)
    for what, path in inputs.items():
        if os.path.isdir(path):
            root = os.path.realpath(path)
            for out in outputs:
                real = os.path.realpath(out)
                if real == root or real.startswith(os.path.join(root, "")):
                    return (
                        f"OUTPUT {out} lies inside the {what} folder {path}: refusing to write into an "
                        "input (choose another folder)"
                    )
            continue
        for out in outputs:
            if _same_file(path, out):
                return f"OUTPUT {out} is the {what} file {path}: refusing to overwrite an input"
    return None


def write_files(files: Mapping[Path, bytes]) -> None:
    """Write every file, all or none (:class:`point_sup_labels.file_io.StagedFiles`: each is
    staged beside its target and renamed into place only after all were written). Missing parent
    folders are created (and removed again if the write fails)."""
    created: list[Path] = []
    try:
        for parent in sorted({p.parent for p in files}, key=lambda p: len(p.parts)):
            missing = [q for q in (parent, *parent.parents) if not q.exists()]
            for q in reversed(missing):
                q.mkdir()
                created.append(q)
        with StagedFiles() as staged:
            for path, data in files.items():
                staged.write(path, data)
    except BaseException:
        for q in reversed(created):
            with contextlib.suppress(OSError):  # not empty: someone else's files
                q.rmdir()
        raise
