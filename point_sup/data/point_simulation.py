"""Simulating P_N point annotations from instance masks (paper §3.1, §3.3), pixel-exactly and fast.

A P_N annotation of an object is its box plus N points sampled uniformly at random inside the box,
each labelled object (1) or background (0). Given a dataset with masks, this module samples the
points and reads the labels from the ground-truth mask *exactly as pycocotools rasterizes it*,
without rasterizing whole masks:

* **Polygons** — :func:`polygon_labels` re-implements the integer scan conversion of pycocotools'
  ``rleFrPoly`` (maskApi.c) for just the columns that hold a sampled point. ``rleFrPoly`` rounds
  vertices to a 5x grid, walks each edge one grid step at a time, and records a toggle of the
  mask wherever the walk crosses from grid column ``5X + 2`` to ``5X + 3`` (the centre line of
  pixel column X). The crossing of an edge with that line is computed in closed form with the same
  double-precision expressions as the C code, so a pixel is inside iff an odd number of toggles
  lie at or above it in its column, exactly as decoding the RLE would give. Parts are united.
* **RLE** (compressed or not) — :func:`rle_labels`: pixel (x, y) is element ``x * h + y`` of the
  column-major run sequence; a binary search in the cumulative run lengths finds its run, and odd
  runs are foreground. Compressed ``counts`` strings are decoded vectorized (:func:`decode_rle_counts`).

Conventions:

* Points are integer pixel indices ``[x, y]`` = [column, row] (Detectron2 PointSup's
  ``point_coords``); the dataset loader adds 0.5 to reach the pixel centre.
* Sampling rule (:func:`sampling_ranges`): the box ``[x, y, w, h]`` is clipped to the image, and
  points are drawn uniformly, with replacement, among the pixels whose *centres* lie in the
  clipped box (``x <= i + 0.5 < x + w``, same for rows). Unlike flooring a continuous uniform
  sample (Detectron2's script), every point the model is trained with (the centre) then lies
  inside the annotated box, and for integer boxes the two rules coincide. A box of positive
  size that holds no pixel centre along a dimension (thinner than a pixel) uses the pixel under
  its centre in that dimension. A box of zero area after clipping (w or h = 0, or entirely outside
  the image) gets no points (empty lists; the annotation is kept).
* Randomness: each annotation has its own stream derived from ``(seed, version, annotation id)``
  with a counter-based generator (SplitMix64), so results do not depend on the order in which
  annotations are processed or on the number of workers.
* Polygon parts with fewer than 3 vertices enclose no pixel and are skipped. (pycocotools would
  read a polygon whose *first* part has exactly 2 vertices as a box ``[x, y, w, h]``; that
  quirk is not reproduced.)
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import math
import multiprocessing
import multiprocessing.pool
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain, compress, repeat
from operator import contains, itemgetter
from typing import Any, Literal

import numpy as np
import orjson

from ..utils.file_io import atomic_write_bytes
from ..utils.process import die_with_parent, forking_workers, gc_paused
from .coco_json import CocoFormatError, CocoInstances, dumps_json, load_coco_instances, segmentation_kind

__all__ = [
    "SECONDS_PER_BOX",
    "SECONDS_PER_POINT",
    "SECONDS_PER_POLYGON_MASK",
    "AnnotationTime",
    "PointSamples",
    "SimulationStats",
    "add_label_noise",
    "annotation_keys",
    "annotation_time",
    "boundary_sq_distances",
    "check_simulation_options",
    "decode_rle_counts",
    "dumps_point_annotations",
    "keep_freed_memory",
    "make_worker_pool",
    "mask_region",
    "polygon_labels",
    "rle_labels",
    "sample_points",
    "sampling_ranges",
    "select_noisy_points",
    "set_point_fields",
    "simulate_point_annotations",
]

# Annotation-time model of the paper (§3.1, §3.3.3): box 7 s [41], each point 0.9 s, polygon mask
# 79.2 s [33] per object.
SECONDS_PER_BOX = 7.0
SECONDS_PER_POINT = 0.9
SECONDS_PER_POLYGON_MASK = 79.2

NoiseMode = Literal["random", "boundary"]
_SCALE = 5.0  # rleFrPoly's upsampling factor
_NO_DISTANCE = np.int64(2**62)  # squared distance of a point with no opposite-label pixel nearby


# --------------------------------------------------------------------------------------------
# Randomness: counter-based, per annotation
# --------------------------------------------------------------------------------------------

_GAMMA = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64's increment (golden ratio)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function (a bijection of uint64 with full avalanche)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def annotation_keys(seed: int, version: int, ann_ids: np.ndarray | Sequence[int]) -> np.ndarray:
    """The (uint64) key of each annotation's random stream, a hash of (seed, version, id)."""
    if not (0 <= seed < 2**64 and 0 <= version < 2**64):
        raise ValueError(f"seed and version must be in [0, 2**64), got {seed}, {version}")
    ids = np.asarray(ann_ids, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = _mix64(np.array([seed], dtype=np.uint64) + _GAMMA)
        h = _mix64(h + np.uint64(version) + _GAMMA)
        return _mix64(h + ids + _GAMMA)


def _uniform01(keys: np.ndarray, n: int) -> np.ndarray:
    """(len(keys), n) float64 in [0, 1): the first n outputs of SplitMix64 seeded with each key."""
    steps = np.arange(1, n + 1, dtype=np.uint64) * _GAMMA
    with np.errstate(over="ignore"):
        r = _mix64(keys[:, None] + steps[None, :])
    return (r >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def sampling_ranges(
    bboxes: np.ndarray, heights: np.ndarray, widths: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel ranges to sample from, for boxes ``[x, y, w, h]`` in images of the given sizes.

    Returns:
        ranges: (A, 4) int64 ``[col0, col1, row0, row1]``, end exclusive: the pixels whose centres
            lie in the box clipped to the image (see the module docstring for thin boxes).
            Zero-area boxes get an empty range (``col0 == col1``).
        clipped: (A,) bool, the box extends beyond the image (and keeps some area inside).
        empty: (A,) bool, zero area after clipping: no points.
    """
    b = np.asarray(bboxes, dtype=np.float64).reshape(-1, 4)
    H = np.asarray(heights, dtype=np.float64)
    W = np.asarray(widths, dtype=np.float64)
    x0, y0 = b[:, 0], b[:, 1]
    x1, y1 = x0 + b[:, 2], y0 + b[:, 3]
    cx0, cx1 = np.clip(x0, 0, W), np.clip(x1, 0, W)
    cy0, cy1 = np.clip(y0, 0, H), np.clip(y1, 0, H)
    empty = (cx1 <= cx0) | (cy1 <= cy0)
    clipped = ~empty & ((x0 < 0) | (y0 < 0) | (x1 > W) | (y1 > H))

    def axis(lo: np.ndarray, hi: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Pixel i is taken iff lo <= i + 0.5 < hi.
        a = np.ceil(lo - 0.5)
        e = np.ceil(hi - 0.5)
        thin = e <= a  # no centre inside: the pixel under the box centre
        mid = np.minimum(np.floor((lo + hi) / 2), size - 1)
        return np.where(thin, mid, a), np.where(thin, mid + 1, e)

    c0, c1 = axis(cx0, cx1, W)
    r0, r1 = axis(cy0, cy1, H)
    ranges = np.stack([c0, c1, r0, r1], axis=1)
    ranges[empty] = 0
    return ranges.astype(np.int64), clipped, empty


def sample_points(keys: np.ndarray, ranges: np.ndarray, num_points: int) -> np.ndarray:
    """``num_points`` pixels per annotation, uniform in its range, from its random stream.

    Returns (A, num_points, 2) int64 ``[x, y]``; rows of empty ranges are meaningless (zeros).
    The uniform integer is ``floor(u * n)`` with u a 53-bit uniform float: its deviation from
    exact uniformity is below n / 2**53.
    """
    u = _uniform01(np.asarray(keys, dtype=np.uint64), 2 * num_points).reshape(-1, num_points, 2)
    lo = ranges[:, [0, 2]][:, None, :]
    n = np.maximum(ranges[:, [1, 3]] - ranges[:, [0, 2]], 1)[:, None, :]
    return lo + np.minimum(np.floor(u * n).astype(np.int64), n - 1)


# --------------------------------------------------------------------------------------------
# Exact polygon labels: rleFrPoly's scan conversion, for given columns only
# --------------------------------------------------------------------------------------------


@dataclass
class _Edges:
    """Polygon edges on rleFrPoly's 5x grid, normalized as the C code does (``flip``)."""

    xs: np.ndarray  # int64 start, after the flip
    ys: np.ndarray
    xe: np.ndarray
    ye: np.ndarray
    shallow: np.ndarray  # dx >= dy: the walk steps one grid column at a time
    s: np.ndarray  # slope exactly as in C: (ye-ys)/dx if shallow else (xe-xs)/dy
    part: np.ndarray  # part index of each edge


def _edge_ends(coords: np.ndarray, part_sizes: np.ndarray) -> tuple[np.ndarray, ...]:
    """Start and end ``(xs, ys, xe, ye)`` of every edge on rleFrPoly's 5x grid (not flipped)."""
    # x[j] = (int)(scale * xy[2j] + .5): C's cast truncates toward zero.
    g = np.trunc(_SCALE * coords + 0.5).astype(np.int64)
    xs, ys = g[:, 0], g[:, 1]
    xe, ye = np.empty_like(xs), np.empty_like(ys)
    xe[:-1], ye[:-1] = xs[1:], ys[1:]
    last = np.cumsum(part_sizes) - 1
    xe[last], ye[last] = xs[last - part_sizes + 1], ys[last - part_sizes + 1]  # parts close
    return xs, ys, xe, ye


def _edges(coords: np.ndarray, part_sizes: np.ndarray) -> _Edges:
    return _normalized_edges(
        *_edge_ends(coords, part_sizes), np.repeat(np.arange(len(part_sizes)), part_sizes)
    )


def _normalized_edges(
    xs: np.ndarray, ys: np.ndarray, xe: np.ndarray, ye: np.ndarray, part: np.ndarray
) -> _Edges:
    dx, dy = np.abs(xe - xs), np.abs(ye - ys)
    shallow = dx >= dy
    flip = (shallow & (xs > xe)) | (~shallow & (ys > ye))
    xs, xe = np.where(flip, xe, xs), np.where(flip, xs, xe)
    ys, ye = np.where(flip, ye, ys), np.where(flip, ys, ye)
    with np.errstate(divide="ignore", invalid="ignore"):
        # dx == dy == 0 gives NaN as in C; such a one-point walk never changes column, so unused.
        s = np.where(shallow, (ye - ys) / dx, (xe - xs) / np.where(shallow, 1, dy))
    return _Edges(xs, ys, xe, ye, shallow, s, part)


def _crossing_rows(e: _Edges, edge_idx: np.ndarray, cols: np.ndarray, height: np.ndarray) -> np.ndarray:
    """Row of the toggle that edge ``edge_idx[k]`` puts into pixel column ``cols[k]``.

    The caller guarantees that the edge's walk crosses from grid column ``c = 5X + 2`` to
    ``c + 1``. The walk point before/after the crossing is found in closed form; the toggle row is
    rleFrPoly's ``ceil(clip((min(v, v') + .5) / 5 - .5, 0, h))``.
    """
    xs, ys, s = e.xs[edge_idx], e.ys[edge_idx], e.s[edge_idx]
    c = _SCALE * cols + 2  # float, exact
    shallow = e.shallow[edge_idx]
    vmin = np.empty(len(edge_idx), dtype=np.float64)

    # Shallow: u(t) = xs + t, v(t) = (int)(ys + s*t + .5); the crossing is between t and t + 1.
    sh = np.flatnonzero(shallow)
    if len(sh):
        t = c[sh] - xs[sh]
        v0 = np.trunc(ys[sh] + s[sh] * t + 0.5)
        v1 = np.trunc(ys[sh] + s[sh] * (t + 1) + 0.5)
        vmin[sh] = np.minimum(v0, v1)

    # Steep: v(t) = ys + t, u(t) = (int)(xs + s*t + .5) is monotone with steps of 0 or 1; find
    # the t with {u(t), u(t+1)} = {c, c+1} by testing the candidates around the analytic solution
    # with the C expression itself (so the choice is exact, the estimate only needs to be close).
    st = np.flatnonzero(~shallow)
    if len(st):
        xs_, s_, c_ = xs[st], s[st], c[st]
        est = np.floor((c_ + 0.5 - xs_) / s_)
        found = np.full(len(st), np.nan)
        todo = np.arange(len(st))  # candidates are tried in order, each on the edges still open
        for d in (0.0, -1.0, 1.0, -2.0, 2.0):
            x, sl, cc = xs_[todo], s_[todo], c_[todo]
            t = est[todo] + d
            u0 = np.trunc(x + sl * t + 0.5)
            u1 = np.trunc(x + sl * (t + 1) + 0.5)
            ok = (np.minimum(u0, u1) == cc) & (np.maximum(u0, u1) == cc + 1)
            found[todo[ok]] = t[ok]
            todo = todo[~ok]
            if not len(todo):
                break
        if len(todo):  # cannot happen for a crossing edge; guard against silent errors
            raise AssertionError("internal error: polygon edge crossing not found")
        vmin[st] = ys[st] + found

    yd = (vmin + 0.5) / _SCALE - 0.5
    return np.ceil(np.clip(yd, 0, height)).astype(np.int64)


def _edge_query_pairs(
    e: _Edges,
    part_owner: np.ndarray,
    q_owner_start: np.ndarray,
    q_owner_count: np.ndarray,
    q_cols: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """All (edge, query) pairs of the same owner where the edge's walk crosses the query's column.

    Queries are grouped by owner: owner o holds queries ``q_owner_start[o] + range(q_owner_count[o])``.
    An edge whose walk spans grid columns ``lo..hi`` crosses the centre line ``5X + 2 -> 5X + 3`` of
    exactly the pixel columns ``ceil((lo - 2) / 5) <= X <= floor((hi - 3) / 5)``; with the queries
    sorted by (owner, column), those form one slice found by binary search, so only real
    crossings are ever enumerated.
    """
    q_owner = np.repeat(np.arange(len(q_owner_count)), q_owner_count)
    big = np.int64(1) << 32  # > any column index
    key = q_owner * big + q_cols
    order = np.argsort(key, kind="stable")
    skey = key[order]
    edge_owner = part_owner[e.part] * big
    lo = np.minimum(e.xs, e.xe)
    hi = np.maximum(e.xs, e.xe)
    x_first = np.clip(-((2 - lo) // 5), 0, big - 1)  # ceil((lo - 2) / 5)
    x_last = np.clip((hi - 3) // 5, -1, big - 1)
    a = np.searchsorted(skey, edge_owner + x_first, side="left")
    b = np.searchsorted(skey, edge_owner + x_last, side="right")
    counts = np.maximum(b - a, 0)
    edge_idx = np.repeat(np.arange(len(e.xs)), counts)
    offsets = np.arange(len(edge_idx)) - np.repeat(np.cumsum(counts) - counts, counts)
    return edge_idx, order[a[edge_idx] + offsets]


def _polygon_point_labels_batch(
    coords: np.ndarray,
    part_sizes: np.ndarray,
    part_owner: np.ndarray,
    heights: np.ndarray,
    points: np.ndarray,
    point_owner_start: np.ndarray,
    point_owner_count: np.ndarray,
) -> np.ndarray:
    """Labels of points of many polygon objects at once (owners = objects)."""
    num_q = len(points)
    if num_q == 0 or len(part_sizes) == 0:
        return np.zeros(num_q, dtype=np.uint8)
    e = _edges(coords, part_sizes)
    qx, qy = points[:, 0], points[:, 1]
    edge_idx, q_idx = _edge_query_pairs(e, part_owner, point_owner_start, point_owner_count, qx)
    q_owner = np.repeat(np.arange(len(point_owner_count)), point_owner_count)
    rows = _crossing_rows(e, edge_idx, qx[q_idx], heights[q_owner[q_idx]])
    # Toggles at or above the pixel's row count (column-major linear order within the column).
    hits = rows <= qy[q_idx]
    # Parity per (part, query), then union over the parts of the object.
    key = e.part[edge_idx[hits]] * num_q + q_idx[hits]
    uniq, counts = np.unique(key, return_counts=True)
    inside_keys = uniq[counts % 2 == 1]
    labels = np.zeros(num_q, dtype=np.uint8)
    labels[inside_keys % num_q] = 1
    return labels


def polygon_labels(
    polygons: Sequence[Sequence[float]], height: int, width: int, points: np.ndarray
) -> np.ndarray:
    """Mask values at integer pixels ``points`` ((P, 2) ``[x, y]``) of a (multi-part) polygon.

    Identical to ``pycocotools.mask.decode(merge(frPyObjects(polygons, height, width)))[y, x]``
    for parts of at least 3 vertices (smaller parts are ignored). Points must lie in the image.
    """
    pts = np.asarray(points, dtype=np.int64).reshape(-1, 2)
    parts = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polygons if len(p) >= 6]
    if not parts or not len(pts):
        return np.zeros(len(pts), dtype=np.uint8)
    _check_in_image(pts, height, width)
    coords = np.concatenate(parts)
    sizes = np.array([len(p) for p in parts], dtype=np.int64)
    return _polygon_point_labels_batch(
        coords,
        sizes,
        np.zeros(len(parts), dtype=np.int64),
        np.array([height]),
        pts,
        np.array([0]),
        np.array([len(pts)]),
    )


def _check_in_image(pts: np.ndarray, height: int, width: int) -> None:
    if len(pts) and ((pts < 0).any() or (pts[:, 0] >= width).any() or (pts[:, 1] >= height).any()):
        raise ValueError(f"points must be pixel indices inside the {width}x{height} image")


# --------------------------------------------------------------------------------------------
# Exact RLE labels
# --------------------------------------------------------------------------------------------


def decode_rle_counts(counts: str | bytes) -> np.ndarray:
    """Run lengths (int64) of a compressed COCO RLE string, as pycocotools' ``rleFrString``.

    Each count is a little-endian sequence of 5-bit groups stored in chars ``48 + g``, bit 0x20
    meaning "more groups follow" and bit 0x10 of the last group the sign; from the third count on,
    the value is a difference to the count two places before. Raises ValueError if malformed.
    """
    raw = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    c = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48
    if len(c) == 0:
        return np.zeros(0, dtype=np.int64)
    if c.min() < 0 or c.max() > 63:
        raise ValueError("compressed RLE counts contain characters outside '0'..'o'")
    more = (c & 0x20) != 0
    if more[-1]:
        raise ValueError("compressed RLE counts end in the middle of a number")
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    nchunks = ends - starts + 1
    if nchunks.max() > 7:
        raise ValueError("compressed RLE count too large")
    k = np.arange(len(c)) - np.repeat(starts, nchunks)
    x = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    neg = (c[ends] & 0x10) != 0
    x[neg] |= -(np.int64(1) << (5 * nchunks[neg]))
    # cnts[m] = x[m] + cnts[m-2] for m > 2 (cnts[2] itself is not a difference), as uint32.
    out = x.copy()
    out[3::2] = np.cumsum(x[1::2])[1:]
    out[4::2] = np.cumsum(x[2::2])[1:]
    return out & 0xFFFFFFFF


def _rle_run_ends(segm: dict[str, Any]) -> np.ndarray:
    counts = segm["counts"]
    runs = np.asarray(counts, dtype=np.int64) if isinstance(counts, list) else decode_rle_counts(counts)
    return np.cumsum(runs)


def rle_labels(segm: dict[str, Any], points: np.ndarray) -> np.ndarray:
    """Mask values at integer pixels ``points`` ((P, 2) ``[x, y]``) of a COCO RLE (either form).

    Identical to ``pycocotools.mask.decode(rle)[y, x]`` (uncompressed RLE first converted with
    ``frPyObjects``, as ``COCO.annToMask`` does).
    """
    h, w = (int(v) for v in segm["size"])
    pts = np.asarray(points, dtype=np.int64).reshape(-1, 2)
    _check_in_image(pts, h, w)
    return _rle_labels_at(_rle_run_ends(segm), h, pts)


def _rle_labels_at(run_ends: np.ndarray, h: int, pts: np.ndarray) -> np.ndarray:
    idx = pts[:, 0] * h + pts[:, 1]
    # Run r covers [ends[r-1], ends[r]); runs with odd index are foreground.
    return (np.searchsorted(run_ends, idx, side="right") & 1).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Mask regions and boundary distances (for boundary noise)
# --------------------------------------------------------------------------------------------


def mask_region(
    segm: Any, height: int, width: int, cols: tuple[int, int], rows: tuple[int, int]
) -> np.ndarray:
    """The mask over pixel columns ``cols[0]:cols[1]`` and rows ``rows[0]:rows[1]`` (end exclusive).

    Returns a (rows, cols) uint8 array equal to the same crop of pycocotools' full-image mask, at a
    cost proportional to the region (and the polygon's edges), not to the image.
    """
    if segmentation_kind(segm) in ("rle", "compressed_rle"):
        return _rle_region(_rle_run_ends(segm), height, cols, rows)
    parts = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in segm if len(p) >= 6]
    coords = np.concatenate(parts) if parts else np.zeros((0, 2))
    return _polygon_region(coords, np.array([len(p) for p in parts], dtype=np.int64), height, cols, rows)


def _rle_region(
    run_ends: np.ndarray, height: int, cols: tuple[int, int], rows: tuple[int, int]
) -> np.ndarray:
    (c0, c1), (r0, r1) = cols, rows
    xx, yy = np.meshgrid(np.arange(c0, c1), np.arange(r0, r1))
    pts = np.stack([xx.ravel(), yy.ravel()], axis=1)
    return _rle_labels_at(run_ends, height, pts).reshape(max(r1 - r0, 0), max(c1 - c0, 0))


def _polygon_region(
    coords: np.ndarray, part_sizes: np.ndarray, height: int, cols: tuple[int, int], rows: tuple[int, int]
) -> np.ndarray:
    (c0, c1), (r0, r1) = cols, rows
    nc, nr = c1 - c0, r1 - r0
    if nc <= 0 or nr <= 0 or not len(part_sizes):
        return np.zeros((max(nr, 0), max(nc, 0)), dtype=np.uint8)
    e = _edges(coords, part_sizes)
    q_cols = np.arange(c0, c1)
    one_owner = np.zeros(len(part_sizes), dtype=np.int64)
    edge_idx, q_idx = _edge_query_pairs(e, one_owner, np.array([0]), np.array([nc]), q_cols)
    rows_ = _crossing_rows(e, edge_idx, q_cols[q_idx], np.full(len(edge_idx), height))
    # Per part, toggles accumulate down each column; the parity is that part's mask.
    toggles = np.zeros((len(part_sizes), nr + 1, nc), dtype=np.int64)
    np.add.at(toggles, (e.part[edge_idx], np.clip(rows_ - r0, 0, nr), q_idx), 1)
    inside = (np.cumsum(toggles, axis=1)[:, :nr] & 1).any(axis=0)
    return inside.astype(np.uint8)


def boundary_sq_distances(region: np.ndarray, origin: tuple[int, int], points: np.ndarray) -> np.ndarray:
    """Squared distance from each point to the nearest region pixel of the other label.

    ``region`` is a mask crop whose top-left pixel is ``origin = (col, row)``; ``points`` are
    (P, 2) ``[x, y]`` inside it. Distances are between pixel centres, in pixels squared (int64);
    :data:`_NO_DISTANCE` where the region holds no pixel of the other label.
    """
    out = np.full(len(points), _NO_DISTANCE, dtype=np.int64)
    fg = np.argwhere(region.astype(bool))
    bg = np.argwhere(~region.astype(bool))
    for i, (x, y) in enumerate(np.asarray(points)):
        r, c = y - origin[1], x - origin[0]
        other = bg if region[r, c] else fg
        if len(other):
            d = (other[:, 0] - r) ** 2 + (other[:, 1] - c) ** 2
            out[i] = d.min()
    return out


def select_noisy_points(
    num_flips: int, mode: NoiseMode, rng: np.random.Generator, sq_dist: np.ndarray
) -> np.ndarray:
    """Sorted indices of the ``num_flips`` points (out of ``len(sq_dist)``) whose labels are flipped.

    ``random``: uniformly without replacement (``sq_dist`` only gives the count). ``boundary``:
    the points with the smallest squared boundary distance, ties broken at random.
    """
    n = len(sq_dist)
    if mode == "random":
        return np.sort(rng.choice(n, size=num_flips, replace=False))
    order = np.lexsort((rng.random(n), sq_dist))
    return np.sort(order[:num_flips])


# --------------------------------------------------------------------------------------------
# The dataset-level simulator
# --------------------------------------------------------------------------------------------


@dataclass
class PointSamples:
    """Simulated points of one version of a dataset, aligned with its annotation list.

    ``coords[i]`` ((N, 2) ``[x, y]``) and ``labels[i]`` ((N,) 0/1) are meaningful where
    ``has_points[i]``; ``flipped`` are flat indices into ``labels.ravel()`` changed by noise.
    """

    coords: np.ndarray  # (A, N, 2) int64
    labels: np.ndarray  # (A, N) uint8
    has_points: np.ndarray  # (A,) bool
    flipped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def point_lists(self, i: int) -> tuple[list[list[int]], list[int]]:
        if not self.has_points[i]:
            return [], []
        return self.coords[i].tolist(), self.labels[i].tolist()


@dataclass
class SimulationStats:
    """Counts for the closing summary of a simulation run."""

    num_annotations: int = 0
    num_with_points: int = 0
    num_clipped: int = 0
    num_zero_area: int = 0
    num_polygon: int = 0
    num_rle: int = 0
    num_crowd: int = 0
    num_skipped_parts: int = 0  # polygon parts with fewer than 3 vertices
    num_flipped: list[int] = field(default_factory=list)  # per version


_POLYGON, _RLE = 0, 1
_LOOKAHEAD = 8  # chunks in flight to the workers


def _image_sizes(instances: CocoInstances) -> tuple[dict[Any, int], np.ndarray]:
    """Image id -> row of the (images, 2) int64 array of ``[height, width]``."""
    index = {iid: k for k, iid in enumerate(instances.images)}
    hw = np.array([(img["height"], img["width"]) for img in instances.images.values()], dtype=np.int64)
    return index, hw.reshape(-1, 2)


def _read_chunk(
    instances: CocoInstances,
    start: int,
    stop: int,
    drop_segmentation: bool,
    image_sizes: tuple[dict[Any, int], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Everything the computation needs about annotations ``start:stop``, as compact arrays.

    Runs in the main process: workers then never touch the loaded dataset (reading Python floats
    in a forked worker would copy every page holding them). Each field is read for the whole chunk
    with C-level iteration (``map``/``itemgetter``: after the first pass the chunk's objects are
    in cache), and all polygon coordinates of the chunk are unboxed by a single ``np.fromiter``
    over the chained parts. With ``drop_segmentation`` each segmentation is freed once read.

    Bad polygon coordinates are not raised here but recorded as ``error`` = (position in the
    chunk, error): the worker raises it after the RLE checks of the annotations before it, so that
    the error reported is the first in file order.
    """
    chunk = instances.annotations[start:stop]
    a = len(chunk)
    index, sizes = image_sizes if image_sizes is not None else _image_sizes(instances)
    hw = sizes[np.fromiter(map(index.__getitem__, map(itemgetter("image_id"), chunk)), np.int64, a)]
    boxes = np.fromiter(chain.from_iterable(map(itemgetter("bbox"), chunk)), np.float64, 4 * a)
    crowd = list(map(dict.get, chunk, repeat("iscrowd"), repeat(0))).count(1)
    if drop_segmentation:
        segms = list(map(dict.pop, chunk, repeat("segmentation")))
    else:
        segms = list(map(itemgetter("segmentation"), chunk))
    is_polygon = np.fromiter(map(isinstance, segms, repeat(list)), bool, a)
    kind = np.where(is_polygon, _POLYGON, _RLE).astype(np.int8)
    poly = np.flatnonzero(is_polygon)
    polygons = list(compress(segms, is_polygon.tolist())) if len(poly) < a else segms
    parts = list(chain.from_iterable(polygons))
    part_len = np.fromiter(map(len, parts), np.int64, len(parts))
    part_ann = np.repeat(poly, np.fromiter(map(len, polygons), np.int64, len(polygons)))
    error = None
    # Coordinates must be JSON numbers: numpy would read "3.5" or true as 3.5 or 1.0, and a part of
    # nested [x, y] pairs would look like a part under 3 vertices. One pass at C speed.
    if not set(map(type, chain.from_iterable(parts))) <= {int, float}:
        bad = next(k for k, part in enumerate(parts) if not set(map(type, part)) <= {int, float})
        error = int(part_ann[bad])
    keep = part_len >= 6  # at least 3 vertices
    kept = list(compress(parts, keep.tolist())) if not keep.all() else parts
    part_len, owners = part_len[keep], part_ann[keep]
    try:
        coords = np.fromiter(chain.from_iterable(kept), np.float64, int(part_len.sum()))
        finite = np.isfinite(coords)
        if not finite.all():  # inf/NaN can come from a Python dict (or the standard JSON parser)
            bad = np.searchsorted(np.cumsum(part_len), np.flatnonzero(~finite)[0], side="right")
            error = int(owners[bad]) if error is None else min(error, int(owners[bad]))
    except (TypeError, ValueError):  # a non-number (found above): the first bad part may be earlier
        coords = np.zeros(0)
        first = next(int(j) for j, part in zip(owners, kept, strict=True) if not _finite_numbers(part))
        error = first if error is None else min(error, first)
    rles = {}
    for j in np.flatnonzero(kind == _RLE).tolist():
        if error is not None and j > error:
            break  # never looked at
        counts = segms[j]["counts"]
        rles[j] = (
            np.asarray(counts, dtype=np.int64) if type(counts) is list else counts,
            chunk[j].get("id"),
            chunk[j].get("image_id"),
        )
    return {
        "start": start,
        "ids": np.fromiter(map(itemgetter("id"), chunk), np.uint64, a),
        "heights": hw[:, 0],
        "widths": hw[:, 1],
        "bboxes": boxes.reshape(-1, 4),
        "kind": kind,
        "coords": coords.reshape(-1, 2),
        "sizes": part_len // 2,
        "owners": owners,
        "rles": rles,
        "skipped_parts": int(len(keep) - keep.sum()),
        "crowd": crowd,
        "source": instances.source,
        "error": None if error is None else (error, _bad_coordinates(instances, chunk[error], segms[error])),
    }


def _finite_number(v: Any) -> bool:
    """Whether ``v`` is a finite JSON number (bool, a subclass of int, is not one)."""
    return type(v) in (int, float) and math.isfinite(v)


def _finite_numbers(part: list[Any]) -> bool:
    """Whether a polygon part holds finite JSON numbers only."""
    return all(map(_finite_number, part))


def _bad_coordinates(instances: CocoInstances, ann: dict[str, Any], segm: list[Any]) -> CocoFormatError:
    """The error of an annotation whose polygon coordinates ``segm`` are not all finite JSON numbers."""
    detail = "polygon coordinates must be finite numbers"
    for part in segm:
        culprit = next((v for v in part if not _finite_number(v)), None)
        if isinstance(culprit, list):
            detail += f" in flat lists [x0, y0, x1, y1, ...], got a part of {len(part)} [x, y] pairs"
            break
        if culprit is not None:
            detail += f", got {type(culprit).__name__} {culprit!r}"
            break
    return CocoFormatError(
        detail, source=instances.source, image_id=ann.get("image_id"), annotation_id=ann.get("id")
    )


def _compute_chunk(
    c: dict[str, Any], num_points: int, seed: int, versions: Sequence[int], boundary: bool
) -> dict[str, Any]:
    """Points, labels (and boundary distances) of one chunk, for each version (worker side)."""
    N = num_points
    heights, widths, kind = c["heights"], c["widths"], c["kind"]
    ranges, clipped, empty = sampling_ranges(c["bboxes"], heights, widths)
    has = ~empty
    rle_ends: dict[int, np.ndarray] = {}
    for j, (counts, ann_id, image_id) in c["rles"].items():  # in file order
        try:
            runs = counts if isinstance(counts, np.ndarray) else decode_rle_counts(counts)
        except ValueError as e:
            raise CocoFormatError(
                f"malformed compressed RLE: {e}",
                source=c["source"],
                image_id=image_id,
                annotation_id=ann_id,
            ) from None
        ends = np.cumsum(runs)
        total = int(ends[-1]) if len(ends) else 0
        if total != heights[j] * widths[j]:
            raise CocoFormatError(
                f"RLE counts sum to {total}, expected height * width = {heights[j] * widths[j]}",
                source=c["source"],
                image_id=image_id,
                annotation_id=ann_id,
            )
        rle_ends[j] = ends
    if c["error"] is not None:  # bad polygon coordinates, after every RLE before them
        raise c["error"][1]

    poly = np.flatnonzero((kind == _POLYGON) & has)
    q_counts = np.where((kind == _POLYGON) & has, N, 0)
    q_starts = np.cumsum(q_counts) - q_counts
    part_start = np.cumsum(c["sizes"]) - c["sizes"]
    out = []
    for version in versions:
        pts = sample_points(annotation_keys(seed, version, c["ids"]), ranges, N)  # (a, N, 2)
        labels = np.zeros(pts.shape[:2], dtype=np.uint8)
        if len(poly):
            flat = pts[poly].reshape(-1, 2)
            lab = _polygon_point_labels_batch(
                c["coords"], c["sizes"], c["owners"], heights, flat, q_starts, q_counts
            )
            labels[poly] = lab.reshape(-1, N)
        for j, ends in rle_ends.items():
            if has[j]:
                labels[j] = _rle_labels_at(ends, int(heights[j]), pts[j])
        dist = np.zeros((0, N), dtype=np.int64)
        if boundary:
            dist = np.full(pts.shape[:2], _NO_DISTANCE, dtype=np.int64)
            for j in np.flatnonzero(has):
                H, W = int(heights[j]), int(widths[j])
                c0, c1, r0, r1 = (int(v) for v in ranges[j])
                # The box's pixels plus a one-pixel ring: when the mask lies inside its box, the
                # nearest pixel of the other label is always within this region.
                cols, rows = (max(c0 - 1, 0), min(c1 + 1, W)), (max(r0 - 1, 0), min(r1 + 1, H))
                if kind[j] == _RLE:
                    region = _rle_region(rle_ends[j], H, cols, rows)
                else:
                    mine = np.flatnonzero(c["owners"] == j)
                    sizes = c["sizes"][mine]
                    sz = c["sizes"]
                    vidx = [np.arange(part_start[p], part_start[p] + sz[p]) for p in mine]
                    coords = c["coords"][np.concatenate(vidx)] if vidx else np.zeros((0, 2))
                    region = _polygon_region(coords, sizes, H, cols, rows)
                dist[j] = boundary_sq_distances(region, (cols[0], rows[0]), pts[j])
        out.append((pts, labels, dist))
    return {
        "versions": out,
        "has": has,
        "clipped": int(clipped.sum()),
        "polygon": int((kind == _POLYGON).sum()),
        "crowd": c["crowd"],
        "skipped_parts": c["skipped_parts"],
    }


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Let glibc's malloc reuse freed memory in this process instead of giving it back at once.

    The simulator allocates and frees the same large temporary arrays for every chunk. By default
    glibc serves each allocation above 128 KiB with a fresh ``mmap`` and unmaps it on free, so every
    chunk pays again for the page faults that zero-fill its memory: about a third of a worker's CPU
    time (and 0.5 s of system time per worker on the benchmark). With higher mmap and trim
    thresholds, freed blocks stay in the heap for the next chunk; the process keeps about its peak
    working set. Called in the worker processes of :func:`make_worker_pool` (the main process
    allocates little per chunk and gained nothing measurable). Returns False where libc has no
    ``mallopt`` (not glibc).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20) & mallopt(_M_TRIM_THRESHOLD, 256 << 20))


def make_worker_pool(workers: int) -> multiprocessing.pool.Pool:
    """A pool of ``workers`` forked processes for :func:`simulate_point_annotations`.

    Fork is used (the workers need only this module's functions; tasks carry plain arrays); each
    worker calls :func:`keep_freed_memory` and dies with the main process, however that ends. Use
    it as a context manager, and create it before loading a large dataset.
    """
    with forking_workers():
        return multiprocessing.get_context("fork").Pool(
            workers, initializer=_init_worker, initargs=(os.getpid(),)
        )


def _init_worker(parent_pid: int) -> None:
    die_with_parent(parent_pid)  # also under SIGKILL of the main process
    keep_freed_memory()


def check_simulation_options(num_points: int, noise_rate: float, noise_mode: str) -> bool:
    """ValueError for impossible options; True when boundary distances are needed (boundary noise)."""
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}")
    if not 0.0 <= noise_rate <= 1.0:
        raise ValueError(f"noise_rate must be in [0, 1], got {noise_rate}")
    if noise_mode not in ("random", "boundary"):
        raise ValueError(f"noise_mode must be 'random' or 'boundary', got {noise_mode!r}")
    return noise_rate > 0 and noise_mode == "boundary"


def simulate_point_annotations(
    instances: CocoInstances,
    *,
    num_points: int = 10,
    seed: int = 0,
    versions: Sequence[int] = (0,),
    noise_rate: float = 0.0,
    noise_mode: NoiseMode = "random",
    workers: int = 1,
    pool: multiprocessing.pool.Pool | None = None,
    chunk_size: int = 2048,
    drop_segmentation: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[PointSamples], SimulationStats]:
    """Simulate P_N annotations for every annotation of a validated dataset.

    Args:
        instances: from :func:`point_sup.data.coco_json.load_coco_instances`.
        num_points: N, points per object.
        seed, versions: version ``v`` of seed ``s`` is the same whichever other versions are
            requested (the paper's sensitivity study uses 5 versions).
        noise_rate: fraction R of all points whose label is flipped, per version: exactly
            ``floor(R * T + 0.5)`` of the T points of the dataset.
        noise_mode: ``random`` (uniformly chosen points) or ``boundary`` (the points closest to
            the object boundary: smallest distance from the pixel centre to the nearest pixel centre
            of the other label within the box plus a one-pixel ring; ties broken at random).
        workers: processes (fork); results are identical for any value. The main process reads
            the annotations into arrays while the workers label earlier chunks.
        pool: a ``multiprocessing`` pool to use instead of forking ``workers`` processes here.
            Create it (:func:`make_worker_pool`) *before* loading the dataset: workers forked
            after it share its pages, and every page the main process then touches (reading the
            annotations does) is copied, up to doubling the memory.
        chunk_size: annotations per task (bounds the temporary memory of each worker).
        drop_segmentation: remove each annotation's ``segmentation`` from ``instances`` once
            read (what the output wants anyway; frees the masks early). Otherwise unmodified.
        progress: called with the number of annotations finished, chunk by chunk.

    Returns:
        One :class:`PointSamples` per version, and counts for the closing summary.

    Raises:
        CocoFormatError: a missing segmentation, bad polygon coordinates or RLE data, naming the
            first such annotation in file order (the same for any number of workers).
    """
    boundary = check_simulation_options(num_points, noise_rate, noise_mode)
    versions = list(versions)
    anns = instances.annotations
    A = len(anns)
    if not all(map(contains, anns, repeat("segmentation"))):  # checked before anything is dropped
        ann = next(ann for ann in anns if "segmentation" not in ann)
        raise CocoFormatError(
            "no 'segmentation' (a mask is needed to label points)",
            source=instances.source,
            image_id=ann.get("image_id"),
            annotation_id=ann.get("id"),
        )
    image_sizes = _image_sizes(instances)
    bounds = [(s, min(s + chunk_size, A)) for s in range(0, A, chunk_size)]
    args = (num_points, seed, versions, boundary)
    results: list[dict[str, Any]] = []

    def collect(res: dict[str, Any]) -> None:
        results.append(res)
        if progress:
            progress(len(res["has"]))

    with gc_paused(), contextlib.ExitStack() as stack:
        if pool is None and workers > 1 and len(bounds) > 1:
            pool = stack.enter_context(make_worker_pool(min(workers, len(bounds))))
        if pool is not None:
            pending: collections.deque = collections.deque()
            try:
                for s, e in bounds:
                    chunk = _read_chunk(instances, s, e, drop_segmentation, image_sizes)
                    pending.append(pool.apply_async(_compute_chunk, (chunk, *args)))
                    if chunk["error"] is not None:
                        break  # raised by that chunk's task, after any error of an earlier one
                    while len(pending) > _LOOKAHEAD:  # bounds the chunks held in memory
                        collect(pending.popleft().get())
                # Collected in file order: the first error raised is the first in the file.
                while pending:
                    collect(pending.popleft().get())
            finally:
                for task in pending:  # after an error: no task of ours is left running
                    task.wait()
        else:
            for s, e in bounds:
                collect(_compute_chunk(_read_chunk(instances, s, e, drop_segmentation, image_sizes), *args))

    has = np.concatenate([r["has"] for r in results]) if results else np.zeros(0, dtype=bool)
    num_polygon = sum(r["polygon"] for r in results)
    stats = SimulationStats(
        num_annotations=A,
        num_with_points=int(has.sum()),
        num_clipped=sum(r["clipped"] for r in results),
        num_zero_area=int((~has).sum()),
        num_polygon=num_polygon,
        num_rle=A - num_polygon,
        num_crowd=sum(r["crowd"] for r in results),
        num_skipped_parts=sum(r["skipped_parts"] for r in results),
    )
    samples = []
    for k, version in enumerate(versions):
        if results:
            coords = np.concatenate([r["versions"][k][0] for r in results])
            labels = np.concatenate([r["versions"][k][1] for r in results])
            dist = np.concatenate([r["versions"][k][2] for r in results]) if boundary else None
        else:
            coords = np.zeros((0, num_points, 2), dtype=np.int64)
            labels = np.zeros((0, num_points), dtype=np.uint8)
            dist = np.zeros((0, num_points), dtype=np.int64) if boundary else None
        flipped = add_label_noise(labels, has, dist, noise_rate, noise_mode, seed, version)
        stats.num_flipped.append(len(flipped))
        samples.append(PointSamples(coords=coords, labels=labels, has_points=has, flipped=flipped))
    return samples, stats


def add_label_noise(
    labels: np.ndarray,
    has_points: np.ndarray,
    boundary_dist: np.ndarray | None,
    noise_rate: float,
    noise_mode: NoiseMode,
    seed: int,
    version: int,
) -> np.ndarray:
    """Flip, in place, exactly ``floor(R * T + 0.5)`` of the T labelled points of a dataset.

    Args:
        labels: (A, N) uint8 labels of all annotations of the dataset, modified in place.
        has_points: (A,) bool, False for annotations without points (zero-area boxes).
        boundary_dist: (A, N) squared boundary distances (:func:`boundary_sq_distances`) for
            ``noise_mode="boundary"``; ignored (may be None) for ``"random"``.
        noise_rate, noise_mode, seed, version: as in :func:`simulate_point_annotations`; the
            choice depends on nothing else (its own random stream per seed and version).

    Returns:
        (F,) int64 flat indices into ``labels`` of the flipped points, ascending.
    """
    if noise_rate <= 0:
        return np.zeros(0, dtype=np.int64)
    num_points = labels.shape[1]
    valid = np.flatnonzero(np.repeat(has_points, num_points))  # flat indices of real points
    num_flips = math.floor(noise_rate * len(valid) + 0.5)
    rng = np.random.default_rng([seed, version, 0x4E4F495345])  # "NOISE": its own stream
    if noise_mode == "boundary":
        dist = boundary_dist.reshape(-1)[valid]
    else:
        dist = np.zeros(len(valid), dtype=np.int64)
    flipped = valid[select_noisy_points(num_flips, noise_mode, rng, dist)]
    labels.reshape(-1)[flipped] ^= 1
    return flipped


# --------------------------------------------------------------------------------------------
# Annotation-time model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnnotationTime:
    """Annotation time of a dataset under the paper's model (seconds)."""

    num_instances: int
    num_points: int
    box_seconds: float
    points_seconds: float
    polygon_mask_seconds: float

    @property
    def point_annotation_seconds(self) -> float:
        return self.box_seconds + self.points_seconds

    @property
    def speedup(self) -> float:
        return self.polygon_mask_seconds / self.point_annotation_seconds if self.num_instances else math.nan

    def summary(self) -> str:
        def hours(s: float) -> str:
            return f"{s / 3600:,.1f} h"

        n = self.num_instances
        per = SECONDS_PER_BOX + self.num_points * SECONDS_PER_POINT
        return (
            f"annotation time for {n:,} objects (paper's model: {SECONDS_PER_BOX:g} s per box + "
            f"{SECONDS_PER_POINT:g} s per point, {SECONDS_PER_POLYGON_MASK:g} s per polygon mask): "
            f"P{self.num_points} {hours(self.point_annotation_seconds)} ({per:g} s/object) vs "
            f"polygon masks {hours(self.polygon_mask_seconds)}: {self.speedup:.1f}x faster"
        )


def annotation_time(num_instances: int, num_points: int) -> AnnotationTime:
    """Time to annotate ``num_instances`` objects with a box and ``num_points`` points, vs polygons."""
    return AnnotationTime(
        num_instances=num_instances,
        num_points=num_points,
        box_seconds=num_instances * SECONDS_PER_BOX,
        points_seconds=num_instances * num_points * SECONDS_PER_POINT,
        polygon_mask_seconds=num_instances * SECONDS_PER_POLYGON_MASK,
    )


def apply_point_samples(instances: CocoInstances, samples: PointSamples) -> None:
    """Set ``point_coords``/``point_labels`` of every annotation of ``instances`` from ``samples``.

    Annotations without points (zero-area boxes) get empty lists, as in the output files.
    """
    coords, labels = samples.coords.tolist(), samples.labels.tolist()
    for i, ann in enumerate(instances.annotations):
        has = bool(samples.has_points[i])
        ann["point_coords"] = coords[i] if has else []
        ann["point_labels"] = labels[i] if has else []


def dumps_point_annotations(instances: CocoInstances, samples: PointSamples) -> bytes:
    """``instances.data`` with the points of ``samples``, serialized: the bytes of an output file.

    The same bytes as :func:`apply_point_samples` followed by :func:`dumps_json`, several times
    faster on large datasets: the points are serialized by orjson as two numpy arrays and cut into
    per-annotation JSON fragments (``orjson.Fragment``), instead of being built as millions of
    small Python lists and serialized one by one. The annotations' ``point_coords`` and
    ``point_labels`` are left holding those fragments (empty lists where there are no points); call
    :func:`apply_point_samples` for Python lists.
    """
    set_point_fields(instances.annotations, samples)
    return dumps_json(instances.data)


def set_point_fields(annotations: list[dict[str, Any]], samples: PointSamples) -> None:
    """Set ``point_coords``/``point_labels`` of each annotation, ready for :func:`dumps_json`.

    ``annotations[i]`` gets row ``i`` of ``samples`` as ``orjson.Fragment`` JSON text (empty lists
    where there are no points); with orjson < 3.9, as Python lists (:func:`apply_point_samples`).
    """
    if not hasattr(orjson, "Fragment"):  # orjson < 3.9
        coords, labels = samples.coords.tolist(), samples.labels.tolist()
    else:
        coords = _json_rows(samples.coords, b"]],[[", b"]]\n[[")  # rows of (A, N, 2)
        labels = _json_rows(samples.labels, b"],[", b"]\n[")  # rows of (A, N)
    for ann, c, lab, has in zip(annotations, coords, labels, samples.has_points.tolist(), strict=True):
        if has:
            ann["point_coords"] = c
            ann["point_labels"] = lab
        else:
            ann["point_coords"] = []
            ann["point_labels"] = []


def _json_rows(a: np.ndarray, sep: bytes, cut: bytes) -> list[Any]:
    """The JSON text of each ``a[i]`` as an ``orjson.Fragment``.

    ``sep`` is what separates two rows in the JSON text of ``a`` and never occurs inside one (e.g.
    ``]],[[`` for (A, N, 2) integers: inside a row, points are separated by ``],[``); ``cut`` is
    ``sep`` with a newline (which compact JSON of numbers never holds) where the rows part.
    """
    if not len(a):
        return []
    text = orjson.dumps(np.ascontiguousarray(a), option=orjson.OPT_SERIALIZE_NUMPY)
    return list(map(orjson.Fragment, text[1:-1].replace(sep, cut).split(b"\n")))


def write_point_annotation_file(
    input_json: str | os.PathLike,
    output_json: str | os.PathLike,
    *,
    num_points: int = 10,
    seed: int = 0,
    version: int = 0,
    noise_rate: float = 0.0,
    noise_mode: NoiseMode = "random",
    keep_masks: bool = False,
) -> SimulationStats:
    """Simulate P_N for a COCO-format file and write the result atomically (library form of the CLI).

    The arguments are the CLI's options for one version (see :func:`simulate_point_annotations`). For
    several versions at once or worker processes use ``tools/prepare_point_annotations.py``; this
    single-process form serves small datasets and code that builds datasets programmatically (e.g.
    :func:`point_sup.data.register_nuclei`, the miniature replication's ablations).
    """
    instances = load_coco_instances(input_json)
    samples, stats = simulate_point_annotations(
        instances,
        num_points=num_points,
        seed=seed,
        versions=(version,),
        noise_rate=noise_rate,
        noise_mode=noise_mode,
        drop_segmentation=not keep_masks,
    )
    atomic_write_bytes(output_json, dumps_point_annotations(instances, samples[0]))
    return stats
