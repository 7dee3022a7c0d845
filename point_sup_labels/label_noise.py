"""Paper §3.3.1: label noise, the simulated annotator errors of the robustness study.

A noise rate R flips exactly ``floor(R * T + 0.5)`` of the T labelled points of a dataset version
(:func:`add_label_noise`), chosen either uniformly (``random``) or as the points closest to the
object boundary (``boundary``: :func:`boundary_sq_distances` on a crop of the mask made by
:func:`mask_region`, ties broken at random). The choice has its own random stream per seed and
version, so a version's points are the same with or without noise.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from .coco_format import segmentation_kind
from .polygon_labels import polygon_region
from .rle_labels import rle_region, rle_run_ends

__all__ = [
    "NO_DISTANCE",
    "NoiseMode",
    "add_label_noise",
    "boundary_sq_distances",
    "mask_region",
    "select_noisy_points",
]

NoiseMode = Literal["random", "boundary"]
NO_DISTANCE = np.int64(2**62)  # squared distance of a point with no opposite-label pixel nearby


def mask_region(
    segm: Any, height: int, width: int, cols: tuple[int, int], rows: tuple[int, int]
) -> np.ndarray:
    """The mask over pixel columns ``cols[0]:cols[1]`` and rows ``rows[0]:rows[1]`` (end exclusive).

    Returns a (rows, cols) uint8 array equal to the same crop of pycocotools' full-image mask, at a
    cost proportional to the region (and the polygon's edges), not to the image.
    """
    if segmentation_kind(segm) in ("rle", "compressed_rle"):
        return rle_region(rle_run_ends(segm), height, cols, rows)
    parts = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in segm if len(p) >= 6]
    coords = np.concatenate(parts) if parts else np.zeros((0, 2))
    return polygon_region(coords, np.array([len(p) for p in parts], dtype=np.int64), height, cols, rows)


def boundary_sq_distances(region: np.ndarray, origin: tuple[int, int], points: np.ndarray) -> np.ndarray:
    """Squared distance from each point to the nearest region pixel of the other label.

    ``region`` is a mask crop whose top-left pixel is ``origin = (col, row)``; ``points`` are
    (P, 2) ``[x, y]`` inside it. Distances are between pixel centres, in pixels squared (int64);
    :data:`NO_DISTANCE` where the region holds no pixel of the other label.
    """
    out = np.full(len(points), NO_DISTANCE, dtype=np.int64)
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
