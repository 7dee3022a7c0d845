"""Mask R-CNN's mask head trained from labelled points (paper §3.2, Table 3a).

The architecture is Detectron2's unchanged: a 28x28 class-specific (or class-agnostic) RoI
prediction aligned with the proposal box. With ``INPUT.POINT_SUP`` the mask loss is computed at the
P_N labelled points instead of on a grid of mask labels: the 28x28 logits are interpolated
bilinearly at each point's box-relative coordinates
(:func:`~point_sup.modeling.common.point_loss.roi_grid_point_loss`), points outside
the proposal box are ignored, and the point BCE is normalised as ``MODEL.POINT_LOSS.NORMALIZATION``
says (Detectron2's PointSup by default: divided by all labelled points). Gradients therefore reach
only the (at most four) cells around each labelled in-box point.

With ``MODEL.BOX_PRIOR`` (point_sup's option) the point-supervised proposals, and with mixed
supervision the box-only ones, also get BoxInst's projection and pairwise terms on their 28x28 logits
of the ground-truth class (point_sup.modeling.common.box_prior): ``loss_prj`` and ``loss_pairwise``.

``MaskRCNNConvUpsamplePointSupHead`` is the same head under Detectron2 PointSup's name, so that
project's YAML files (``mask_rcnn_R_50_FPN_3x_point_sup*_coco.yaml``) build here. Detectron2's
PointSup project registers that name too: it is not part of the detectron2 package, and importing
both it and point_sup fails with the registry's "already registered" error; use one of the two.
"""

from __future__ import annotations

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads.mask_head import (
    ROI_MASK_HEAD_REGISTRY,
    MaskRCNNConvUpsampleHead,
    mask_rcnn_inference,
    mask_rcnn_loss,
)
from detectron2.structures import Instances

from ..common.box_prior import BoxPriorOptions, box_prior_selection, roi_box_prior_losses
from ..common.mixed_loss import combine_kind_losses, split_by_supervision
from ..common.point_loss import PointLossOptions, cat_gt_classes, roi_grid_point_loss, select_class_logits

__all__ = ["MaskRCNNConvUpsamplePointSupHead", "PointSupMaskRCNNConvUpsampleHead"]


@ROI_MASK_HEAD_REGISTRY.register()
class PointSupMaskRCNNConvUpsampleHead(MaskRCNNConvUpsampleHead):
    """:class:`MaskRCNNConvUpsampleHead` whose training loss can come from labelled points.

    ``point_sup=False`` (masks): identical to the parent (``mask_rcnn_loss``).
    ``point_sup=True`` (points): ``loss_mask = loss_weight * roi_grid_point_loss(...)``; the
    ``vis_period`` mask visualisation of the parent needs ground-truth masks and is not produced.
    ``mixed_sup=True`` (``MODEL.MIXED_SUP``): ``mask_rcnn_loss`` on the mask-supervised proposals and
    ``roi_grid_point_loss`` on the point-supervised ones, combined as point_sup.modeling.common.mixed_loss
    says; box-only proposals get none.
    Inference is always the parent's (``mask_rcnn_inference``).
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        point_loss_options: PointLossOptions | None = None,
        box_prior: BoxPriorOptions | None = None,
        **kwargs,
    ):
        """
        Args:
            input_shape, kwargs: as for :class:`MaskRCNNConvUpsampleHead`.
            point_loss_options: how the head is supervised (from points with ``point_sup``, from
                masks, or mixed) and how its point loss is normalised; None: from masks, as the parent.
            box_prior: ``MODEL.BOX_PRIOR``; None: off.
        """
        super().__init__(input_shape, **kwargs)
        self.point_loss_options = point_loss_options or PointLossOptions()
        self.box_prior = box_prior or BoxPriorOptions()
        # The RoI grid of the prior: the 28x28 prediction (2x the pooled side, the deconvolution's).
        self.box_prior_grid_size = 2 * input_shape.height

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec) -> dict:
        return {
            **super().from_config(cfg, input_shape),
            "point_loss_options": PointLossOptions.from_config(cfg),
            "box_prior": BoxPriorOptions.from_config(cfg),
        }

    def forward(self, x: torch.Tensor, instances: list[Instances]):
        """
        Args:
            x: (R, C_in, 14, 14) pooled RoI features.
            instances: training: foreground proposals with ground truth; inference: detections
                with ``pred_classes``.

        Returns:
            Training: ``{"loss_mask": scalar}`` (and ``loss_prj``, ``loss_pairwise`` with the box
            prior). Inference: ``instances`` with ``pred_masks`` (R_i, 1, 28, 28) probabilities.
        """
        x = self.layers(x)
        if self.training:
            losses = self._losses(x, instances)
            if self.box_prior.enabled:
                logits = select_class_logits(x, cat_gt_classes(instances, x.device))[:, 0]
                selected = box_prior_selection(instances, self.point_loss_options.mixed_sup)
                losses.update(roi_box_prior_losses(logits, instances, self.box_prior, selected))
            return losses
        mask_rcnn_inference(x, instances)
        return instances

    def _losses(self, x: torch.Tensor, instances: list[Instances]) -> dict[str, torch.Tensor]:
        """``{"loss_mask"}`` of the (R, K, 28, 28) logits ``x`` from masks, points or both."""
        options = self.point_loss_options
        if options.mixed_sup:
            split = split_by_supervision(instances, options.mixed_weighting)
            losses = combine_kind_losses(
                {"loss_mask": mask_rcnn_loss(x[split.mask_index], split.masks, self.vis_period)},
                {"loss_mask": self._point_loss(x[split.points_index], split.points)},
                split.weights,
            )
            # Box-only proposals' rows stay in the graph with weight 0 (DDP: every parameter used).
            return {"loss_mask": (losses["loss_mask"] + x.sum() * 0.0) * self.loss_weight}
        if options.point_sup:
            loss = self._point_loss(x, instances)
        else:
            loss = mask_rcnn_loss(x, instances, self.vis_period)
        return {"loss_mask": loss * self.loss_weight}

    def _point_loss(self, x: torch.Tensor, instances: list[Instances]) -> torch.Tensor:
        return roi_grid_point_loss(
            x, instances, log_prefix="mask_rcnn_point", normalization=self.point_loss_options.normalization
        )


@ROI_MASK_HEAD_REGISTRY.register()
class MaskRCNNConvUpsamplePointSupHead(PointSupMaskRCNNConvUpsampleHead):
    """:class:`PointSupMaskRCNNConvUpsampleHead` under Detectron2 PointSup's head name (see the
    module docstring); its YAML files set ``INPUT.POINT_SUP: True``, which this head reads."""
