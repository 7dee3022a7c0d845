"""``PointSupROIHeads``: Detectron2's ``StandardROIHeads`` that hands each training RoI's image colours
to the mask head, for the box prior (``MODEL.BOX_PRIOR``, point_sup.modeling.common.box_prior).

Detectron2's ROI heads give the mask head pooled features and proposals, never the image; the prior's
pairwise term needs the colours of the RoI's cells. In training with the prior on, this class sets on
every sampled proposal ``proposal_colors`` (R_i, 3, G, G): the mean RGB (0-255) of each cell of the
mask head's RoI grid (G = the head's ``box_prior_grid_size``), which ``select_foreground_proposals``
carries to the foreground proposals the head trains on. Everything else, inference included, is
``StandardROIHeads``' own; without the prior the class is ``StandardROIHeads``.
"""

from __future__ import annotations

import torch
from detectron2.config import configurable
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.structures import ImageList, Instances

from .box_prior import BoxPriorOptions, roi_colors
from .box_terms import input_rgb

__all__ = ["PointSupROIHeads"]


@ROI_HEADS_REGISTRY.register()
class PointSupROIHeads(StandardROIHeads):
    """``StandardROIHeads`` plus the RoIs' colours for the mask head's box prior (module docstring)."""

    @configurable
    def __init__(
        self,
        *,
        box_prior: BoxPriorOptions | None = None,
        pixel_mean: tuple[float, ...] = (103.53, 116.28, 123.675),
        pixel_std: tuple[float, ...] = (1.0, 1.0, 1.0),
        input_format: str = "BGR",
        **kwargs,
    ) -> None:
        """
        Args:
            box_prior: ``MODEL.BOX_PRIOR``; None or disabled: exactly ``StandardROIHeads``.
            pixel_mean, pixel_std, input_format: the model's input normalisation and channel order
                (``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``, ``INPUT.FORMAT``), to read colours back.
            kwargs: as for ``StandardROIHeads``.
        """
        super().__init__(**kwargs)
        self.box_prior = box_prior or BoxPriorOptions()
        if self.box_prior.enabled:
            if input_format not in ("BGR", "RGB"):
                raise ValueError(
                    f"MODEL.BOX_PRIOR reads colours from BGR or RGB input, not INPUT.FORMAT {input_format!r}"
                )
            head = type(self.mask_head).__name__ if self.mask_on else "no mask head (MODEL.MASK_ON off)"
            grid = getattr(self.mask_head, "box_prior_grid_size", None) if self.mask_on else None
            if not grid:
                raise ValueError(
                    "MODEL.BOX_PRIOR.ENABLED needs a mask head with the box prior (ROI_MASK_HEAD.NAME "
                    "PointSupMaskRCNNConvUpsampleHead, PointSupPointRendMaskHead or "
                    f"PointSupImplicitPointRendMaskHead), got {head}"
                )
            self.box_prior_grid_size = int(grid)
        self.input_format = input_format
        self._input_rgb: torch.Tensor | None = None  # set for the span of one training forward
        # Buffers (not persistent: checkpoints stay StandardROIHeads'), moved with the model.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, cfg, input_shape) -> dict:
        return {
            **super().from_config(cfg, input_shape),
            "box_prior": BoxPriorOptions.from_config(cfg),
            "pixel_mean": tuple(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": tuple(cfg.MODEL.PIXEL_STD),
            "input_format": cfg.INPUT.FORMAT,
        }

    def forward(
        self,
        images: ImageList,
        features: dict[str, torch.Tensor],
        proposals: list[Instances],
        targets: list[Instances] | None = None,
    ):
        """``StandardROIHeads.forward``; in training with the prior, the input colours (N, 3, H, W)
        travel to :meth:`_forward_mask` with the features."""
        self._input_rgb = None
        if self.training and self.box_prior.enabled:
            self._input_rgb = input_rgb(images, self.pixel_mean, self.pixel_std, self.input_format)
        try:
            return super().forward(images, features, proposals, targets)
        finally:
            self._input_rgb = None

    def _forward_mask(self, features: dict[str, torch.Tensor], instances: list[Instances]):
        """Sets ``proposal_colors`` (R_i, 3, G, G) on the sampled proposals in training with the prior,
        then ``StandardROIHeads._forward_mask``."""
        rgb = self._input_rgb
        if rgb is not None and self.mask_on:
            boxes = [inst.proposal_boxes.tensor for inst in instances]
            with torch.no_grad():
                colors = roi_colors(rgb, boxes, self.box_prior_grid_size)
            start = 0
            for inst in instances:
                inst.proposal_colors = colors[start : start + len(inst)]
                start += len(inst)
        return super()._forward_mask(features, instances)
