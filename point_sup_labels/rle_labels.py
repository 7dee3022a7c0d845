"""Exact RLE labels: a pixel's value read from COCO run-length encoding, compressed or not.

Pixel (x, y) is element ``x * h + y`` of the column-major run sequence; a binary search in the
cumulative run lengths finds its run, and odd runs are foreground. Compressed ``counts`` strings are
decoded vectorized (:func:`decode_rle_counts`). Points are pixel indices ``[x, y]`` (see
:mod:`point_sup_labels.sampling`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .sampling import check_in_image

__all__ = ["decode_rle_counts", "rle_labels", "rle_labels_at", "rle_region", "rle_run_ends"]


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


def rle_run_ends(segm: dict[str, Any]) -> np.ndarray:
    """Cumulative run lengths (int64) of a COCO RLE, compressed or not: run r ends at element r."""
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
    check_in_image(pts, h, w)
    return rle_labels_at(rle_run_ends(segm), h, pts)


def rle_labels_at(run_ends: np.ndarray, h: int, pts: np.ndarray) -> np.ndarray:
    """(P,) uint8 mask values at the pixels ``pts`` ((P, 2) ``[x, y]``, inside the image) of the mask
    whose runs end at ``run_ends``, in an image of ``h`` rows (pixel (x, y) is element x * h + y)."""
    idx = pts[:, 0] * h + pts[:, 1]
    # Run r covers [ends[r-1], ends[r]); runs with odd index are foreground.
    return (np.searchsorted(run_ends, idx, side="right") & 1).astype(np.uint8)


def rle_region(run_ends: np.ndarray, height: int, cols: tuple[int, int], rows: tuple[int, int]) -> np.ndarray:
    """The (rows, cols) uint8 crop ``rows[0]:rows[1]``, ``cols[0]:cols[1]`` (end exclusive) of the
    mask whose runs end at ``run_ends`` (:func:`rle_run_ends`) in an image of ``height`` rows."""
    (c0, c1), (r0, r1) = cols, rows
    xx, yy = np.meshgrid(np.arange(c0, c1), np.arange(r0, r1))
    pts = np.stack([xx.ravel(), yy.ravel()], axis=1)
    return rle_labels_at(run_ends, height, pts).reshape(max(r1 - r0, 0), max(c1 - c0, 0))
