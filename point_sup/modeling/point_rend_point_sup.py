"""PointRend's mask head, trainable from labelled points (paper Table 3c) or from masks.

Architecture and hyper-parameters are PointRend's (Kirillov et al., CVPR 2020), written here:

* **Coarse head** (:class:`~point_sup.modeling.conv_fc_head.ConvFCHead`, Detectron2's): RoI
  features of ``ROI_MASK_HEAD.IN_FEATURES`` sampled on a ``POOLER_RESOLUTION`` (14) grid over the
  box (:func:`~point_sup.modeling.point_features.roi_grid_features`), a 1x1 conv down to
  ``CONV_DIM`` channels (only if there are more), a 2x2 stride-2 conv, ``NUM_FC`` (2) FC layers of
  ``FC_DIM`` (1024), and a linear prediction of ``OUTPUT_SIDE_RESOLUTION``² (7x7) logits per class.
* **Point head** (:class:`PointSupPointHead`): an MLP (1x1 Conv1d) over the fine-grained
  ``POINT_HEAD.IN_FEATURES`` (p2) features at a point concatenated with the coarse prediction
  interpolated there; ``NUM_FC`` (3) layers of ``FC_DIM`` (256), coarse prediction appended to
  every layer's input with ``COARSE_PRED_EACH_LAYER``.

Training from points (``INPUT.POINT_SUP``): ``loss_mask`` is the point BCE of the 7x7 coarse logits
interpolated bilinearly at the labelled points, ``loss_mask_point`` the point BCE of the point head
evaluated at the same labelled points. Training from masks: PointRend's recipe (``mask_rcnn_loss``
of the coarse logits at 7x7; the point head at ``TRAIN_NUM_POINTS`` importance-sampled points
labelled from the masks, bilinearly by default: ``MODEL.POINT_LOSS.MASK_POINT_LABELS``). Both
point BCEs are normalised as ``MODEL.POINT_LOSS.NORMALIZATION`` says. Inference: adaptive
subdivision (:func:`~point_sup.modeling.subdivision.adaptive_subdivision`) from the coarse
prediction, evaluating only the predicted class.

The head must be used with ``ROI_MASK_HEAD.POOLER_TYPE: ""`` so that ``StandardROIHeads`` hands it
the feature dict of ``ROI_HEADS.IN_FEATURES`` instead of pooled features. ``MODEL.POINT_HEAD.NAME``
must be ``StandardPointHead`` (the default), the point head it has.

What is Detectron2's and what is not: the coarse head is ``detectron2.projects.point_rend``'s
``ConvFCHead``. The point head is written here rather than taken from its ``StandardPointHead``
because that class sizes the coarse-prediction input by the point head's own class count
(``POINT_HEAD.CLS_AGNOSTIC_MASK``), whereas here it follows the coarse head
(``ROI_MASK_HEAD.CLS_AGNOSTIC_MASK``), so either may be class-agnostic alone. The mask head is not a
``PointRendMaskHead`` subclass: that one always subdivides all C classes (C times the memory at
224²), fails on zero detections in training, and has no point supervision, i.e. every method would
be overridden.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads.mask_head import (
    ROI_MASK_HEAD_REGISTRY,
    mask_rcnn_inference,
    mask_rcnn_loss,
)
from detectron2.structures import Boxes, Instances
from torch import nn

from ..config import check_point_head_classes, check_point_head_name, is_mixed_supervision
from .conv_fc_head import ConvFCHead
from .mixed_loss import combine_kind_losses, split_by_supervision
from .point_features import (
    calculate_uncertainty,
    features_for_point_sampling,
    get_uncertain_point_coords_with_randomness,
    point_sample,
    roi_grid_features,
    sample_named_features,
)
from .point_loss import (
    cat_gt_classes,
    get_mask_point_labels,
    get_point_targets,
    point_bce_loss,
    roi_grid_point_loss,
    select_class_logits,
)
from .subdivision import adaptive_subdivision, chunked_point_logits, skip_full_steps

__all__ = ["PointSupPointHead", "PointSupPointRendMaskHead"]

logger = logging.getLogger(__name__)


class PointSupPointHead(nn.Module):
    """PointRend's point head: a per-point MLP over fine-grained and coarse prediction features."""

    @configurable
    def __init__(
        self,
        *,
        fine_channels: int,
        coarse_channels: int,
        fc_dim: int,
        num_fc: int,
        num_classes: int,
        coarse_pred_each_layer: bool,
    ):
        """
        Args:
            fine_channels: channels of the fine-grained features at a point (sum over levels).
            coarse_channels: channels of the coarse prediction at a point.
            fc_dim, num_fc: hidden layers of the MLP.
            num_classes: output channels (1 = class-agnostic).
            coarse_pred_each_layer: concatenate the coarse prediction to every layer's input, not
                only the first (PointRend's default).
        """
        super().__init__()
        self.coarse_pred_each_layer = coarse_pred_each_layer
        in_dim = fine_channels + coarse_channels
        fcs = []
        for _ in range(num_fc):
            fcs.append(nn.Conv1d(in_dim, fc_dim, kernel_size=1))
            in_dim = fc_dim + (coarse_channels if coarse_pred_each_layer else 0)
        self.fcs = nn.ModuleList(fcs)
        self.predictor = nn.Conv1d(in_dim, num_classes, kernel_size=1)
        for fc in self.fcs:
            weight_init.c2_msra_fill(fc)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.constant_(self.predictor.bias, 0.0)

    @classmethod
    def from_config(cls, cfg, fine_channels: int, coarse_channels: int) -> dict:
        head = cfg.MODEL.POINT_HEAD
        return {
            "fine_channels": fine_channels,
            "coarse_channels": coarse_channels,
            "fc_dim": head.FC_DIM,
            "num_fc": head.NUM_FC,
            "num_classes": 1 if head.CLS_AGNOSTIC_MASK else head.NUM_CLASSES,
            "coarse_pred_each_layer": head.COARSE_PRED_EACH_LAYER,
        }

    def forward(
        self,
        fine_features: torch.Tensor,
        coarse_features: torch.Tensor,
        classes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            fine_features: (R, fine_channels, P).
            coarse_features: (R, coarse_channels, P) coarse logits at the same points.
            classes: optional (R,) int64; if given (and the head is class-specific) only the
                predictor row of each instance's class is evaluated (inference: the same logits as
                selecting that row from all K, up to float rounding, K times cheaper).

        Returns:
            (R, num_classes, P) point logits, or (R, 1, P) when ``classes`` is given.
        """
        x = torch.cat([fine_features, coarse_features], dim=1)
        for fc in self.fcs:
            x = F.relu(fc(x))
            if self.coarse_pred_each_layer:
                x = torch.cat([x, coarse_features], dim=1)
        if classes is None or self.predictor.out_channels == 1:
            return self.predictor(x)
        # (R, 1, in) @ (R, in, P) + (R, 1, 1): each instance's own row of the 1x1 conv.
        weight = self.predictor.weight[classes, :, 0].unsqueeze(1)
        bias = self.predictor.bias[classes].view(-1, 1, 1)
        return torch.baddbmm(bias, weight, x)


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
        point_sup: bool,
        train_num_points: int,
        oversample_ratio: float,
        importance_sample_ratio: float,
        subdivision_steps: int,
        subdivision_num_points: int,
        point_loss_normalization: str = "all_points",
        mask_point_labels: str = "bilinear",
        mixed_sup: bool = False,
        mixed_weighting: str = "instances",
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
            point_sup: train from labelled points instead of masks.
            train_num_points, oversample_ratio, importance_sample_ratio: point selection when
                training from masks (PointRend's N, k, beta).
            subdivision_steps, subdivision_num_points: adaptive subdivision at inference.
            point_loss_normalization, mask_point_labels: ``MODEL.POINT_LOSS.*``.
            mixed_sup, mixed_weighting: ``MODEL.MIXED_SUP.ENABLED`` / ``.WEIGHTING``: both
                recipes, each on its own instances (point_sup.modeling.mixed_loss).
        """
        super().__init__()
        missing = set(coarse_in_features) | set(point_in_features if point_head is not None else ())
        missing -= set(input_shape)
        if missing:
            raise ValueError(
                f"{type(self).__name__} needs features {sorted(missing)}, which ROI_HEADS.IN_FEATURES "
                f"({sorted(input_shape)}) does not provide"
            )
        self.feature_scales = {name: 1.0 / spec.stride for name, spec in input_shape.items()}
        self.coarse_head = coarse_head
        self.coarse_in_features = tuple(coarse_in_features)
        self.pooler_resolution = pooler_resolution
        self.point_head = point_head
        self.point_in_features = tuple(point_in_features)
        self.point_sup = point_sup
        self.train_num_points = train_num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.subdivision_init_side, self.subdivision_steps = skip_full_steps(
            coarse_head.output_shape[-1], subdivision_steps, subdivision_num_points
        )
        self.subdivision_num_points = subdivision_num_points
        self.point_loss_normalization = point_loss_normalization
        self.mask_point_labels = mask_point_labels
        self.mixed_sup = mixed_sup
        self.mixed_weighting = mixed_weighting

    @classmethod
    def from_config(cls, cfg, input_shape) -> dict:
        if not isinstance(input_shape, dict):
            raise ValueError(
                "PointSupPointRendMaskHead samples image-level features itself: set "
                "MODEL.ROI_MASK_HEAD.POOLER_TYPE to '' so that ROI heads pass the feature dict"
            )
        mask_head, point_cfg = cfg.MODEL.ROI_MASK_HEAD, cfg.MODEL.POINT_HEAD
        coarse_in = tuple(mask_head.IN_FEATURES)
        resolution = mask_head.POOLER_RESOLUTION
        coarse_channels = sum(input_shape[f].channels for f in coarse_in if f in input_shape)
        num_coarse = 1 if mask_head.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES
        side = mask_head.OUTPUT_SIDE_RESOLUTION
        coarse_head = ConvFCHead(
            ShapeSpec(channels=coarse_channels, height=resolution, width=resolution),
            conv_dim=mask_head.CONV_DIM,
            fc_dims=[mask_head.FC_DIM] * mask_head.NUM_FC,
            output_shape=(num_coarse, side, side),
        )
        point_head = None
        point_in = tuple(point_cfg.IN_FEATURES)
        if mask_head.POINT_HEAD_ON:
            check_point_head_name(cfg, cls.__name__, cls.point_head_names)
            check_point_head_classes(cfg, cls.__name__)
            fine_channels = sum(input_shape[f].channels for f in point_in if f in input_shape)
            point_head = PointSupPointHead(cfg, fine_channels=fine_channels, coarse_channels=num_coarse)
        return {
            "input_shape": input_shape,
            "coarse_head": coarse_head,
            "coarse_in_features": coarse_in,
            "pooler_resolution": resolution,
            "point_head": point_head,
            "point_in_features": point_in,
            "point_sup": bool(cfg.INPUT.POINT_SUP),
            "train_num_points": point_cfg.TRAIN_NUM_POINTS,
            "oversample_ratio": point_cfg.OVERSAMPLE_RATIO,
            "importance_sample_ratio": point_cfg.IMPORTANCE_SAMPLE_RATIO,
            "subdivision_steps": point_cfg.SUBDIVISION_STEPS,
            "subdivision_num_points": point_cfg.SUBDIVISION_NUM_POINTS,
            "point_loss_normalization": cfg.MODEL.POINT_LOSS.NORMALIZATION,
            "mask_point_labels": cfg.MODEL.POINT_LOSS.MASK_POINT_LABELS,
            "mixed_sup": is_mixed_supervision(cfg),
            "mixed_weighting": cfg.MODEL.MIXED_SUP.WEIGHTING,
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
            split = split_by_supervision(instances, self.mixed_weighting) if self.mixed_sup else None
            if split is not None:
                instances = split.supervised  # box-only proposals get no mask head at all
            boxes = [inst.proposal_boxes for inst in instances]
            coarse = self.coarse_head(self._roi_features(features, boxes))
            if split is not None:
                return combine_kind_losses(
                    self._mask_losses(features, coarse[split.mask_rows], split.masks),
                    self._point_sup_losses(features, coarse[split.points_rows], split.points),
                    split.weights,
                )
            if self.point_sup:
                return self._point_sup_losses(features, coarse, instances)
            return self._mask_losses(features, coarse, instances)
        boxes = [inst.pred_boxes for inst in instances]
        coarse = self.coarse_head(self._roi_features(features, boxes))
        if self.point_head is None:
            mask_rcnn_inference(coarse, instances)
            return instances
        return self._subdivision_inference(features, coarse, instances)

    def _roi_features(self, features: dict[str, torch.Tensor], boxes: list[Boxes]) -> torch.Tensor:
        """(R, C, S, S) features at the S x S cell centres of each box (S = pooler_resolution)."""
        return roi_grid_features(
            features, self.coarse_in_features, self.feature_scales, boxes, self.pooler_resolution
        )

    def _point_logits(
        self,
        features: dict[str, torch.Tensor],
        boxes: list[Boxes],
        point_coords: torch.Tensor,
        coarse: torch.Tensor,
        classes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Point-head logits at points.

        Args:
            features: image-level maps by name; boxes: N Boxes, R in total (image coordinates).
            point_coords: (R, P, 2) box-relative (u, v).
            coarse: (R, K, S, S) coarse logits, box-aligned (so sampled at the same (u, v)).
            classes: optional (R,) int64: only each box's class row of the point head's predictor
                (see :meth:`PointSupPointHead.forward`).

        Returns:
            (R, C_point, P) logits, or (R, 1, P) with ``classes``.
        """
        assert self.point_head is not None
        fine = sample_named_features(
            features, self.point_in_features, self.feature_scales, boxes, point_coords
        )
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
            normalization=self.point_loss_normalization,
        )
        losses = {"loss_mask": loss_mask}
        if self.point_head is None:
            return losses
        if point_labels.numel() == 0:
            losses["loss_mask_point"] = self._zero_point_loss(coarse)
            return losses
        boxes = [inst.proposal_boxes for inst in instances]
        point_logits = self._point_logits(features, boxes, point_coords.to(coarse.dtype), coarse)
        losses["loss_mask_point"] = point_bce_loss(
            point_logits,
            point_labels,
            self.point_loss_normalization,
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
            point_labels = get_mask_point_labels(instances, point_coords, self.mask_point_labels)
        point_logits = self._point_logits(features, boxes, point_coords, coarse)
        losses["loss_mask_point"] = point_bce_loss(
            point_logits,
            point_labels,
            self.point_loss_normalization,
            log_prefix="point_rend_point",
            classes=gt_classes,
        )
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
        point_maps = features_for_point_sampling(features, self.point_in_features)

        def chunk_logits(chunk_boxes: list[Boxes], rows: slice, point_coords: torch.Tensor) -> torch.Tensor:
            return self._point_logits(point_maps, chunk_boxes, point_coords, coarse[rows], pred_classes[rows])

        mask_logits = adaptive_subdivision(
            lambda point_coords: chunked_point_logits(chunk_logits, boxes, point_coords),
            coarse.shape[0],
            self.subdivision_init_side,
            self.subdivision_steps,
            self.subdivision_num_points,
            coarse.device,
            coarse.dtype,
        )
        mask_rcnn_inference(mask_logits, instances)
        return instances
