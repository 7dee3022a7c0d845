"""Adaptive subdivision (PointRend; paper §4.2): the one inference loop of both point-based heads.

A mask is predicted on a regular ``init_side x init_side`` grid over each box, then ``steps`` times
upsampled x2 (bilinear) and recomputed at the ``num_points`` most uncertain cells; PointRend goes
7 → 224 (its step skipping, :func:`skip_full_steps`, starts it at 28), Implicit PointRend 28 → 224.
The head supplies a callable that predicts one logit per box at box-relative points, so only the
predicted class is ever kept: memory is (R, 1, M, M) rather than (R, C, M, M).

Coordinates (see :mod:`point_sup.modeling.common.point_features`): the points handed to the callable are
box-relative (u, v), which for the box-aligned grid are also its normalized map coordinates; cell
``(row, col)`` of an ``S``-cell side is centred at ``((col + 0.5) / S, (row + 0.5) / S)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from detectron2.structures import Boxes

from .point_features import (
    box_chunks,
    calculate_uncertainty,
    generate_regular_grid_point_coords,
    get_uncertain_point_coords_on_grid,
)

__all__ = [
    "CPU_CHUNK_POINTS",
    "Subdivision",
    "adaptive_subdivision",
    "chunked_point_logits",
    "skip_full_steps",
]

# On CPU the point heads are evaluated on chunks of about this many points (boxes x points per box),
# whose features and hidden activations stay in cache; on GPUs one launch over all points is what is
# fast, so there everything is one chunk (measurement: docs/implementation.md, *Common: subdivision*).
CPU_CHUNK_POINTS = 4096


def chunked_point_logits(
    chunk_logits: Callable[[list[Boxes], slice, torch.Tensor], torch.Tensor],
    boxes: Sequence[Boxes],
    point_coords: torch.Tensor,
) -> torch.Tensor:
    """Point logits of all boxes, evaluated chunk by chunk on CPU (see :data:`CPU_CHUNK_POINTS`).

    Every box's logits depend on its own points only, so the result is that of one evaluation over
    all boxes up to the float rounding of the chunk size's matrix products.

    Args:
        chunk_logits: ``(chunk_boxes, rows, chunk_coords) -> (n, 1, P)`` for the n boxes of one chunk:
            ``chunk_boxes`` as :func:`~point_sup.modeling.common.point_features.box_chunks` gives them
            (per image, this chunk's boxes in one of them), ``rows`` their slice of the R boxes
            (to pick their parameters, classes, coarse logits), ``chunk_coords`` their (n, P, 2)
            box-relative points.
        boxes: N Boxes (image coordinates), R in total.
        point_coords: (R, P, 2) box-relative (u, v).

    Returns:
        (R, 1, P) logits, boxes concatenated in image order.
    """
    P = point_coords.shape[1]
    # A trace records one chunk of all boxes: chunk bounds are Python numbers it would freeze.
    chunked = point_coords.device.type == "cpu" and not torch.jit.is_tracing()
    max_boxes = max(1, CPU_CHUNK_POINTS // max(P, 1)) if chunked else None
    chunks = box_chunks(boxes, max_boxes)
    if len(chunks) == 1:
        chunk_boxes, rows = chunks[0]
        return chunk_logits(chunk_boxes, rows, point_coords)
    return torch.cat([chunk_logits(b, rows, point_coords[rows]) for b, rows in chunks])


def skip_full_steps(init_side: int, steps: int, num_points: int) -> tuple[int, int]:
    """PointRend's shortcut: a step whose upsampled grid has no more cells than ``num_points``
    would recompute every cell anyway, so start from that finer grid directly.

    Returns:
        (init_side, steps) after skipping, e.g. (7, 5) with 28² points → (28, 3); the output side
        ``init_side * 2**steps`` is unchanged.
    """
    while steps > 0 and 4 * init_side * init_side <= num_points:
        init_side *= 2
        steps -= 1
    return init_side, steps


def adaptive_subdivision(
    point_logits: Callable[[torch.Tensor], torch.Tensor],
    num_boxes: int,
    init_side: int,
    steps: int,
    num_points: int,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Mask logits of ``num_boxes`` boxes by adaptive subdivision.

    Args:
        point_logits: maps (R, P, 2) box-relative (u, v) points to (R, 1, P) logits of each box's
            (predicted) class; called ``steps + 1`` times, P = ``init_side²`` first, then at most
            ``num_points``.
        num_boxes: R, boxes of all images together.
        init_side: side of the first, regular grid.
        steps: number of x2 upsampling steps.
        num_points: cells recomputed per step.
        device, dtype: of the points (and of the empty result when there is no box).

    Returns:
        (R, 1, M, M) logits, M = ``init_side * 2**steps``, aligned with the boxes (cell centres as in
        the module docstring).
    """
    if isinstance(num_boxes, int) and num_boxes == 0:  # a trace keeps the count as a tensor
        side = init_side * 2**steps
        return torch.zeros((0, 1, side, side), device=device, dtype=dtype)
    grid = generate_regular_grid_point_coords(num_boxes, init_side, device).to(dtype)
    mask_logits = point_logits(grid).reshape(num_boxes, 1, init_side, init_side)
    for _ in range(steps):
        mask_logits = F.interpolate(mask_logits, scale_factor=2, mode="bilinear", align_corners=False)
        _, _, H, W = mask_logits.shape
        indices, coords = get_uncertain_point_coords_on_grid(calculate_uncertainty(mask_logits), num_points)
        logits = point_logits(coords.to(dtype))
        mask_logits = mask_logits.reshape(num_boxes, 1, H * W).scatter(2, indices.unsqueeze(1), logits)
        mask_logits = mask_logits.view(num_boxes, 1, H, W)
    return mask_logits


@dataclass(frozen=True)
class Subdivision:
    """A head's adaptive subdivision (``POINT_HEAD.SUBDIVISION_*``): a regular ``init_side``² grid,
    then ``steps`` x2 steps that recompute the ``num_points`` most uncertain cells."""

    init_side: int
    steps: int
    num_points: int

    @property
    def output_side(self) -> int:
        """M, the side of the predicted masks: ``init_side * 2**steps``."""
        return self.init_side * 2**self.steps

    def mask_logits(
        self,
        chunk_logits: Callable[[list[Boxes], slice, torch.Tensor], torch.Tensor],
        boxes: Sequence[Boxes],
        device: torch.device | str,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """(R, 1, M, M) logits of the R ``boxes`` (N Boxes, image coordinates): :func:`adaptive_subdivision`
        of the head's ``chunk_logits``, evaluated chunk by chunk on CPU (:func:`chunked_point_logits`)."""
        return adaptive_subdivision(
            lambda point_coords: chunked_point_logits(chunk_logits, boxes, point_coords),
            sum(b.tensor.shape[0] for b in boxes),  # a tensor while tracing: the count stays dynamic
            self.init_side,
            self.steps,
            self.num_points,
            device,
            dtype,
        )
