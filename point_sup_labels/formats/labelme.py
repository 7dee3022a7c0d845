"""labelme's per-image JSON files: rectangles and P_N points tied by ``group_id``.

The format (labelme's ``LabelFile``, https://github.com/wkentaro/labelme/blob/main/labelme/label_file.py,
and its example https://github.com/wkentaro/labelme/blob/main/examples/tutorial/apc2016_obj3.json):
one JSON file per image, beside it or in a folder of its own::

    {"version": "5.5.0", "flags": {}, "imagePath": "a.jpg", "imageData": null,
     "imageHeight": 480, "imageWidth": 640,
     "shapes": [
       {"label": "cat", "shape_type": "rectangle", "points": [[10.5, 20.0], [50.0, 70.0]],
        "group_id": 1, "flags": {}, "description": ""},
       {"label": "object", "shape_type": "point", "points": [[12.5, 30.5]], "group_id": 1, ...},
       {"label": "background", "shape_type": "point", "points": [[11.5, 68.5]], "group_id": 1, ...}]}

A labelme *dataset* is a folder: every ``*.json`` under it (sorted by path) is one image.

Reading:

* An object is a ``rectangle`` shape (two opposite corners; ``label`` = the category) with the
  ``point`` shapes of the same ``group_id`` (labelme's "Group ID" field) in the same file, in
  shape order; ``label`` of a point is object or background (:class:`.dataset.Options`). A
  rectangle without ``group_id`` is an object without points.
* Pixels: labelme stores the clicked position in image coordinates, ``(0, 0)`` the top-left
  corner of the image and pixel ``i`` drawn over ``[i, i + 1)``; labelme keeps clicks within
  ``[0, size - 1]``. A point becomes the pixel under it, ``floor`` (:func:`.rules.pixel_index`).
  Rectangles are kept as stored (one dragged to the far edge in labelme ends at ``size - 1``).
* The image's file name (relative to the folder) is ``imagePath`` joined to the JSON file's
  folder within the dataset folder; if ``imagePath`` leads out of the dataset folder (``../``),
  its base name alone.
* Other shape types (polygon, circle, line, ...) are ignored with a warning.

Errors name the JSON file and the shape as ``shapes[k]`` (its index in the file, from 0).

Writing: into OUTPUT (a folder), for image ``dir/a.jpg`` the file ``OUTPUT/dir/a.json`` with
``imagePath: "a.jpg"`` (so with OUTPUT = the image folder labelme opens the images with their
annotations), ``imageData: null``; each object a rectangle and, if it has points, ``group_id = k``
(its position in the image, from 1) on it and on its points, written at the pixel's centre
``index + 0.5``. An image without objects gets a file with no shapes (so it is read back).
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any

from ..coco_format import read_json
from ..json_values import is_finite_number, is_integer
from .dataset import BoxObject, Dataset, FormatError, ImageRecord, Options
from .rules import (
    box_corners,
    box_from_corners,
    box_problem,
    check_image,
    pixel_centre,
    pixel_index,
    unique_category_names,
)

__all__ = ["LABELME_VERSION", "label_files", "read_labelme", "write_labelme"]

logger = logging.getLogger(__name__)

LABELME_VERSION = "5.5.0"  # written in "version": labelme warns about files of another major version


def label_files(folder: str | os.PathLike) -> list[Path]:
    """The labelme files of a dataset folder: every ``*.json`` under it, sorted by path."""
    return sorted(p for p in Path(folder).rglob("*.json") if p.is_file())


def _xy(point: Any) -> tuple[float, float] | None:
    if isinstance(point, list) and len(point) == 2 and all(map(is_finite_number, point)):
        return float(point[0]), float(point[1])
    return None


def _file_name(folder: Path, json_path: Path, image_path: str) -> str:
    relative_dir = json_path.parent.relative_to(folder).as_posix()
    joined = posixpath.normpath(posixpath.join(relative_dir, image_path.replace("\\", "/")))
    if joined == ".." or joined.startswith("../") or posixpath.isabs(joined):
        return PurePosixPath(image_path.replace("\\", "/")).name
    return joined


def read_labelme(path: str | os.PathLike, options: Options | None = None) -> Dataset:
    """Read a folder of labelme JSON files (see the module docstring).

    Raises:
        FormatError (or :class:`point_sup_labels.coco_format.CocoFormatError` for a file that is
        not JSON): not a folder, or no JSON file in it; a file that is no labelme file (no
        ``shapes`` list), without ``imagePath`` or a positive integer ``imageHeight`` and
        ``imageWidth``; a rectangle or point with bad or outside coordinates; a point without a
        rectangle (no ``group_id``, or one no rectangle of the file has); two rectangles with one
        ``group_id``; a point label that is neither name; two files for the same image.
    """
    options = options or Options()
    folder = Path(path)
    if not folder.is_dir():
        raise FormatError(os.fspath(folder), "labelme input must be a folder of per-image JSON files")
    files = label_files(folder)
    if not files:
        raise FormatError(os.fspath(folder), "no labelme JSON file (*.json) in this folder")
    images = []
    seen_categories: list[str] = []
    ignored: Counter[str] = Counter()
    names: dict[str, Path] = {}
    for json_path in files:
        record = _read_file(folder, json_path, options, seen_categories, ignored)
        if record.file_name in names:
            raise FormatError(
                os.fspath(json_path),
                f"image {record.file_name!r} is also annotated by {names[record.file_name]}",
            )
        names[record.file_name] = json_path
        images.append(record)
    for kind, count in sorted(ignored.items()):
        logger.warning("%s: %d shapes of type %r ignored", folder, count, kind)
    return Dataset(tuple(images), unique_category_names(seen_categories), os.fspath(folder))


def _read_file(
    folder: Path, json_path: Path, options: Options, seen_categories: list[str], ignored: Counter[str]
) -> ImageRecord:
    source = os.fspath(json_path)
    data = read_json(json_path)
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise FormatError(source, "not a labelme file (no 'shapes' list)")
    image_path = data.get("imagePath")
    if not isinstance(image_path, str) or not image_path:
        raise FormatError(source, f"'imagePath' must be a non-empty string, got {image_path!r}")
    width, height = data.get("imageWidth"), data.get("imageHeight")
    if not all(is_integer(v) and v > 0 for v in (width, height)):
        raise FormatError(
            source, f"'imageWidth' and 'imageHeight' must be positive integers, got {width!r}, {height!r}"
        )
    rectangles: list[tuple[int, dict, Any]] = []
    groups: dict[Any, int] = {}
    for k, shape in enumerate(data["shapes"]):
        if not isinstance(shape, dict):
            raise FormatError(
                source, f"a shape must be an object, got {type(shape).__name__}", f"shapes[{k}]"
            )
        kind = shape.get("shape_type", "polygon")  # labelme's default
        group = shape.get("group_id")
        if group is not None and not is_integer(group):
            raise FormatError(source, f"'group_id' must be an integer or null, got {group!r}", f"shapes[{k}]")
        if kind == "rectangle":
            if group is not None:
                if group in groups:
                    raise FormatError(
                        source,
                        f"two rectangles have group_id {group} (shapes[{rectangles[groups[group]][0]}] and "
                        f"shapes[{k}]): which one do its points belong to?",
                        f"shapes[{k}] rectangle",
                    )
                groups[group] = len(rectangles)
            rectangles.append((k, shape, group))
        elif kind != "point":
            ignored[str(kind)] += 1
    points: list[list[tuple[int, int]]] = [[] for _ in rectangles]
    labels: list[list[int]] = [[] for _ in rectangles]
    for k, shape in enumerate(data["shapes"]):
        if shape.get("shape_type", "polygon") != "point":
            continue
        group = shape.get("group_id")
        where = f"shapes[{k}] point" + (f" group_id={group}" if group is not None else "")
        if group is None:
            raise FormatError(
                source,
                "a point without group_id belongs to no rectangle (give it its rectangle's Group ID)",
                where,
            )
        if group not in groups:
            raise FormatError(source, f"no rectangle of this file has group_id {group}", where)
        label = options.point_label(shape.get("label"))
        if label is None:
            raise FormatError(source, options.point_label_problem(shape.get("label")), where)
        pts = shape.get("points")
        xy = _xy(pts[0]) if isinstance(pts, list) and len(pts) == 1 else None
        if xy is None:
            raise FormatError(source, f"'points' of a point must be [[x, y]], got {pts!r}", where)
        px, py = pixel_index(xy[0], width), pixel_index(xy[1], height)
        if px is None or py is None:
            raise FormatError(source, f"point {list(xy)} lies outside the {width}x{height} image", where)
        points[groups[group]].append((px, py))
        labels[groups[group]].append(label)
    objects = []
    for (k, shape, group), pts, labs in zip(rectangles, points, labels, strict=True):
        where = f"shapes[{k}] rectangle" + (f" group_id={group}" if group is not None else "")
        category = shape.get("label")
        if not isinstance(category, str) or not category:
            raise FormatError(
                source,
                f"a rectangle's label (its category) must be a non-empty string, got {category!r}",
                where,
            )
        corners = shape.get("points")
        xy = [_xy(c) for c in corners] if isinstance(corners, list) and len(corners) == 2 else [None]
        if None in xy:
            raise FormatError(
                source,
                f"'points' of a rectangle must be two corners [[x1, y1], [x2, y2]], got {corners!r}",
                where,
            )
        (x1, y1), (x2, y2) = xy
        box = box_from_corners(x1, y1, x2, y2)
        problem = box_problem(box, width, height)
        if problem is not None:
            raise FormatError(source, problem, where)
        seen_categories.append(category)
        objects.append(BoxObject(category, box, tuple(pts), tuple(labs), f"{json_path.name} {where}"))
    file_name = _file_name(folder, json_path, image_path)
    return ImageRecord(file_name, width, height, tuple(objects), source)


def _json_path(folder: Path, file_name: str) -> Path:
    return folder.joinpath(*PurePosixPath(file_name).with_suffix(".json").parts)


def write_labelme(dataset: Dataset, path: Path, options: Options | None = None) -> dict[Path, bytes]:
    """The labelme files of ``dataset`` under the folder ``path`` (see the module docstring):
    ``{file: bytes}``.

    Raises:
        FormatError: two images that would share one file (``a.jpg`` and ``a.png``), or a file
            name that leads out of the folder.
    """
    options = options or Options()
    files: dict[Path, bytes] = {}
    owners: dict[Path, str] = {}
    for img in dataset.images:
        check_image(img, dataset.source)
        pure = PurePosixPath(img.file_name.replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts:
            raise FormatError(
                dataset.source,
                f"file_name {img.file_name!r} is not a path inside the image folder (absolute or with '..')",
                img.source_id or None,
            )
        target = _json_path(path, pure.as_posix())
        if target in owners:
            raise FormatError(
                dataset.source,
                f"images {owners[target]!r} and {img.file_name!r} would both be written to {target}",
            )
        owners[target] = img.file_name
        shapes = []
        for k, obj in enumerate(img.objects, start=1):
            group = k if obj.points else None
            x1, y1, x2, y2 = box_corners(obj.box_xywh)
            shapes.append(_shape(obj.category, [[x1, y1], [x2, y2]], group, "rectangle"))
            for (px, py), label in zip(obj.points, obj.labels, strict=True):
                centre = [pixel_centre(px), pixel_centre(py)]
                shapes.append(_shape(options.label_name(label), [centre], group, "point"))
        data = {
            "version": LABELME_VERSION,
            "flags": {},
            "shapes": shapes,
            "imagePath": pure.name,
            "imageData": None,
            "imageHeight": img.height,
            "imageWidth": img.width,
        }
        files[target] = (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    return files


def _shape(label: str, points: list[list[float]], group: int | None, kind: str) -> dict[str, Any]:
    return {
        "label": label,
        "points": points,
        "group_id": group,
        "description": "",
        "shape_type": kind,
        "flags": {},
        "mask": None,
    }
