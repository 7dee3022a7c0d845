"""The rules shared by the format modules: the pixel convention, box and number conversions, and
the checks that every image obeys whatever its format.

Conventions, the same in every format module:

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
  ``100 * x / width``), never rounded to a grid; the inverse (``w = xbr - x``) is the float that
  maps back exactly to the value read (:func:`inverse_float`). Why that reads a written box back
  bit for bit: ``docs/labels_implementation.md``.

Every problem with an input raises :class:`~.dataset.FormatError` naming the file, the record and
the reason.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

from ..point_fields import PIXEL_CENTRE
from .dataset import BACKGROUND, OBJECT, Dataset, FormatError, ImageRecord

__all__ = [
    "box_corners",
    "box_from_corners",
    "box_problem",
    "check_image",
    "checked_size",
    "format_float",
    "inverse_float",
    "number",
    "pixel_centre",
    "pixel_index",
    "unique_category_names",
    "warn_points_outside_boxes",
]

logger = logging.getLogger(__name__)


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
