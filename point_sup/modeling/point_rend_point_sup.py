"""PointRend's mask head, trainable from labelled points (paper Table 3c) or from masks.

Architecture and hyper-parameters are PointRend's (Kirillov et al., CVPR 2020), written here:

* **Coarse head** (:class:`PointSupCoarseMaskHead`): RoI features of ``ROI_MASK_HEAD.IN_FEATURES``
  sampled on a ``POOLER_RESOLUTION`` (14) grid over the box, a 1x1 conv down to ``CONV_DIM``
  channels (only if there are more), a 2x2 stride-2 conv, ``NUM_FC`` (2) FC layers of ``FC_DIM``
  (1024), and a linear prediction of ``OUTPUT_SIDE_RESOLUTION``² (7x7) logits per class.
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
subdivision from the coarse prediction.

The head must be used with ``ROI_MASK_HEAD.POOLER_TYPE: ""`` so that ``StandardROIHeads`` hands it
the feature dict of ``ROI_HEADS.IN_FEATURES`` instead of pooled features.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, cat
from detectron2.modeling.roi_heads.mask_head import (
    ROI_MASK_HEAD_REGISTRY,
    mask_rcnn_inference,
    mask_rcnn_loss,
)
from detectron2.structures import Boxes, Instances
from torch import nn

from .mask_rcnn_point_sup import roi_grid_point_loss
from .point_features import (
    calculate_uncertainty,
    generate_regular_grid_point_coords,
    get_point_coords_wrt_image,
    get_uncertain_point_coords_on_grid,
    get_uncertain_point_coords_with_randomness,
    point_sample,
    point_sample_fine_grained_features,
)
from .point_loss import get_point_targets, mask_labels_at_points, point_bce_loss, select_class_logits

__all__ = ["PointSupCoarseMaskHead", "PointSupPointHead", "PointSupPointRendMaskHead"]

logger = logging.getLogger(__name__)


class PointSupCoarseMaskHead(nn.Module):
    """PointRend's coarse mask head: convs then FC layers predicting a low-resolution RoI mask."""

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        conv_dim: int,
        fc_dims: Sequence[int],
        num_classes: int,
        output_side: int,
    ):
        """
        Args:
            input_shape: channels and (even) side of the pooled RoI features.
            conv_dim: channels after the optional 1x1 reduction and of the 2x2 stride-2 conv.
            fc_dims: output sizes of the hidden FC layers (>= 1).
            num_classes: prediction channels (1 = class-agnostic).
            output_side: side of the predicted mask (7).
        """
        super().__init__()
        assert len(fc_dims) >= 1, "the coarse head needs at least one FC layer"
        self.num_classes = num_classes
        self.output_side = output_side
        convs: list[nn.Module] = []
        channels = input_shape.channels
        if channels > conv_dim:  # PointRend reduces only when it would otherwise widen the FC input
            convs.append(Conv2d(channels, conv_dim, kernel_size=1, activation=F.relu))
            channels = conv_dim
        convs.append(Conv2d(channels, conv_dim, kernel_size=2, stride=2, activation=F.relu))
        self.convs = nn.Sequential(*convs)
        in_dim = conv_dim * (input_shape.height // 2) * (input_shape.width // 2)
        fcs = []
        for fc_dim in fc_dims:
            fcs.append(nn.Linear(in_dim, fc_dim))
            in_dim = fc_dim
        self.fcs = nn.ModuleList(fcs)
        self.prediction = nn.Linear(in_dim, num_classes * output_side * output_side)

        for conv in self.convs:
            weight_init.c2_msra_fill(conv)
        for fc in self.fcs:
            weight_init.c2_xavier_fill(fc)
        # Near-zero initial logits, as for Mask R-CNN's predictor: start from p = 0.5 everywhere.
        nn.init.normal_(self.prediction.weight, std=0.001)
        nn.init.constant_(self.prediction.bias, 0.0)

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec) -> dict:
        head = cfg.MODEL.ROI_MASK_HEAD
        return {
            "input_shape": input_shape,
            "conv_dim": head.CONV_DIM,
            "fc_dims": [head.FC_DIM] * head.NUM_FC,
            "num_classes": 1 if head.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "output_side": head.OUTPUT_SIDE_RESOLUTION,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(R, C_in, S, S) RoI features -> (R, num_classes, side, side) coarse logits."""
        x = torch.flatten(self.convs(x), start_dim=1)
        for fc in self.fcs:
            x = F.relu(fc(x))
        return self.prediction(x).view(-1, self.num_classes, self.output_side, self.output_side)


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

    def forward(self, fine_features: torch.Tensor, coarse_features: torch.Tensor) -> torch.Tensor:
        """
        Args:
            fine_features: (R, fine_channels, P).
            coarse_features: (R, coarse_channels, P) coarse logits at the same points.

        Returns:
            (R, num_classes, P) point logits.
        """
        x = torch.cat([fine_features, coarse_features], dim=1)
        for fc in self.fcs:
            x = F.relu(fc(x))
            if self.coarse_pred_each_layer:
                x = torch.cat([x, coarse_features], dim=1)
        return self.predictor(x)


@ROI_MASK_HEAD_REGISTRY.register()
class PointSupPointRendMaskHead(nn.Module):
    """PointRend mask head (coarse head + point head) trainable from points or from masks.

    Expects the feature dict of ``StandardROIHeads`` with ``ROI_MASK_HEAD.POOLER_TYPE: ""``.
    """

    @configurable
    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        *,
        coarse_head: PointSupCoarseMaskHead,
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
    ):
        """
        Args:
            input_shape: shapes (stride, channels) of the image-level features handed in.
            coarse_head: built for ``pooler_resolution``² RoI features of ``coarse_in_features``.
            coarse_in_features: features pooled (concatenated over levels) for the coarse head.
            pooler_resolution: side of the regular grid of RoI feature samples (14).
            point_head: the point head, or None for the coarse head alone (POINT_HEAD_ON off).
            point_in_features: fine-grained features of the point head (p2).
            point_sup: train from labelled points instead of masks.
            train_num_points, oversample_ratio, importance_sample_ratio: point selection when
                training from masks (PointRend's N, k, beta).
            subdivision_steps, subdivision_num_points: adaptive subdivision at inference.
            point_loss_normalization, mask_point_labels: ``MODEL.POINT_LOSS.*``.
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
        # Skip subdivision steps that would re-predict every cell anyway: when the upsampled grid has
        # no more cells than points per step, start from the finer grid directly (as PointRend does).
        init_side, steps = coarse_head.output_side, subdivision_steps
        while steps > 0 and 4 * init_side * init_side <= subdivision_num_points:
            init_side *= 2
            steps -= 1
        self.subdivision_init_side = init_side
        self.subdivision_steps = steps
        self.subdivision_num_points = subdivision_num_points
        self.point_loss_normalization = point_loss_normalization
        self.mask_point_labels = mask_point_labels

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
        coarse_head = PointSupCoarseMaskHead(
            cfg, ShapeSpec(channels=coarse_channels, height=resolution, width=resolution)
        )
        point_head = None
        point_in = tuple(point_cfg.IN_FEATURES)
        if mask_head.POINT_HEAD_ON:
            if not point_cfg.CLS_AGNOSTIC_MASK and point_cfg.NUM_CLASSES != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
                raise ValueError(
                    f"MODEL.POINT_HEAD.NUM_CLASSES ({point_cfg.NUM_CLASSES}) must equal "
                    f"MODEL.ROI_HEADS.NUM_CLASSES ({cfg.MODEL.ROI_HEADS.NUM_CLASSES})"
                )
            fine_channels = sum(input_shape[f].channels for f in point_in if f in input_shape)
            point_head = PointSupPointHead(
                cfg, fine_channels=fine_channels, coarse_channels=coarse_head.num_classes
            )
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
            boxes = [inst.proposal_boxes for inst in instances]
            coarse = self.coarse_head(self._roi_features(features, boxes))
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
        """(R, C, S, S) features at the S x S cell centres of each box (S = pooler_resolution).

        Sampling every level at the grid centres equals RoIAlign(aligned, sampling_ratio=1) per
        level; PointRend concatenates the levels instead of assigning each box one level.
        """
        num_boxes = sum(len(b) for b in boxes)
        side = self.pooler_resolution
        device = next(iter(features.values())).device
        grid = generate_regular_grid_point_coords(num_boxes, side, device)
        sampled, _ = self._fine_features(features, self.coarse_in_features, boxes, grid)
        return sampled.view(num_boxes, sampled.shape[1], side, side)

    def _fine_features(
        self,
        features: dict[str, torch.Tensor],
        names: Sequence[str],
        boxes: list[Boxes],
        point_coords: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(R, C, P) features of ``names`` at box-relative ``point_coords`` (R, P, 2)."""
        return point_sample_fine_grained_features(
            [features[n] for n in names], [self.feature_scales[n] for n in names], boxes, point_coords
        )

    def _point_logits(
        self,
        features: dict[str, torch.Tensor],
        boxes: list[Boxes],
        point_coords: torch.Tensor,
        coarse: torch.Tensor,
    ) -> torch.Tensor:
        """(R, C_point, P) point-head logits at box-relative ``point_coords`` (R, P, 2)."""
        assert self.point_head is not None
        fine, _ = self._fine_features(features, self.point_in_features, boxes, point_coords)
        return self.point_head(fine, point_sample(coarse, point_coords))

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
        point_logits = select_class_logits(point_logits, self._gt_classes(instances)).squeeze(1)
        losses["loss_mask_point"] = point_bce_loss(
            point_logits, point_labels, self.point_loss_normalization, log_prefix="point_rend_point"
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
        gt_classes = self._gt_classes(instances)
        boxes = [inst.proposal_boxes for inst in instances]
        with torch.no_grad():  # point selection and labels are targets, not part of the graph
            point_coords = get_uncertain_point_coords_with_randomness(
                coarse,
                lambda logits: calculate_uncertainty(select_class_logits(logits, gt_classes)),
                self.train_num_points,
                self.oversample_ratio,
                self.importance_sample_ratio,
            )
            coords_wrt_image = get_point_coords_wrt_image(Boxes.cat(boxes).tensor, point_coords)
            labels = []
            for inst, coords in zip(
                instances, torch.split(coords_wrt_image, [len(i) for i in instances]), strict=True
            ):
                if len(inst) > 0:
                    labels.append(
                        mask_labels_at_points(inst.gt_masks, coords, inst.image_size, self.mask_point_labels)
                    )
            point_labels = cat(labels)
        point_logits = self._point_logits(features, boxes, point_coords, coarse)
        point_logits = select_class_logits(point_logits, gt_classes).squeeze(1)
        losses["loss_mask_point"] = point_bce_loss(
            point_logits, point_labels, self.point_loss_normalization, log_prefix="point_rend_point"
        )
        return losses

    def _zero_point_loss(self, coarse: torch.Tensor) -> torch.Tensor:
        """A zero loss that still touches every point-head parameter (DDP needs each one used)."""
        assert self.point_head is not None
        return coarse.sum() * 0.0 + sum(p.sum() for p in self.point_head.parameters()) * 0.0

    @staticmethod
    def _gt_classes(instances: list[Instances]) -> torch.Tensor:
        return cat([inst.gt_classes for inst in instances if len(inst) > 0]).to(torch.int64)

    # ------------------------------------------------------------------ inference
    def _subdivision_inference(
        self, features: dict[str, torch.Tensor], coarse: torch.Tensor, instances: list[Instances]
    ) -> list[Instances]:
        """Adaptive subdivision: point-head logits on a regular grid, then repeatedly upsample x2
        and re-predict the ``subdivision_num_points`` most uncertain cells.

        Only the predicted class's channel is kept between steps (all that mask_rcnn_inference
        uses), so memory is (R, 1, S, S) rather than (R, C, S, S).
        """
        boxes = [inst.pred_boxes for inst in instances]
        num_boxes = coarse.shape[0]
        side = self.subdivision_init_side
        if num_boxes == 0:
            final_side = side * 2**self.subdivision_steps
            mask_rcnn_inference(coarse.new_zeros((0, 1, final_side, final_side)), instances)
            return instances
        pred_classes = cat([inst.pred_classes for inst in instances]).to(torch.int64)
        grid = generate_regular_grid_point_coords(num_boxes, side, coarse.device)
        logits = select_class_logits(self._point_logits(features, boxes, grid, coarse), pred_classes)
        mask_logits = logits.view(num_boxes, 1, side, side)
        for _ in range(self.subdivision_steps):
            mask_logits = F.interpolate(mask_logits, scale_factor=2, mode="bilinear", align_corners=False)
            R, _, H, W = mask_logits.shape
            indices, coords = get_uncertain_point_coords_on_grid(
                calculate_uncertainty(mask_logits), self.subdivision_num_points
            )
            point_logits = self._point_logits(features, boxes, coords, coarse)
            point_logits = select_class_logits(point_logits, pred_classes)  # (R, 1, P)
            mask_logits = mask_logits.view(R, 1, H * W).scatter(2, indices.unsqueeze(1), point_logits)
            mask_logits = mask_logits.view(R, 1, H, W)
        mask_rcnn_inference(mask_logits, instances)
        return instances
