"""Mask R-CNN's mask head trained from labelled points (paper §3.2, Table 3a).

The architecture is Detectron2's unchanged: a 28x28 class-specific (or class-agnostic) RoI
prediction aligned with the proposal box. With ``INPUT.POINT_SUP`` the mask loss is computed at the
P_N labelled points instead of on a grid of mask labels: the 28x28 logits are interpolated
bilinearly at each point's box-relative coordinates (:func:`roi_grid_point_loss`), points outside
the proposal box are ignored, and the point BCE is normalised as ``MODEL.POINT_LOSS.NORMALIZATION``
says (Detectron2's PointSup by default: divided by all labelled points). Gradients therefore reach
only the (at most four) cells around each labelled in-box point.
"""

from __future__ import annotations

import logging

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.roi_heads.mask_head import (
    ROI_MASK_HEAD_REGISTRY,
    MaskRCNNConvUpsampleHead,
    mask_rcnn_inference,
    mask_rcnn_loss,
)
from detectron2.structures import Instances

from .point_features import point_sample
from .point_loss import get_point_targets, point_bce_loss, select_class_logits

__all__ = ["PointSupMaskRCNNConvUpsampleHead", "roi_grid_point_loss"]

logger = logging.getLogger(__name__)


def roi_grid_point_loss(
    mask_logits: torch.Tensor,
    instances: list[Instances],
    log_prefix: str = "",
    point_targets: tuple[torch.Tensor, torch.Tensor] | None = None,
    normalization: str = "all_points",
) -> torch.Tensor:
    """Point BCE of an RoI-grid mask prediction at the labelled points of its proposals.

    Args:
        mask_logits: (R, C, M, M) or (R, 1, M, M) logits on an M x M grid aligned with each
            proposal box (Mask R-CNN's 28x28, PointRend's 7x7 coarse prediction); R = total number
            of proposals, in the order of ``instances``.
        instances: per image, the R_i foreground proposals with ``proposal_boxes``, ``gt_classes``,
            ``gt_point_coords`` (R_i, P_i, 2) image coordinates and ``gt_point_labels`` (R_i, P_i).
        log_prefix: storage prefix for point accuracy / valid fraction (see :func:`point_bce_loss`).
        point_targets: ``get_point_targets(instances)`` if the caller has it already.
        normalization: of the point BCE (see :func:`~point_sup.modeling.point_loss.point_bce_loss`).

    Returns:
        Scalar loss; ``0 * mask_logits.sum()`` when there is no proposal or no valid point, so the
        graph is kept.
    """
    if mask_logits.shape[0] == 0:
        return mask_logits.sum() * 0.0
    point_coords, point_labels = point_targets if point_targets is not None else get_point_targets(instances)
    if point_labels.numel() == 0:
        return mask_logits.sum() * 0.0
    gt_classes = cat([inst.gt_classes for inst in instances if len(inst) > 0]).to(torch.int64)
    # Select the class channel before interpolating: one channel to sample instead of C.
    class_logits = select_class_logits(mask_logits, gt_classes)
    # Box-relative (u, v) are the normalized coordinates of a box-aligned grid (point_features doc).
    point_logits = point_sample(class_logits, point_coords.to(class_logits.dtype)).squeeze(1)
    return point_bce_loss(
        point_logits, point_labels.to(point_logits.device), normalization=normalization, log_prefix=log_prefix
    )


@ROI_MASK_HEAD_REGISTRY.register()
class PointSupMaskRCNNConvUpsampleHead(MaskRCNNConvUpsampleHead):
    """:class:`MaskRCNNConvUpsampleHead` whose training loss can come from labelled points.

    ``point_sup=False`` (masks): identical to the parent (``mask_rcnn_loss``).
    ``point_sup=True`` (points): ``loss_mask = loss_weight * roi_grid_point_loss(...)``; the
    ``vis_period`` mask visualisation of the parent needs ground-truth masks and is not produced.
    Inference is always the parent's (``mask_rcnn_inference``).
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        point_sup: bool = False,
        point_loss_normalization: str = "all_points",
        **kwargs,
    ):
        """
        Args:
            input_shape, kwargs: as for :class:`MaskRCNNConvUpsampleHead`.
            point_sup: train from ``gt_point_coords`` / ``gt_point_labels`` instead of ``gt_masks``.
            point_loss_normalization: ``MODEL.POINT_LOSS.NORMALIZATION``.
        """
        super().__init__(input_shape, **kwargs)
        self.point_sup = point_sup
        self.point_loss_normalization = point_loss_normalization

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec) -> dict:
        ret = super().from_config(cfg, input_shape)
        ret["point_sup"] = bool(cfg.INPUT.POINT_SUP)
        ret["point_loss_normalization"] = cfg.MODEL.POINT_LOSS.NORMALIZATION
        return ret

    def forward(self, x: torch.Tensor, instances: list[Instances]):
        """
        Args:
            x: (R, C_in, 14, 14) pooled RoI features.
            instances: training: foreground proposals with ground truth; inference: detections
                with ``pred_classes``.

        Returns:
            Training: ``{"loss_mask": scalar}``. Inference: ``instances`` with ``pred_masks``
            (R_i, 1, 28, 28) probabilities.
        """
        x = self.layers(x)
        if self.training:
            if self.point_sup:
                loss = roi_grid_point_loss(
                    x, instances, log_prefix="mask_rcnn_point", normalization=self.point_loss_normalization
                )
            else:
                loss = mask_rcnn_loss(x, instances, self.vis_period)
            return {"loss_mask": loss * self.loss_weight}
        mask_rcnn_inference(x, instances)
        return instances
