"""The P_N fields of an annotation and their rules: the one validator of ``point_coords`` and
``point_labels``, used by the COCO-format reader, the training-side loader and the tools.

A P_N annotation carries, besides ``bbox`` and ``category_id`` (the format of Detectron2's PointSup):

``point_coords``
    a list of ``[x, y]`` **integer pixel indices** (``x`` = column, ``y`` = row) of the labelled
    points, inside the image: ``0 <= x < width``, ``0 <= y < height``;
``point_labels``
    a list of the same length, 1 = object, 0 = background.

Values are JSON numbers (:func:`point_sup_labels.json_values.is_number`: ``"3"`` and ``true`` are
not); coordinates are integral (``3.0`` reads as 3; ``3.5`` is refused, since a file in another
convention would otherwise be shifted by half a pixel without a word). Training works in
Detectron2's continuous image coordinates, where pixel ``i`` covers ``[i, i + 1)``: the loader adds
:data:`PIXEL_CENTRE` to every index, so a point is trained at its pixel's centre.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any

import numpy as np

from .json_values import is_number

__all__ = ["PIXEL_CENTRE", "POINT_FIELDS", "PointFieldError", "missing_point_field", "validate_points"]

POINT_FIELDS = ("point_coords", "point_labels")
PIXEL_CENTRE = 0.5  # added to a pixel index to reach the centre of the pixel in continuous coordinates


class PointFieldError(ValueError):
    """A problem with the point fields of entry ``index`` of a batch (the message says which)."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


def missing_point_field(ann: Mapping[str, Any]) -> str | None:
    """The name of the point field that ``ann`` lacks while it has the other; None if it has both
    or neither."""
    has = [key in ann for key in POINT_FIELDS]
    return POINT_FIELDS[has.index(False)] if any(has) and not all(has) else None


def validate_points(
    coords_lists: Sequence[Any],
    labels_lists: Sequence[Any],
    heights: Sequence[int] | np.ndarray,
    widths: Sequence[int] | np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check the point fields of E annotations at once; return them stacked.

    Args:
        coords_lists, labels_lists: each annotation's ``point_coords`` and ``point_labels`` as read.
        heights, widths: (E,) the size of each annotation's image.

    Returns:
        coords: (N, 2) float64 pixel indices ``[x, y]`` of all points, in order;
        labels: (N,) float64, 0 or 1;
        offsets: (E + 1,) int64, annotation k's points are ``offsets[k]:offsets[k + 1]``.

    Raises:
        PointFieldError: for the first annotation (``index``) that breaks a rule, saying which.
    """
    stacked = _stack(coords_lists, labels_lists)
    if isinstance(stacked, str):  # find the annotation by the same rules, one at a time
        for k, (c, lab) in enumerate(zip(coords_lists, labels_lists, strict=True)):
            problem = _stack([c], [lab])
            if isinstance(problem, str):
                raise PointFieldError(k, problem)
        raise AssertionError(f"unreachable: {stacked} but every annotation stacks on its own")
    coords, labels, offsets = stacked
    counts = np.diff(offsets)
    height = np.repeat(np.asarray(heights, dtype=np.float64), counts)
    width = np.repeat(np.asarray(widths, dtype=np.float64), counts)
    x, y = coords[:, 0], coords[:, 1]
    with np.errstate(invalid="ignore"):
        rules = (  # (which points pass, the problem of a point that does not)
            ((labels == 0) | (labels == 1), "label"),
            (np.isfinite(coords).all(axis=1), "finite"),
            ((coords == np.round(coords)).all(axis=1), "integral"),
            ((x >= 0) & (x < width) & (y >= 0) & (y < height), "inside"),
        )
    failing = [(np.flatnonzero(~ok), what) for ok, what in rules]
    failing = [(int(bad[0]), what) for bad, what in failing if len(bad)]
    if not failing:
        return coords, labels, offsets
    point = min(p for p, _ in failing)  # the first bad point; its annotation's first problem
    k = int(np.searchsorted(offsets, point, side="right")) - 1
    what = next(w for p, w in failing if np.searchsorted(offsets, p, side="right") - 1 == k)
    lo, hi = offsets[k], offsets[k + 1]
    if what == "label":
        bad = sorted(set(labels[lo:hi].tolist()) - {0.0, 1.0})
        message = f"point_labels must be 0 (background) or 1 (object), got {bad}"
    elif what == "finite":
        message = "point_coords are not all finite"
    elif what == "integral":
        c = coords[lo:hi]
        message = (
            "point_coords must be integer pixel indices (x = column, y = row), got "
            f"{c[(c != np.round(c)).any(axis=1)][0]}"
        )
    else:
        inside = rules[3][0][lo:hi]
        written = coords_lists[k][int(np.flatnonzero(~inside)[0])]  # as written, however large
        message = (
            f"point {list(written)} lies outside the {int(widths[k])}x{int(heights[k])} image "
            "(pixel indices must be in [0, width) x [0, height))"
        )
    raise PointFieldError(k, message)


def _stack(coords_lists: Sequence[Any], labels_lists: Sequence[Any]) -> tuple[np.ndarray, ...] | str:
    """The structural rules: (coords, labels, offsets) as in :func:`validate_points`, or the first
    problem in words (worded for a single annotation)."""
    for field, lists in (("point_coords", coords_lists), ("point_labels", labels_lists)):
        if not set(map(type, lists)) <= {list, tuple}:
            bad = next(v for v in lists if type(v) not in (list, tuple))
            if field == "point_coords":
                return _shape_problem(bad)
            return f"point_labels must be a list, got {bad!r}"
    points = list(chain.from_iterable(coords_lists))
    if not (set(map(type, points)) <= {list, tuple} and set(map(len, points)) <= {2}):
        return _shape_problem(coords_lists[0])
    num_coords = np.fromiter(map(len, coords_lists), np.int64, len(coords_lists))
    num_labels = np.fromiter(map(len, labels_lists), np.int64, len(labels_lists))
    if not np.array_equal(num_coords, num_labels):
        k = int(np.flatnonzero(num_coords != num_labels)[0])
        return f"{num_coords[k]} point_coords but {num_labels[k]} point_labels"
    values = list(chain.from_iterable(points))
    label_values = list(chain.from_iterable(labels_lists))
    for field, vals in (("point_coords", values), ("point_labels", label_values)):
        if not set(map(type, vals)) <= {int, float}:  # exact types first: the fast test
            bad = next((v for v in vals if not is_number(v)), None)
            if bad is not None:
                return f"{field} must hold JSON numbers, got {type(bad).__name__} {bad!r}"
    offsets = np.concatenate([[0], np.cumsum(num_coords)])
    return _floats(values).reshape(-1, 2), _floats(label_values), offsets


def _shape_problem(coords: Any) -> str:
    try:
        shape = np.shape(coords)
    except ValueError:  # ragged
        return "point_coords must be a list of [x, y]"
    return f"point_coords must be a list of [x, y], got shape {shape}"


def _floats(values: list[Any]) -> np.ndarray:
    """float64 array of JSON numbers; an integer beyond float64's range (10**400) becomes +-1e300,
    far outside any image, instead of an OverflowError."""
    try:
        return np.array(values, dtype=np.float64)
    except OverflowError:
        return np.array([v if abs(v) < 1e300 else math.copysign(1e300, v) for v in values], dtype=np.float64)
