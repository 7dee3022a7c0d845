"""Exact polygon labels: pycocotools' ``rleFrPoly`` scan conversion, for the queried columns only.

:func:`polygon_labels` re-implements the integer scan conversion of pycocotools' ``rleFrPoly``
(maskApi.c) for just the columns that hold a sampled point. ``rleFrPoly`` rounds vertices to a 5x
grid, walks each edge one grid step at a time, and records a toggle of the mask wherever the walk
crosses from grid column ``5X + 2`` to ``5X + 3`` (the centre line of pixel column X). The crossing
of an edge with that line is computed in closed form with the same double-precision expressions as
the C code, so a pixel is inside iff an odd number of toggles lie at or above it in its column,
exactly as decoding the RLE would give. Parts are united.

Polygon parts with fewer than 3 vertices enclose no pixel and are skipped. (pycocotools would read a
polygon whose *first* part has exactly 2 vertices as a box ``[x, y, w, h]``; that quirk is not
reproduced.) Points are pixel indices ``[x, y]`` (see :mod:`point_sup_labels.sampling`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .sampling import check_in_image

__all__ = ["polygon_labels", "polygon_point_labels_batch", "polygon_region"]

_SCALE = 5.0  # rleFrPoly's upsampling factor


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


def polygon_point_labels_batch(
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
    check_in_image(pts, height, width)
    coords = np.concatenate(parts)
    sizes = np.array([len(p) for p in parts], dtype=np.int64)
    return polygon_point_labels_batch(
        coords,
        sizes,
        np.zeros(len(parts), dtype=np.int64),
        np.array([height]),
        pts,
        np.array([0]),
        np.array([len(pts)]),
    )


def polygon_region(
    coords: np.ndarray, part_sizes: np.ndarray, height: int, cols: tuple[int, int], rows: tuple[int, int]
) -> np.ndarray:
    """The (rows, cols) uint8 crop ``rows[0]:rows[1]``, ``cols[0]:cols[1]`` (end exclusive) of the
    mask of the polygon parts ``coords`` ((V, 2) ``[x, y]`` vertices, ``part_sizes`` per part), as
    pycocotools rasterizes it, at a cost proportional to the crop and the edges."""
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
