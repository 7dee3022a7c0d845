"""PointRend's mask head, trainable from labelled points (paper Table 3c) or from masks.

Architecture and hyper-parameters are PointRend's (Kirillov et al., CVPR 2020):

* **Coarse head** (:class:`~point_sup.modeling.common.conv_fc_head.ConvFCHead`, Detectron2's): RoI
  features of ``ROI_MASK_HEAD.IN_FEATURES`` sampled on a ``POOLER_RESOLUTION`` (14) grid over the
  box (:meth:`~point_sup.modeling.common.point_features.FeatureSampler.on_grid`) → (R, K, 7, 7)
  coarse logits (``OUTPUT_SIDE_RESOLUTION``), box-aligned.
* **Point head** (:class:`~point_sup.modeling.point_rend.point_head.PointSupPointHead`): an MLP over
  the fine-grained ``POINT_HEAD.IN_FEATURES`` (p2) features at a point and the coarse prediction
  interpolated there.

Training from points (``INPUT.POINT_SUP``): ``loss_mask`` is the point BCE (paper §3.2) of the 7x7
coarse logits interpolated bilinearly at the labelled points, ``loss_mask_point`` the point BCE of
the point head at the same points. Training from masks: PointRend's recipe (``mask_rcnn_loss`` of the
coarse logits at 7x7; the point head at ``TRAIN_NUM_POINTS`` importance-sampled points labelled from
the masks, ``MODEL.POINT_LOSS.MASK_POINT_LABELS``). Inference: adaptive subdivision (paper §4.2,
:func:`~point_sup.modeling.common.subdivision.adaptive_subdivision`) from the coarse prediction,
evaluating only the predicted class.

Use with ``ROI_MASK_HEAD.POOLER_TYPE: ""`` (``StandardROIHeads`` then hands the head the feature dict
of ``ROI_HEADS.IN_FEATURES``) and ``MODEL.POINT_HEAD.NAME: StandardPointHead`` (the default). What is
Detectron2's here and why the rest is not: docs/implementation.md, *PointRend*.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads.mask_head import (
    ROI_MASK_HEAD_REGISTRY,
    mask_rcnn_inference,
    mask_rcnn_loss,
)
from detectron2.structures import Boxes, Instances
from torch import nn

from ...config import check_point_head_classes, check_point_head_name
from ..common.box_prior import BoxPriorOptions, box_prior_selection, roi_box_prior_losses, roi_grid_points
from ..common.conv_fc_head import ConvFCHead, build_conv_fc_head
from ..common.mixed_loss import kind_losses, supervised_instances
from ..common.point_features import (
    FeatureSampler,
    calculate_uncertainty,
    get_uncertain_point_coords_with_randomness,
    point_sample,
    pooled_channels,
)
from ..common.point_loss import (
    PointLossOptions,
    cat_gt_classes,
    get_mask_point_labels,
    get_point_targets,
    point_bce_loss,
    roi_grid_point_loss,
    select_class_logits,
)
from ..common.subdivision import Subdivision, skip_full_steps
from .point_head import PointSupPointHead

__all__ = ["PointSupPointRendMaskHead"]


@ROI_MASK_HEAD_REGISTRY.register()
class PointSupPointRendMaskHead(nn.Module):
    """PointRend mask head (coarse head + point head) trainable from points or from masks.

    Expects the feature dict of ``StandardROIHeads`` with ``ROI_MASK_HEAD.POOLER_TYPE: ""``.
    """

    # Reads MODEL.POINT_HEAD (NUM_CLASSES must equal ROI_HEADS'): see point_sup.data.checks.
    uses_point_head = True
    # The values of MODEL.POINT_HEAD.NAME it accepts (point_sup.config.check_point_head_name).
    point_head_names = ("StandardPointHead",)

    @configurable
    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        *,
        coarse_head: ConvFCHead,
        coarse_in_features: Sequence[str],
        pooler_resolution: int,
        point_head: PointSupPointHead | None,
        point_in_features: Sequence[str],
        train_num_points: int,
        oversample_ratio: float,
        importance_sample_ratio: float,
        subdivision_steps: int,
        subdivision_num_points: int,
        point_loss_options: PointLossOptions,
        box_prior: BoxPriorOptions | None = None,
    ):
        """
        Args:
            input_shape: shapes (stride, channels) of the image-level features handed in.
            coarse_head: built for ``pooler_resolution``² RoI features of ``coarse_in_features``,
                predicting (K, S, S) coarse logits (``output_shape``).
            coarse_in_features: features pooled (concatenated over levels) for the coarse head.
            pooler_resolution: side of the regular grid of RoI feature samples (14).
            point_head: the point head, or None for the coarse head alone (POINT_HEAD_ON off).
            point_in_features: fine-grained features of the point head (p2).
            train_num_points, oversample_ratio, importance_sample_ratio: point selection when
                training from masks (PointRend's N, k, beta).
            subdivision_steps, subdivision_num_points: adaptive subdivision at inference.
            point_loss_options: from points (``point_sup``) or masks, or mixed (both recipes, each on
                its own instances: point_sup.modeling.common.mixed_loss), and the point loss's keys.
            box_prior: ``MODEL.BOX_PRIOR`` (None: off): the box terms on the point head's logits
                (the coarse head's without a point head) at a ``grid_size``² grid of each RoI.
        """
        super().__init__()
        self.coarse_head = coarse_head
        self.coarse_features = FeatureSampler.from_shapes(coarse_in_features, input_shape)
        self.pooler_resolution = pooler_resolution
        self.point_head = point_head
        self.point_features = FeatureSampler.from_shapes(point_in_features, input_shape)
        self.train_num_points = train_num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.subdivision = Subdivision(
            *skip_full_steps(coarse_head.output_shape[-1], subdivision_steps, subdivision_num_points),
            subdivision_num_points,
        )
        self.point_loss_options = point_loss_options
        self.box_prior = box_prior or BoxPriorOptions()
        self.box_prior_grid_size = self.box_prior.grid_size

    @classmethod
    def from_config(cls, cfg, input_shape) -> dict:
        mask_head, point_cfg = cfg.MODEL.ROI_MASK_HEAD, cfg.MODEL.POINT_HEAD
        num_coarse = 1 if mask_head.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES
        side = mask_head.OUTPUT_SIDE_RESOLUTION
        coarse_head = build_conv_fc_head(
            cfg, pooled_channels(cls.__name__, input_shape, mask_head.IN_FEATURES), (num_coarse, side, side)
        )
        point_head = None
        if mask_head.POINT_HEAD_ON:
            check_point_head_name(cfg, cls.__name__, cls.point_head_names)
            check_point_head_classes(cfg, cls.__name__)
            fine_channels = pooled_channels(cls.__name__, input_shape, point_cfg.IN_FEATURES)
            point_head = PointSupPointHead(cfg, fine_channels=fine_channels, coarse_channels=num_coarse)
        return {
            "input_shape": input_shape,
            "coarse_head": coarse_head,
            "coarse_in_features": mask_head.IN_FEATURES,
            "pooler_resolution": mask_head.POOLER_RESOLUTION,
            "point_head": point_head,
            "point_in_features": point_cfg.IN_FEATURES,
            "train_num_points": point_cfg.TRAIN_NUM_POINTS,
            "oversample_ratio": point_cfg.OVERSAMPLE_RATIO,
            "importance_sample_ratio": point_cfg.IMPORTANCE_SAMPLE_RATIO,
            "subdivision_steps": point_cfg.SUBDIVISION_STEPS,
            "subdivision_num_points": point_cfg.SUBDIVISION_NUM_POINTS,
            "point_loss_options": PointLossOptions.from_config(cfg),
            "box_prior": BoxPriorOptions.from_config(cfg),
        }

    # ------------------------------------------------------------------ forward
    def forward(self, features: dict[str, torch.Tensor], instances: list[Instances]):
        """
        Args:
            features: image-level maps (N, C, H_l, W_l) by name.
            instances: training: foreground proposals with ground truth; inference: detections
                with ``pred_boxes`` and ``pred_classes``.

        Returns:
            Training: ``{"loss_mask", ["loss_mask_point"]}``. Inference: ``instances`` with
            ``pred_masks`` (R_i, 1, S, S) probabilities, S = subdivision output side (or the
            coarse side without point head).
        """
        if self.training:
            all_instances = instances
            instances, split = supervised_instances(instances, self.point_loss_options)
            coarse = self._coarse_logits(features, [inst.proposal_boxes for inst in instances])
            losses = kind_losses(
                split,
                self.point_loss_options.point_sup,
                coarse,
                instances,
                lambda rows, inst: self._mask_losses(features, rows, inst),
                lambda rows, inst: self._point_sup_losses(features, rows, inst),
            )
            if self.box_prior.enabled:
                # Mixed: the box-only proposals were dropped above; the prior sees them all again.
                losses.update(
                    self._box_prior_losses(features, all_instances, coarse if split is None else None)
                )
            return losses
        coarse = self._coarse_logits(features, [inst.pred_boxes for inst in instances])
        if self.point_head is None:
            mask_rcnn_inference(coarse, instances)
            return instances
        return self._subdivision_inference(features, coarse, instances)

    def _coarse_logits(self, features: dict[str, torch.Tensor], boxes: list[Boxes]) -> torch.Tensor:
        """(R, K, S, S) coarse logits of the boxes, box-aligned (S = OUTPUT_SIDE_RESOLUTION)."""
        return self.coarse_head(self.coarse_features.on_grid(features, boxes, self.pooler_resolution))

    def _point_logits(
        self,
        coarse: torch.Tensor,
        features: dict[str, torch.Tensor],
        boxes: list[Boxes],
        point_coords: torch.Tensor,
        classes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Point-head logits at points of the instances whose coarse prediction is ``coarse``.

        Args:
            coarse: (R, K, S, S) coarse logits, box-aligned (so sampled at the same (u, v)).
            features: image-level maps by name; boxes: N Boxes, R in total (image coordinates).
            point_coords: (R, P, 2) box-relative (u, v).
            classes: optional (R,) int64: only each box's class row of the point head's predictor
                (see :meth:`PointSupPointHead.forward`).

        Returns:
            (R, C_point, P) logits, or (R, 1, P) with ``classes``.
        """
        assert self.point_head is not None
        fine = self.point_features.at_points(features, boxes, point_coords)
        return self.point_head(fine, point_sample(coarse, point_coords), classes)

    # ------------------------------------------------------------------ training
    def _point_sup_losses(
        self, features: dict[str, torch.Tensor], coarse: torch.Tensor, instances: list[Instances]
    ) -> dict[str, torch.Tensor]:
        """Both losses at the labelled points (out-of-box, ignored and padding points excluded)."""
        point_coords, point_labels = get_point_targets(instances)
        loss_mask = roi_grid_point_loss(
            coarse,
            instances,
            log_prefix="point_rend_coarse",
            point_targets=(point_coords, point_labels),
            normalization=self.point_loss_options.normalization,
        )
        losses = {"loss_mask": loss_mask}
        if self.point_head is None:
            return losses
        if point_labels.numel() == 0:
            losses["loss_mask_point"] = self._zero_point_loss(coarse)
            return losses
        boxes = [inst.proposal_boxes for inst in instances]
        point_logits = self._point_logits(coarse, features, boxes, point_coords.to(coarse.dtype))
        losses["loss_mask_point"] = point_bce_loss(
            point_logits,
            point_labels,
            self.point_loss_options.normalization,
            log_prefix="point_rend_point",
            classes=cat_gt_classes(instances),
        )
        return losses

    def _mask_losses(
        self, features: dict[str, torch.Tensor], coarse: torch.Tensor, instances: list[Instances]
    ) -> dict[str, torch.Tensor]:
        """PointRend's recipe: coarse vs 7x7 mask targets, point head at importance-sampled points."""
        losses = {"loss_mask": mask_rcnn_loss(coarse, instances)}
        if self.point_head is None:
            return losses
        if coarse.shape[0] == 0:
            losses["loss_mask_point"] = self._zero_point_loss(coarse)
            return losses
        gt_classes = cat_gt_classes(instances)
        boxes = [inst.proposal_boxes for inst in instances]
        with torch.no_grad():  # point selection and labels are targets, not part of the graph
            point_coords = get_uncertain_point_coords_with_randomness(
                coarse,
                lambda logits: calculate_uncertainty(select_class_logits(logits, gt_classes)),
                self.train_num_points,
                self.oversample_ratio,
                self.importance_sample_ratio,
            )
            point_labels = get_mask_point_labels(
                instances, point_coords, self.point_loss_options.mask_point_labels
            )
        point_logits = self._point_logits(coarse, features, boxes, point_coords)
        losses["loss_mask_point"] = point_bce_loss(
            point_logits,
            point_labels,
            self.point_loss_options.normalization,
            log_prefix="point_rend_point",
            classes=gt_classes,
        )
        return losses

    def _box_prior_losses(
        self,
        features: dict[str, torch.Tensor],
        instances: list[Instances],
        coarse: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The box prior's terms on the ground-truth class's logits at the RoI grid's cell centres:
        the point head's (the coarse head's, interpolated, without a point head).

        Args:
            features: image-level maps by name.
            instances: per image, the foreground proposals (all kinds with mixed supervision).
            coarse: (R, K, S, S) coarse logits of ``instances`` if already computed.
        """
        boxes = [inst.proposal_boxes for inst in instances]
        if coarse is None:
            coarse = self._coarse_logits(features, boxes)
        grid = self.box_prior.grid_size
        classes = cat_gt_classes(instances, coarse.device)
        coords = roi_grid_points(grid, coarse.shape[0], coarse.device).to(coarse.dtype)
        if self.point_head is None or coarse.shape[0] == 0:
            logits = point_sample(select_class_logits(coarse, classes), coords)
        else:
            logits = self._point_logits(coarse, features, boxes, coords, classes)
        logits = logits.reshape(-1, grid, grid)
        selected = box_prior_selection(instances, self.point_loss_options.mixed_sup)
        losses = roi_box_prior_losses(logits, instances, self.box_prior, selected)
        if self.point_head is not None and coarse.shape[0] == 0:
            losses["loss_prj"] = losses["loss_prj"] + self._zero_point_loss(coarse)
        return losses

    def _zero_point_loss(self, coarse: torch.Tensor) -> torch.Tensor:
        """A zero loss that still touches every point-head parameter (DDP needs each one used)."""
        assert self.point_head is not None
        return coarse.sum() * 0.0 + sum(p.sum() for p in self.point_head.parameters()) * 0.0

    # ------------------------------------------------------------------ inference
    def _subdivision_inference(
        self, features: dict[str, torch.Tensor], coarse: torch.Tensor, instances: list[Instances]
    ) -> list[Instances]:
        """``pred_masks`` by adaptive subdivision of the point head's predicted-class logits.

        The point head is evaluated chunk by chunk on CPU (:func:`chunked_point_logits`) and only
        for each detection's predicted class (the predictor's other K - 1 rows are never computed);
        the logits are those of :meth:`_point_logits` followed by the class selection, up to float
        rounding.

        Args:
            features: image-level maps by name; coarse: (R, K, S, S) coarse logits of the
                detections; instances: detections with ``pred_boxes`` and ``pred_classes``.
        """
        assert self.point_head is not None
        boxes = [inst.pred_boxes for inst in instances]
        pred_classes = torch.cat([inst.pred_classes for inst in instances]).to(torch.int64)
        # p2 is sampled for every chunk at every step: one copy into the layout grid_sample reads
        # fastest pays for itself (same values).
        point_maps = self.point_features.prepare(features)

        def chunk_logits(chunk_boxes: list[Boxes], rows: slice, point_coords: torch.Tensor) -> torch.Tensor:
            return self._point_logits(coarse[rows], point_maps, chunk_boxes, point_coords, pred_classes[rows])

        mask_logits = self.subdivision.mask_logits(chunk_logits, boxes, coarse.device, coarse.dtype)
        mask_rcnn_inference(mask_logits, instances)
        return instances
