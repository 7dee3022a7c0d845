"""Label Studio's JSON export: rectangles (``RectangleLabels``) and P_N points (``KeyPointLabels``).

The format (https://labelstud.io/guide/task_format and https://labelstud.io/guide/export, with the
result fields of https://labelstud.io/tags/rectanglelabels and https://labelstud.io/tags/keypointlabels):
a list of tasks, each ``{"id", "data": {"image": URL}, "annotations": [{"id", "result": [...]}]}``;
every result item has an ``id``, a ``type``, ``original_width``/``original_height`` (pixels) and a
``value`` in **percent** of the image size (0-100)::

    {"id": "r1", "type": "rectanglelabels", "from_name": "label", "to_name": "image",
     "original_width": 640, "original_height": 480, "image_rotation": 0,
     "value": {"x": 10.0, "y": 20.0, "width": 30.0, "height": 40.0, "rotation": 0,
               "rectanglelabels": ["cat"]}}
    {"id": "p1", "type": "keypointlabels", "from_name": "point", "to_name": "image",
     "original_width": 640, "original_height": 480, "parentID": "r1",
     "value": {"x": 12.5, "y": 25.1, "width": 0.5, "keypointlabels": ["object"]}}

A labeling configuration that produces these::

    <View>
      <Image name="image" value="$image"/>
      <RectangleLabels name="label" toName="image"><Label value="cat"/>...</RectangleLabels>
      <KeyPointLabels name="point" toName="image">
        <Label value="object"/><Label value="background"/>
      </KeyPointLabels>
    </View>

Reading:

* Each task is one image, ``data.image`` (or, without that key, the one text value of
  ``data``); its one annotation that is not ``was_cancelled`` is read (a task with
  several, from several annotators, is refused: keep one; a task with none is skipped with a
  warning, as is one with no result and no size). ``predictions`` are not read.
* An object is a ``rectanglelabels`` result (exactly one label: the category) with its
  ``keypointlabels`` results (label object or background, :class:`.dataset.Options`). Label Studio
  has no group ids; a keypoint belongs to the rectangle named by its ``parentID`` (set by
  dragging the point onto the rectangle in the Regions panel), else to the one rectangle that
  contains it; none or several is an error naming the result id.
* Pixels: ``x_px = value.x / 100 * original_width`` (continuous, ``(0, 0)`` the image's top-left
  corner), then the pixel that holds it, ``floor`` (:func:`.rules.pixel_index`). Boxes:
  ``x = value.x * original_width / 100``, ``w = value.width * original_width / 100``, each the
  float that maps back exactly (:func:`.rules.inverse_float`).
* The file name is ``data.image`` without :attr:`.dataset.Options.image_url_prefix` if it starts
  with it; else, for a local-storage URL (``/data/local-files/?d=dir/a.jpg``) the ``d`` path; for
  any other URL (``http://``, ``s3://``, ``/data/upload/3/0a1b2c3d-a.jpg``) its last component,
  as written (Label Studio adds an 8-character prefix to uploaded files' names); a plain relative
  path is kept.
* Other result types (choices, polygons, relations, ...) are ignored with a warning; rotated
  rectangles or images are refused.

Writing: one task per image (``id`` 1, 2, ...), ``data.image`` = prefix + file name; the task's
``data`` also carries ``width``/``height``, this module's addition, read back for an image
without any result; rectangles and keypoints as above, each keypoint with the ``parentID`` of
its rectangle, at its pixel's centre (``100 * (index + 0.5) / size`` percent).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from ..coco_format import read_json
from ..json_values import is_finite_number, is_integer
from .dataset import BoxObject, Dataset, FormatError, ImageRecord, Options
from .rules import (
    box_problem,
    check_image,
    inverse_float,
    number,
    pixel_centre,
    pixel_index,
    unique_category_names,
)

__all__ = ["from_percent", "read_label_studio", "to_percent", "write_label_studio"]

logger = logging.getLogger(__name__)

KEYPOINT_WIDTH = 0.5  # the drawn size of a written keypoint, percent of the image width
_SLACK = 1e-9  # percent: a box's far edge may pass 100 by this much (rounding of x + width)


def to_percent(v: float, size: int) -> float:
    """A continuous pixel coordinate (or length) as percent of ``size``: what is written."""
    return 100.0 * v / size


def from_percent(p: float, size: int) -> float:
    """The inverse of :func:`to_percent`: the float ``c`` with ``to_percent(c, size) == p`` nearest
    to ``p * size / 100`` with the shortest decimal form (:func:`.rules.inverse_float`)."""
    return inverse_float(p * size / 100.0, lambda c: to_percent(c, size), p)


def _file_name(url: str, prefix: str) -> str:
    if prefix and url.startswith(prefix):
        return url[len(prefix) :]
    parts = urlsplit(url)
    local = parse_qs(parts.query).get("d")
    if local:
        return local[0]
    if parts.scheme or url.startswith("/data/"):
        return unquote(PurePosixPath(parts.path).name)
    return url


def _image_url(task_data: Any) -> Any:
    """``data.image``; if there is no such key, the one text value of ``data`` (a labeling
    configuration may name the image's key otherwise: ``<Image value="$photo"/>``)."""
    if not isinstance(task_data, dict):
        return None
    if "image" in task_data:
        return task_data["image"]
    texts = [v for v in task_data.values() if isinstance(v, str)]
    return texts[0] if len(texts) == 1 else None


def _value_numbers(value: dict, keys: tuple[str, ...], source: str, where: str) -> list[float]:
    out = []
    for key in keys:
        v = value.get(key)
        if not is_finite_number(v):
            raise FormatError(source, f"value.{key} must be a number, got {v!r}", where)
        if not 0 <= v <= 100:
            raise FormatError(source, f"value.{key} = {v!r} lies outside 0-100 % of the image", where)
        out.append(float(v))
    return out


def _one_label(value: dict, key: str, source: str, where: str) -> Any:
    names = value.get(key)
    if not (isinstance(names, list) and len(names) == 1):
        raise FormatError(source, f"value.{key} must hold exactly one label, got {names!r}", where)
    return names[0]


def read_label_studio(path: str | os.PathLike, options: Options | None = None) -> Dataset:
    """Read a Label Studio JSON export (see the module docstring).

    Raises:
        FormatError (or the :class:`point_sup_labels.coco_format.CocoFormatError` of
        :func:`~point_sup_labels.coco_format.read_json` for a file that is not JSON): not a list
        of tasks; a task without ``data.image``, or with several annotations; a result without
        ``original_width``/``original_height`` or with other sizes than the task's others; a
        value outside 0-100 %; a rotated rectangle; a keypoint label that is neither name; a
        keypoint whose ``parentID`` is no rectangle, or without one and inside no rectangle or
        several.
    """
    options = options or Options()
    source = os.fspath(path)
    data = read_json(path)
    if not isinstance(data, list):
        raise FormatError(
            source, f"a Label Studio JSON export is a list of tasks, got a {type(data).__name__}"
        )
    images = []
    seen_categories: list[str] = []
    ignored: Counter[str] = Counter()
    skipped = 0
    for t, task in enumerate(data):
        task_where = (
            f"task id={task.get('id')!r}" if isinstance(task, dict) and "id" in task else f"tasks[{t}]"
        )
        if not isinstance(task, dict):
            raise FormatError(source, f"a task must be an object, got {type(task).__name__}", task_where)
        task_data = task.get("data")
        url = _image_url(task_data)
        if not isinstance(url, str) or not url:
            raise FormatError(source, f"no 'data.image' (the image URL), got {url!r}", task_where)
        annotations = task.get("annotations", [])
        if not isinstance(annotations, list):
            raise FormatError(source, "'annotations' must be a list", task_where)
        kept = [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled", False)]
        if len(kept) > 1:
            ids = ", ".join(repr(a.get("id")) for a in kept)
            raise FormatError(
                source,
                f"{len(kept)} annotations (ids {ids}): which one is the image's? keep one per task",
                task_where,
            )
        if not kept:
            skipped += 1
            continue
        annotation_where = f"{task_where}, annotation id={kept[0].get('id')!r}"
        result = kept[0].get("result", [])
        if not isinstance(result, list):
            raise FormatError(source, "'result' must be a list", annotation_where)
        record = _read_task(result, url, task_data, options, source, task_where, seen_categories, ignored)
        if record is None:
            skipped += 1
            continue
        images.append(record)
    for kind, count in sorted(ignored.items()):
        logger.warning("%s: %d results of type %r ignored", source, count, kind)
    if skipped:
        logger.warning(
            "%s: %d tasks skipped: no annotation (or none of known size: no result and no data.width)",
            source,
            skipped,
        )
    return Dataset(tuple(images), unique_category_names(seen_categories), source)


def _read_task(
    result: list,
    url: str,
    task_data: dict,
    options: Options,
    source: str,
    task_where: str,
    seen_categories: list[str],
    ignored: Counter[str],
) -> ImageRecord | None:
    size: tuple[int, int] | None = None
    size_from: str | None = None
    if "width" in task_data or "height" in task_data:
        w, h = task_data.get("width"), task_data.get("height")
        if not all(is_integer(v) and v > 0 for v in (w, h)):
            raise FormatError(
                source, f"data.width and data.height must be positive integers, got {w!r}, {h!r}", task_where
            )
        size, size_from = (w, h), "data.width/height"
    rectangles: list[tuple[str, Any, tuple[float, float, float, float], str]] = []  # id, label, box, where
    keypoints: list[tuple[Any, float, float, int, str, Any]] = []  # id, x, y, label, where, parent
    for k, item in enumerate(result):
        if not isinstance(item, dict):
            raise FormatError(source, f"result[{k}] must be an object", task_where)
        rid = item.get("id")
        where = f"{task_where}, result id={rid!r}" if rid is not None else f"{task_where}, result[{k}]"
        kind = item.get("type")
        if kind in ("rectangle", "keypoint"):
            raise FormatError(
                source,
                f"a {kind!r} result has no label; use RectangleLabels/KeyPointLabels in the labeling config",
                where,
            )
        if kind not in ("rectanglelabels", "keypointlabels"):
            ignored[str(kind)] += 1
            continue
        w, h = item.get("original_width"), item.get("original_height")
        if not all(is_integer(v) and v > 0 for v in (w, h)):
            raise FormatError(
                source,
                f"original_width and original_height must be positive integers, got {w!r}, {h!r}",
                where,
            )
        if size is not None and size != (w, h):
            raise FormatError(
                source, f"original size {w}x{h} differs from the {size[0]}x{size[1]} of {size_from}", where
            )
        size, size_from = (w, h), f"result id={rid!r}"
        if number(item.get("image_rotation", 0)) != 0:
            raise FormatError(source, f"the image is rotated ({item.get('image_rotation')} degrees)", where)
        value = item.get("value")
        if not isinstance(value, dict):
            raise FormatError(source, "no 'value' object", where)
        if kind == "rectanglelabels":
            px, py, pw, ph = _value_numbers(value, ("x", "y", "width", "height"), source, where)
            if number(value.get("rotation", 0)) != 0:
                raise FormatError(
                    source,
                    f"the rectangle is rotated ({value.get('rotation')} degrees); COCO boxes are upright",
                    where,
                )
            if px + pw > 100 + _SLACK or py + ph > 100 + _SLACK:
                raise FormatError(
                    source, "the rectangle extends past 100 % of the image (x + width, y + height)", where
                )
            category = _one_label(value, "rectanglelabels", source, where)
            if not isinstance(category, str) or not category:
                raise FormatError(source, f"the category must be a non-empty string, got {category!r}", where)
            box = (from_percent(px, w), from_percent(py, h), from_percent(pw, w), from_percent(ph, h))
            problem = box_problem(box, w, h)
            if problem is not None:
                raise FormatError(source, problem, where)
            if any(r[0] == rid for r in rectangles):
                raise FormatError(source, f"two rectangles have the id {rid!r}", where)
            rectangles.append((rid, category, box, where))
        else:
            px, py = _value_numbers(value, ("x", "y"), source, where)
            name = _one_label(value, "keypointlabels", source, where)
            label = options.point_label(name)
            if label is None:
                raise FormatError(source, options.point_label_problem(name), where)
            keypoints.append(
                (rid, from_percent(px, w), from_percent(py, h), label, where, item.get("parentID"))
            )
    if size is None:
        return None
    width, height = size
    index_of = {r[0]: k for k, r in enumerate(rectangles)}
    points: list[list[tuple[int, int]]] = [[] for _ in rectangles]
    labels: list[list[int]] = [[] for _ in rectangles]
    for _rid, x, y, label, where, parent in keypoints:
        if parent is not None:
            if parent not in index_of:
                raise FormatError(source, f"parentID {parent!r} is no rectangle of this annotation", where)
            owner = index_of[parent]
        else:
            inside = [
                k
                for k, (_, _, (bx, by, bw, bh), _) in enumerate(rectangles)
                if bx <= x <= bx + bw and by <= y <= by + bh
            ]
            if len(inside) != 1:
                which = (
                    "lies in no rectangle"
                    if not inside
                    else "lies in {} rectangles (ids {})".format(
                        len(inside), ", ".join(repr(rectangles[k][0]) for k in inside)
                    )
                )
                raise FormatError(
                    source,
                    f"the keypoint has no parentID and {which}: set its parent by dragging it onto its "
                    "rectangle in the Regions panel",
                    where,
                )
            owner = inside[0]
        ix, iy = pixel_index(x, width), pixel_index(y, height)
        if ix is None or iy is None:  # (0-100 % was checked; kept as the rule's last word)
            raise FormatError(source, f"the keypoint lies outside the {width}x{height} image", where)
        points[owner].append((ix, iy))
        labels[owner].append(label)
    objects = []
    for (_rid, category, box, where), pts, labs in zip(rectangles, points, labels, strict=True):
        seen_categories.append(category)
        objects.append(BoxObject(category, box, tuple(pts), tuple(labs), where.split(", ", 1)[-1]))
    file_name = _file_name(url, options.image_url_prefix)
    return ImageRecord(file_name, width, height, tuple(objects), task_where)


def write_label_studio(dataset: Dataset, path: Path, options: Options | None = None) -> dict[Path, bytes]:
    """The Label Studio JSON (tasks to import, see the module docstring): ``{path: bytes}``."""
    options = options or Options()
    tasks = []
    for t, img in enumerate(dataset.images, start=1):
        check_image(img, dataset.source)
        w, h = img.width, img.height
        common = {"to_name": "image", "original_width": w, "original_height": h, "image_rotation": 0}
        result: list[dict[str, Any]] = []
        for k, obj in enumerate(img.objects, start=1):
            x, y, bw, bh = obj.box_xywh
            rid = f"t{t}_box{k}"
            result.append(
                {
                    "id": rid,
                    "type": "rectanglelabels",
                    "from_name": "label",
                    **common,
                    "origin": "manual",
                    "value": {
                        "x": to_percent(x, w),
                        "y": to_percent(y, h),
                        "width": to_percent(bw, w),
                        "height": to_percent(bh, h),
                        "rotation": 0,
                        "rectanglelabels": [obj.category],
                    },
                }
            )
            for p, ((px, py), label) in enumerate(zip(obj.points, obj.labels, strict=True), start=1):
                result.append(
                    {
                        "id": f"{rid}_point{p}",
                        "type": "keypointlabels",
                        "from_name": "point",
                        **common,
                        "origin": "manual",
                        "parentID": rid,
                        "value": {
                            "x": to_percent(pixel_centre(px), w),
                            "y": to_percent(pixel_centre(py), h),
                            "width": KEYPOINT_WIDTH,
                            "keypointlabels": [options.label_name(label)],
                        },
                    }
                )
        tasks.append(
            {
                "id": t,
                "data": {"image": options.image_url_prefix + img.file_name, "width": w, "height": h},
                "annotations": [{"id": t, "result": result, "was_cancelled": False, "ground_truth": False}],
                "predictions": [],
            }
        )
    return {path: orjson.dumps(tasks, option=orjson.OPT_INDENT_2) + b"\n"}
