"""BoxInst's box terms (Tian et al., CVPR 2021, §3) on any map of mask logits: the box's own priors,
shared by BoxInst (point_sup.modeling.condinst.boxinst, on stride-4 image maps) and by point_sup's
box prior on P_N-trained heads (point_sup.modeling.common.box_prior, on RoI grids).

A *map* here is an (R, H, W) grid of cells of one instance each; ``box_masks`` (R, H, W) in {0, 1}
marks the cells of the instance's box, ``similarity`` (R, K, H, W) the colour similarity of each cell
with its K neighbours (:func:`neighbour_offsets`).

Projection term (:func:`projection_loss`)
    :func:`dice_loss` between the max projections of the predicted probabilities and of the box mask,
    onto the x axis and onto the y axis, summed.
Pairwise term (:func:`pairwise_loss`)
    for every cell and each of its neighbours in a ``size x size`` window with dilation ``d`` (the
    centre excluded: 8 for 3x3), ``-log P(same label)`` with ``P = p_i p_j + (1 - p_i)(1 - p_j)``,
    averaged over the pairs whose colour similarity is at least the threshold (0.3) and whose centre
    cell lies in the box; ramped up linearly over ``MODEL.BOXINST.PAIRWISE.WARMUP_ITERS``
    (:func:`pairwise_warmup`).
Colour similarity (:func:`color_similarity`)
    ``exp(-||Lab_i - Lab_j|| / 2)`` of the cells' CIE Lab colours (:func:`rgb_to_lab`, sRGB with the
    D65 white).

The losses are computed in float32 whatever their inputs' dtype (float16 under CUDA's AMP): the
pairwise sum runs over R x K x H x W pairs, far beyond float16's largest value (65504).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from detectron2.structures import ImageList
from detectron2.utils.events import get_event_storage

__all__ = [
    "PairwiseOptions",
    "color_similarity",
    "dice_loss",
    "input_rgb",
    "neighbour_offsets",
    "pairwise_loss",
    "pairwise_warmup",
    "projection_loss",
    "rgb_to_lab",
    "selected_mean",
]


def dice_loss(probs: torch.Tensor, targets: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """CondInst's dice loss, per instance: ``1 - 2 sum(p t) / (sum p² + sum t² + eps)``.

    Computed in float32 (or float64 for float64 probabilities) whatever the input dtype: under
    float16 autocast the sums over a COCO-sized stride-4 map (200 x 333 cells) exceed float16's
    largest value, 65504.

    Args:
        probs: (R, ...) probabilities.
        targets: (R, ...) targets in [0, 1], the same shape (bool, integer or floating).

    Returns:
        (R,) losses (the caller averages), float32 (float64 for float64 ``probs``).
    """
    dtype = torch.promote_types(probs.dtype, torch.float32)
    p, t = probs.flatten(1).to(dtype), targets.flatten(1).to(dtype)
    intersection = (p * t).sum(dim=1)
    union = (p * p).sum(dim=1) + (t * t).sum(dim=1) + eps
    return 1.0 - 2.0 * intersection / union


@dataclass(frozen=True)
class PairwiseOptions:
    """BoxInst's pairwise term (``MODEL.BOXINST.PAIRWISE``)."""

    size: int = 3
    dilation: int = 2
    color_thresh: float = 0.3
    warmup_iters: int = 10000

    @classmethod
    def from_config(cls, cfg) -> PairwiseOptions:
        """The options of ``cfg.MODEL.BOXINST.PAIRWISE`` (BoxInst's term and the box prior's)."""
        pw = cfg.MODEL.BOXINST.PAIRWISE
        return cls(pw.SIZE, pw.DILATION, pw.COLOR_THRESH, pw.WARMUP_ITERS)


# sRGB (linear) to CIE XYZ, D65 (IEC 61966-2-1), and the D65 reference white.
_RGB_TO_XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_WHITE_D65 = (0.95047, 1.0, 1.08883)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """CIE Lab of sRGB images.

    Args:
        rgb: (N, 3, H, W) sRGB in [0, 1], channels R, G, B.

    Returns:
        (N, 3, H, W) float32: L in [0, 100], a and b.
    """
    c = rgb.to(torch.float32).clamp(0.0, 1.0)
    linear = torch.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    # The matrix and the white as Python numbers: no tensor is copied to the device each step.
    channels = linear.unbind(dim=1)
    xyz = torch.stack(
        [
            sum(m * ch for m, ch in zip(row, channels, strict=True)) / white
            for row, white in zip(_RGB_TO_XYZ, _WHITE_D65, strict=True)
        ],
        dim=1,
    )
    delta = 6.0 / 29.0
    f = torch.where(xyz > delta**3, xyz.clamp(min=1e-12) ** (1.0 / 3.0), xyz / (3 * delta**2) + 4.0 / 29.0)
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def neighbour_offsets(size: int, dilation: int) -> list[tuple[int, int]]:
    """(dy, dx) of the ``size x size - 1`` neighbours of a cell, centre excluded, row-major."""
    if size < 2 or size % 2 == 0 or dilation < 1:
        raise ValueError(
            f"MODEL.BOXINST.PAIRWISE.SIZE must be odd and >= 3, DILATION >= 1; got {size}, {dilation}"
        )
    half = size // 2
    return [
        (dy * dilation, dx * dilation)
        for dy in range(-half, half + 1)
        for dx in range(-half, half + 1)
        if (dy, dx) != (0, 0)
    ]


def _shifted(x: torch.Tensor, dy: int, dx: int, fill: float = 0.0) -> torch.Tensor:
    """``y[..., r, c] = x[..., r + dy, c + dx]``, ``fill`` where that is outside the map."""
    height, width = x.shape[-2:]
    out = torch.full_like(x, fill)
    r0, r1 = max(0, -dy), min(height, height - dy)
    c0, c1 = max(0, -dx), min(width, width - dx)
    if r0 < r1 and c0 < c1:
        out[..., r0:r1, c0:c1] = x[..., r0 + dy : r1 + dy, c0 + dx : c1 + dx]
    return out


def color_similarity(lab: torch.Tensor, valid: torch.Tensor, offsets: list[tuple[int, int]]) -> torch.Tensor:
    """Colour similarity of each cell with each neighbour.

    Args:
        lab: (N, 3, H, W) Lab colours of the cells.
        valid: (N, H, W) bool, cells inside the (unpadded) image.
        offsets: (dy, dx) neighbours from :func:`neighbour_offsets`.

    Returns:
        (N, K, H, W), K = len(offsets): ``exp(-||lab_i - lab_j|| / 2)``; 0 where either cell is not
        valid or the neighbour is beyond the map.
    """
    sims = []
    valid_f = valid.to(lab.dtype)
    for dy, dx in offsets:
        diff = lab - _shifted(lab, dy, dx)
        both = valid_f * _shifted(valid_f, dy, dx)
        sims.append(torch.exp(-torch.linalg.vector_norm(diff, dim=1) * 0.5) * both)
    return torch.stack(sims, dim=1)


def projection_loss(probs: torch.Tensor, box_masks: torch.Tensor) -> torch.Tensor:
    """BoxInst's projection term per instance.

    Args:
        probs: (R, H, W) predicted probabilities.
        box_masks: (R, H, W) in {0, 1}.

    Returns:
        (R,): dice of the max over rows (x projection) plus dice of the max over columns (y).
    """
    along_x = dice_loss(probs.amax(dim=1), box_masks.amax(dim=1))
    along_y = dice_loss(probs.amax(dim=2), box_masks.amax(dim=2))
    return along_x + along_y


def pairwise_loss(
    logits: torch.Tensor,
    similarity: torch.Tensor,
    box_masks: torch.Tensor,
    offsets: list[tuple[int, int]],
    color_thresh: float = 0.3,
) -> torch.Tensor:
    """BoxInst's pairwise term, averaged over the selected pairs of all instances.

    Args:
        logits: (R, H, W) mask logits of R instances.
        similarity: (R, K, H, W) colour similarity of each instance's image (:func:`color_similarity`).
        box_masks: (R, H, W) in {0, 1}: the pair's centre cell must lie in the box.
        offsets: the K neighbours, as for ``similarity``.
        color_thresh: pairs with similarity below it are not supervised.

    Returns:
        Scalar: sum of ``-log P(same)`` over selected pairs / max(number of selected pairs, 1).
    """
    # In float32 (AdelaiDet's weights are float32 too): -log P(same) of well-separated logits is below
    # float16's resolution near 0, and the sum over R x K x H x W pairs exceeds its range.
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    log_fg = F.logsigmoid(logits)
    log_bg = F.logsigmoid(-logits)
    terms = []
    for dy, dx in offsets:
        # Neighbours beyond the map have similarity 0 and are never selected; the fill is irrelevant.
        same = torch.logaddexp(log_fg + _shifted(log_fg, dy, dx), log_bg + _shifted(log_bg, dy, dx))
        terms.append(-same)
    loss = torch.stack(terms, dim=1)  # (R, K, H, W)
    weights = (similarity >= color_thresh).to(logits.dtype) * box_masks.unsqueeze(1).to(logits.dtype)
    return (loss * weights).sum() / weights.sum().clamp(min=1.0)


def pairwise_warmup(warmup_iters: int) -> float:
    """The pairwise term's factor: linear from 0 to 1 over the trainer's first ``warmup_iters``
    iterations (1 with ``warmup_iters <= 0`` and outside a trainer)."""
    if warmup_iters <= 0:
        return 1.0
    try:
        iteration = get_event_storage().iter
    except AssertionError:
        return 1.0
    return min(float(iteration) / warmup_iters, 1.0)


def input_rgb(
    images: ImageList, pixel_mean: torch.Tensor, pixel_std: torch.Tensor, input_format: str
) -> torch.Tensor:
    """The network input's colours: (N, 3, H, W) RGB in 0-255 of the padded batch (padding: the
    pixel mean), un-normalised with the model's (C, 1, 1) ``pixel_mean`` / ``pixel_std``.

    Args:
        input_format: ``INPUT.FORMAT``, ``"BGR"`` or ``"RGB"``.
    """
    pixels = images.tensor * pixel_std + pixel_mean
    return pixels.flip(1) if input_format == "BGR" else pixels


def selected_mean(values: torch.Tensor, selected: torch.Tensor | None) -> torch.Tensor:
    """The mean of ``values`` (R,), over the ``selected`` (R,) bool entries only if given (0 when none
    is): the others weigh 0 instead of being selected on the host (no device-to-host copy)."""
    if selected is None:
        return values.mean()
    weights = selected.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp(min=1.0)
