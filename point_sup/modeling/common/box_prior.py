"""The box prior (point_sup's, not the paper's; ``MODEL.BOX_PRIOR``): every P_N annotation carries a
box, and BoxInst's two box terms (point_sup.modeling.common.box_terms) say what a box alone says about
the mask. This module puts them on the RoI predictions of the ROI heads (Mask R-CNN, PointRend,
Implicit PointRend) next to the point loss; CondInst applies them on its image-level maps
(point_sup.modeling.condinst.supervision). Measured on the miniature: docs/results.md, *Points plus
the box prior*.

The RoI grid
    G x G cells of a proposal box: cell ``(i, j)`` is centred at the box-relative point
    ``((j + 0.5) / G, (i + 0.5) / G)`` (frame of point_sup.modeling.common.point_features), the
    centres of Mask R-CNN's 28x28 prediction for G = 28.
Box mask (:func:`roi_box_masks`)
    1 at the cells whose centre lies in the matched ground-truth box (closed interval, as the points'
    rule), 0 elsewhere: the part of the proposal that the object's box covers.
Colours (:func:`roi_colors`, :func:`roi_color_similarity`)
    each cell's mean input colour (``ROIAlign`` of the RGB input over the cell, 2x2 samples), and its
    Lab similarity with its K neighbours on the grid (``MODEL.BOXINST.PAIRWISE``'s window; pairs
    beyond the grid are 0). Proposals lie inside the image, so every cell shows the image.
Losses (:func:`roi_box_prior_losses`)
    ``loss_prj = PROJECTION_WEIGHT * mean_r projection(sigmoid(logits_r), box_mask_r)`` and
    ``loss_pairwise = PAIRWISE_WEIGHT * warm-up * pairwise(logits, similarity, box_masks)`` over the
    instances that get the prior: all of them with ``INPUT.POINT_SUP``; with ``MODEL.MIXED_SUP``, the
    point-supervised and box-only ones (weighted 0 for the mask-supervised ones, so nothing is read
    back to the host).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from detectron2.config import CfgNode
from detectron2.structures import Instances
from torchvision.ops import roi_align

from ...config import is_condinst, is_mixed_supervision
from ...data.mixed_supervision import Supervision
from .box_terms import (
    PairwiseOptions,
    color_similarity,
    neighbour_offsets,
    pairwise_loss,
    pairwise_warmup,
    projection_loss,
    rgb_to_lab,
    selected_mean,
)
from .point_features import get_point_coords_wrt_image

__all__ = [
    "BOX_PRIOR_ROI_HEADS",
    "BoxPriorOptions",
    "box_prior_selection",
    "roi_box_masks",
    "roi_box_prior_losses",
    "roi_color_similarity",
    "roi_colors",
    "roi_grid_points",
]

# The ROI heads that hand the RoIs' colours to the mask head (point_sup.modeling.roi_heads).
BOX_PRIOR_ROI_HEADS = "PointSupROIHeads"


@dataclass(frozen=True)
class BoxPriorOptions:
    """``MODEL.BOX_PRIOR`` and the pairwise term's ``MODEL.BOXINST.PAIRWISE``, read once.

    Attributes:
        enabled: add the box terms to the point-supervised (and box-only) objects.
        projection_weight, pairwise_weight: the terms' weights (>= 0).
        grid_size: G of the point heads' RoI grid (>= 2).
        pairwise: the pairwise term's window, colour threshold and warm-up.
    """

    enabled: bool = False
    projection_weight: float = 1.0
    pairwise_weight: float = 1.0
    grid_size: int = 14
    pairwise: PairwiseOptions = field(default_factory=PairwiseOptions)

    def __post_init__(self) -> None:
        for key, weight in (
            ("PROJECTION_WEIGHT", self.projection_weight),
            ("PAIRWISE_WEIGHT", self.pairwise_weight),
        ):
            if not weight >= 0:
                raise ValueError(f"MODEL.BOX_PRIOR.{key} must be >= 0, got {weight!r}")
        if self.grid_size < 2:
            raise ValueError(f"MODEL.BOX_PRIOR.GRID_SIZE must be >= 2, got {self.grid_size!r}")
        neighbour_offsets(self.pairwise.size, self.pairwise.dilation)  # ValueError for a bad window

    @property
    def offsets(self) -> list[tuple[int, int]]:
        """(dy, dx) of the pairwise term's K neighbours."""
        return neighbour_offsets(self.pairwise.size, self.pairwise.dilation)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> BoxPriorOptions:
        """The options of ``cfg``; ValueError naming the keys for settings the prior does not take:
        no point supervision to add it to (BoxInst without points has the terms already), or R-CNN
        ROI heads other than :data:`BOX_PRIOR_ROI_HEADS`."""
        prior = cfg.MODEL.BOX_PRIOR
        if not prior.ENABLED:
            return cls()
        if not (cfg.INPUT.POINT_SUP or is_mixed_supervision(cfg)):
            raise ValueError(
                "MODEL.BOX_PRIOR.ENABLED adds the box terms to point supervision: turn on "
                "INPUT.POINT_SUP or MODEL.MIXED_SUP.ENABLED (boxes alone: MODEL.BOXINST.ENABLED for "
                "CondInst, or MODEL.MIXED_SUP with box-only objects)"
            )
        if not is_condinst(cfg) and cfg.MODEL.ROI_HEADS.NAME != BOX_PRIOR_ROI_HEADS:
            raise ValueError(
                f"MODEL.BOX_PRIOR.ENABLED needs MODEL.ROI_HEADS.NAME: {BOX_PRIOR_ROI_HEADS} (it hands the "
                f"RoIs' image colours to the mask head), got {cfg.MODEL.ROI_HEADS.NAME!r}"
            )
        return cls(
            enabled=True,
            projection_weight=float(prior.PROJECTION_WEIGHT),
            pairwise_weight=float(prior.PAIRWISE_WEIGHT),
            grid_size=int(prior.GRID_SIZE),
            pairwise=PairwiseOptions.from_config(cfg),
        )


def roi_grid_points(grid_size: int, num_rois: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(R, G², 2) box-relative (u, v) centres of the G x G cells of each RoI, row-major
    (index ``i G + j`` is cell ``(i, j)``, u = (j + 0.5) / G, v = (i + 0.5) / G)."""
    centres = (torch.arange(grid_size, dtype=torch.float32, device=device) + 0.5) / grid_size
    v, u = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([u, v], dim=-1).reshape(1, -1, 2).expand(num_rois, -1, -1)


def roi_box_masks(proposal_boxes: torch.Tensor, gt_boxes: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Which RoI cells lie in the matched ground-truth box.

    Args:
        proposal_boxes, gt_boxes: (R, 4) XYXY image coordinates, row r the RoI and its object's box.
        grid_size: G.

    Returns:
        (R, G, G) float32 in {0, 1}: 1 where the cell centre (image coordinates) is in the closed box.
    """
    centres = get_point_coords_wrt_image(
        proposal_boxes.to(torch.float32),
        roi_grid_points(grid_size, len(proposal_boxes), proposal_boxes.device),
    )
    gt = gt_boxes.to(torch.float32)[:, None, :]
    x, y = centres[..., 0], centres[..., 1]
    inside = (x >= gt[..., 0]) & (x <= gt[..., 2]) & (y >= gt[..., 1]) & (y <= gt[..., 3])
    return inside.to(torch.float32).reshape(-1, grid_size, grid_size)


def roi_colors(rgb: torch.Tensor, boxes: Sequence[torch.Tensor], grid_size: int) -> torch.Tensor:
    """The mean input colour of each RoI cell.

    Args:
        rgb: (N, 3, H, W) input colours (RGB 0-255, point_sup.modeling.common.box_terms.input_rgb).
        boxes: N tensors (R_i, 4) XYXY in input pixels (pixel (x, y) covers [x, x + 1) x [y, y + 1)).
        grid_size: G.

    Returns:
        (R, 3, G, G) float32, R = sum R_i: ``ROIAlign`` (aligned, 2x2 bilinear samples per cell).
    """
    rois = [b.to(torch.float32) for b in boxes]
    return roi_align(
        rgb.to(torch.float32), rois, grid_size, spatial_scale=1.0, sampling_ratio=2, aligned=True
    )


def roi_color_similarity(colors: torch.Tensor, offsets: list[tuple[int, int]]) -> torch.Tensor:
    """(R, K, G, G) Lab colour similarity of each RoI cell with its K neighbours on the grid.

    Args:
        colors: (R, 3, G, G) RGB 0-255 (:func:`roi_colors`).
        offsets: the K (dy, dx) neighbours (:func:`~.box_terms.neighbour_offsets`).
    """
    lab = rgb_to_lab(colors / 255.0)
    valid = torch.ones(lab.shape[0], *lab.shape[-2:], dtype=torch.bool, device=lab.device)
    return color_similarity(lab, valid, offsets)


def box_prior_selection(instances: Sequence[Instances], mixed_sup: bool) -> torch.Tensor | None:
    """The instances that get the prior: None (all of them) without mixed supervision; with it, (R,)
    bool, true for the point-supervised and box-only ones (``gt_supervision``), on the device."""
    if not mixed_sup:
        return None
    kinds = [inst.gt_supervision for inst in instances if len(inst)]
    if not kinds:
        return None
    return torch.cat(kinds) != Supervision.MASK


def roi_box_prior_losses(
    logits: torch.Tensor,
    instances: Sequence[Instances],
    options: BoxPriorOptions,
    selected: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The weighted box terms of R RoIs.

    Args:
        logits: (R, G, G) mask logits of each RoI's ground-truth class on the RoI grid, rows in the
            order of ``instances``.
        instances: per image, the proposals with ``proposal_boxes``, ``gt_boxes`` and
            ``proposal_colors`` (R_i, 3, G, G), set by ``PointSupROIHeads``.
        options: the prior's options (enabled).
        selected: optional (R,) bool (:func:`box_prior_selection`): the terms of these RoIs alone.

    Returns:
        ``{"loss_prj", "loss_pairwise"}``, scalars; 0 with the graph of ``logits`` without RoIs.
    """
    if logits.shape[0] == 0:
        zero = logits.sum() * 0.0
        return {"loss_prj": zero, "loss_pairwise": zero}
    present = [inst for inst in instances if len(inst)]
    if not all(inst.has("proposal_colors") for inst in present):
        raise ValueError(
            f"MODEL.BOX_PRIOR.ENABLED: the mask head got proposals without colours; set "
            f"MODEL.ROI_HEADS.NAME: {BOX_PRIOR_ROI_HEADS}"
        )
    grid = logits.shape[-1]
    proposal_boxes = torch.cat([inst.proposal_boxes.tensor for inst in present])
    gt_boxes = torch.cat([inst.gt_boxes.tensor for inst in present])
    box_masks = roi_box_masks(proposal_boxes, gt_boxes, grid)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    prj = selected_mean(projection_loss(logits.sigmoid(), box_masks), selected)
    if selected is not None:
        box_masks = box_masks * selected[:, None, None].to(box_masks.dtype)
    with torch.no_grad():
        colors = torch.cat([inst.proposal_colors for inst in present])
        similarity = roi_color_similarity(colors, options.offsets)
    pairwise = pairwise_loss(logits, similarity, box_masks, options.offsets, options.pairwise.color_thresh)
    return {
        "loss_prj": prj * options.projection_weight,
        "loss_pairwise": pairwise
        * (options.pairwise_weight * pairwise_warmup(options.pairwise.warmup_iters)),
    }
