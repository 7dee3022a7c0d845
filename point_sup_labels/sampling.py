"""Paper §3.1: the N points of a P_N annotation, sampled uniformly inside the object's box.

Conventions (the one statement of them for the P_N half; the training half's loader adds 0.5):

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
  with a counter-based generator (SplitMix64, :func:`annotation_keys`), so results do not depend
  on the order in which annotations are processed or on the number of workers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["annotation_keys", "check_in_image", "sample_points", "sampling_ranges"]

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


def check_in_image(pts: np.ndarray, height: int, width: int) -> None:
    """ValueError unless every ``[x, y]`` of the (P, 2) integer ``pts`` is a pixel of the image."""
    if len(pts) and ((pts < 0).any() or (pts[:, 0] >= width).any() or (pts[:, 1] >= height).any()):
        raise ValueError(f"points must be pixel indices inside the {width}x{height} image")
