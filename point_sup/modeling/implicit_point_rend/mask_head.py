"""Implicit PointRend (paper §4): a per-instance generated point-head MLP as the mask head.

For every RoI a *parameter head* (the shared :class:`~point_sup.modeling.common.conv_fc_head.ConvFCHead`
on (R, C, 14, 14) RoI features) predicts a flat (R, num_params) vector: all weights and biases of a
small point-head MLP (:class:`~point_sup.modeling.implicit_point_rend.point_head.DynamicPointHead`,
paper §4.1), which maps the features of a box-relative point ``(u, v) ∈ [0, 1]²`` (frames:
point_sup.modeling.common.point_features) to mask logits. The mask is queried at labelled points
when training from P_N, at ``TRAIN_NUM_POINTS`` uniform points labelled from the masks when training
from masks (``MODEL.POINT_LOSS.MASK_POINT_LABELS``), and by adaptive subdivision (28² → 224², paper
§4.2) at inference, for each detection's predicted class only.

Loss (paper §4.3): the point BCE (paper §3.2,
:func:`~point_sup.modeling.common.point_loss.point_bce_loss`) as ``loss_mask_point`` plus
``loss_l2 = PARAMS_L2_REGULARIZER * mean(params²)`` over all instances and all ``num_params`` entries
(Detectron2's definition; 0 with a gradient graph when there is no instance).

``MODEL.IMPLICIT_POINTREND.PARAMS_RANK`` r > 0 (ours, not the paper's) factorises the prediction layer
through an r-dimensional shared basis (``param_basis``). Use with ``ROI_MASK_HEAD.POOLER_TYPE: ""``;
``POINT_HEAD.NAME`` ``ImplicitPointHead`` or its default; set ``SUBDIVISION_STEPS`` to 3 (28 → 224).
``ImplicitPointRendPointSupHead`` is the same head under Detectron2 PointSup's name.

The parameter layout, the small variant's initialisation, the parameter counts and what differs from
Detectron2's ``ImplicitPointRendMaskHead``: docs/implementation.md, *Implicit PointRend*.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import ROI_MASK_HEAD_REGISTRY
from detectron2.modeling.roi_heads.mask_head import mask_rcnn_inference
from detectron2.structures import Boxes, Instances
from torch import nn

from ...config import POINT_HEAD_NAME_DEFAULT, check_point_head_classes, check_point_head_name
from ..common.box_prior import BoxPriorOptions, box_prior_selection, roi_box_prior_losses, roi_grid_points
from ..common.conv_fc_head import ConvFCHead, build_conv_fc_head
from ..common.mixed_loss import kind_losses, supervised_instances
from ..common.point_features import FeatureSampler, pooled_channels
from ..common.point_loss import (
    PointLossOptions,
    cat_gt_classes,
    get_mask_point_labels,
    get_point_targets,
    point_bce_loss,
)
from ..common.subdivision import Subdivision
from .point_head import DynamicPointHead

__all__ = ["ImplicitPointRendPointSupHead", "PointSupImplicitPointRendMaskHead"]

logger = logging.getLogger(__name__)


@ROI_MASK_HEAD_REGISTRY.register()
class PointSupImplicitPointRendMaskHead(nn.Module):
    """Implicit PointRend mask head, trainable from masks or from P_N points.

    Use with ``ROI_MASK_HEAD.POOLER_TYPE: ""``: StandardROIHeads then passes the feature dict of
    ROI_HEADS.IN_FEATURES and the head pools what it needs itself.
    """

    # Reads MODEL.POINT_HEAD (NUM_CLASSES must equal ROI_HEADS'): see point_sup.data.checks.
    uses_point_head = True
    # MODEL.POINT_HEAD.NAME values it accepts: Detectron2's name of its point head, or the default.
    point_head_names = ("ImplicitPointHead", POINT_HEAD_NAME_DEFAULT)

    @configurable
    def __init__(
        self,
        input_shape: Mapping[str, ShapeSpec],
        *,
        param_head: ConvFCHead,
        param_in_features: Sequence[str],
        pooler_resolution: int,
        point_head: DynamicPointHead,
        point_in_features: Sequence[str],
        params_l2_weight: float,
        params_init: str = "reference",
        params_rank: int = 0,
        train_num_points: int,
        subdivision_steps: int,
        subdivision_num_points: int,
        point_loss_options: PointLossOptions,
        box_prior: BoxPriorOptions | None = None,
    ) -> None:
        """
        Args:
            input_shape: shapes of the feature maps the head receives (name → ShapeSpec).
            param_head: the parameter head (a ConvFCHead of ``pooler_resolution``² RoI features),
                predicting (params_rank or num_params,) values per RoI; its prediction layer is
                initialised here as ``params_init`` and ``params_rank`` say.
            param_in_features: maps pooled for the parameter head (ROI_MASK_HEAD.IN_FEATURES).
            pooler_resolution: S, side of the pooled grid (ROI_MASK_HEAD.POOLER_RESOLUTION, 14).
            point_head: the generated point head (its layout gives ``num_params``).
            point_in_features: maps sampled at the points (POINT_HEAD.IN_FEATURES).
            params_l2_weight: weight of the L2 loss on generated parameters.
            params_init: "reference" or "shared" (MODEL.IMPLICIT_POINTREND.PARAMS_INIT).
            params_rank: 0 for one prediction layer FC_DIM → num_params (the paper's); r > 0 for
                the shared-basis factorisation FC_DIM → r → num_params (PARAMS_RANK).
            train_num_points: points per RoI sampled uniformly in the box when training from masks.
            subdivision_steps: adaptive subdivision steps; each doubles the side (3: 28 → 224).
            subdivision_num_points: N points recomputed per step; the initial grid is sqrt(N) a side.
            point_loss_options: from points (``point_sup``) or masks, or mixed (sampled mask points
                for mask-supervised proposals, labelled points for point-supervised ones, one L2 over
                both: point_sup.modeling.common.mixed_loss), and the point loss's keys.
            box_prior: ``MODEL.BOX_PRIOR`` (None: off): the box terms on the generated point head's
                logits at a ``grid_size``² grid of each RoI.
        """
        super().__init__()
        _check_param_options(params_init, params_rank)
        self.param_features = FeatureSampler.from_shapes(param_in_features, input_shape)
        self.point_features = FeatureSampler.from_shapes(point_in_features, input_shape)
        self.pooler_resolution = pooler_resolution
        self.params_l2_weight = params_l2_weight
        self.train_num_points = train_num_points
        self.point_loss_options = point_loss_options
        self.box_prior = box_prior or BoxPriorOptions()
        self.box_prior_grid_size = self.box_prior.grid_size
        init_side = math.isqrt(subdivision_num_points)
        if init_side**2 != subdivision_num_points:
            # The initial grid is sqrt(N) x sqrt(N) so that step 0 evaluates exactly N points too.
            raise ValueError(f"SUBDIVISION_NUM_POINTS must be a square, got {subdivision_num_points}")
        self.subdivision = Subdivision(init_side, subdivision_steps, subdivision_num_points)
        self.point_head = point_head
        self.param_head = param_head
        num_params = point_head.num_params
        # The last layer of the generation: the parameter head's own prediction layer, or the basis.
        generator: nn.Linear = self.param_head.prediction
        self.param_basis: nn.Linear | None = None
        if params_rank:
            self.param_basis = nn.Linear(params_rank, num_params)
            # Basis columns of about unit norm, coefficient weights scaled up by sqrt(num_params / r):
            # the generated parameters start with the full layer's N(0, 0.001²) distribution and a
            # gradient step moves them by as much (docs/implementation.md, *Implicit PointRend: the
            # small variant*).
            nn.init.normal_(self.param_basis.weight, std=1.0 / math.sqrt(num_params))
            nn.init.zeros_(self.param_basis.bias)
            coefficient_std = 0.001 * math.sqrt(num_params / params_rank)
            nn.init.normal_(self.param_head.prediction.weight, std=coefficient_std)
            generator = self.param_basis
        if params_init == "shared":  # drawn last: every other initial weight is as with "reference"
            with torch.no_grad():
                generator.bias.copy_(self.point_head.initial_params())
        logger.info(
            "Implicit PointRend: %d generated point-head parameters per instance, %d trainable parameters",
            self.point_head.num_params,
            sum(p.numel() for p in self.parameters()),
        )

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: Mapping[str, ShapeSpec]) -> dict:
        check_point_head_name(cfg, cls.__name__, cls.point_head_names)
        check_point_head_classes(cfg, cls.__name__)
        mask, point, implicit = cfg.MODEL.ROI_MASK_HEAD, cfg.MODEL.POINT_HEAD, cfg.MODEL.IMPLICIT_POINTREND
        # Either switch makes it class-agnostic: ROI_MASK_HEAD's is Mask R-CNN's usual one.
        agnostic = point.CLS_AGNOSTIC_MASK or mask.CLS_AGNOSTIC_MASK
        # Built in the order of the reference's initialisation: the point head's random encoding,
        # then the parameter head (its prediction layer is re-initialised in __init__).
        point_head = DynamicPointHead(
            feature_channels=pooled_channels(cls.__name__, input_shape, point.IN_FEATURES),
            fc_dim=point.FC_DIM,
            num_fc=point.NUM_FC,
            num_outputs=1 if agnostic else cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            image_feature_enabled=implicit.IMAGE_FEATURE_ENABLED,
            pos_enc_enabled=implicit.POS_ENC_ENABLED,
        )
        _check_param_options(implicit.PARAMS_INIT, implicit.PARAMS_RANK)
        channels = pooled_channels(cls.__name__, input_shape, mask.IN_FEATURES)
        return {
            "input_shape": input_shape,
            "param_head": build_conv_fc_head(cfg, channels, (implicit.PARAMS_RANK or point_head.num_params,)),
            "param_in_features": mask.IN_FEATURES,
            "pooler_resolution": mask.POOLER_RESOLUTION,
            "point_head": point_head,
            "point_in_features": point.IN_FEATURES,
            "params_l2_weight": implicit.PARAMS_L2_REGULARIZER,
            "params_init": implicit.PARAMS_INIT,
            "params_rank": implicit.PARAMS_RANK,
            "train_num_points": point.TRAIN_NUM_POINTS,
            "subdivision_steps": point.SUBDIVISION_STEPS,
            "subdivision_num_points": point.SUBDIVISION_NUM_POINTS,
            "point_loss_options": PointLossOptions.from_config(cfg),
            "box_prior": BoxPriorOptions.from_config(cfg),
        }

    @property
    def output_resolution(self) -> int:
        """Side of the predicted masks: sqrt(N) · 2^steps (224 for N = 28², 3 steps)."""
        return self.subdivision.output_side

    # ------------------------------------------------------------------ building blocks
    def predict_params(self, features: Mapping[str, torch.Tensor], boxes: Sequence[Boxes]) -> torch.Tensor:
        """Generated point-head parameters of the boxes.

        Args:
            features: feature maps, (N, C, H, W) each.
            boxes: N Boxes (image coordinates), R in total.

        Returns:
            (R, num_params).
        """
        out = self.param_head(self.param_features.on_grid(features, boxes, self.pooler_resolution))
        return out if self.param_basis is None else self.param_basis(out)

    def point_logits(
        self,
        features: Mapping[str, torch.Tensor],
        boxes: Sequence[Boxes],
        point_coords: torch.Tensor,
        params: torch.Tensor,
        classes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mask logits at box-relative points.

        Args:
            features: feature maps, (N, C, H, W) each.
            boxes: N Boxes, R in total.
            point_coords: (R, P, 2) box-relative (u, v).
            params: (R, num_params) from :meth:`predict_params`.
            classes: optional (R,) classes to evaluate only (see :meth:`DynamicPointHead.forward`).

        Returns:
            (R, K, P), or (R, 1, P) with ``classes``.
        """
        fine_grained = None
        if self.point_head.image_feature_enabled:
            fine_grained = self.point_features.at_points(features, boxes, point_coords)
        return self.point_head(fine_grained, point_coords, params, classes)

    # ------------------------------------------------------------------ forward
    def forward(self, features: Mapping[str, torch.Tensor], instances: list[Instances]):
        """
        Args:
            features: image-level feature maps by name (at least ROI_MASK_HEAD.IN_FEATURES and
                POINT_HEAD.IN_FEATURES), each (N, C, H, W).
            instances: per image; foreground proposals with ``gt_*`` fields in training, detections
                with ``pred_boxes``/``pred_classes`` at inference.

        Returns:
            Training: ``{"loss_mask_point", "loss_l2"}``. Inference: ``instances`` with
            ``pred_masks`` (R_i, 1, M, M) foreground probabilities of the predicted class in box
            coordinates, M = :attr:`output_resolution`, as ``detector_postprocess`` expects.
        """
        if self.training:
            return self._forward_train(features, instances)
        return self._forward_inference(features, instances)

    def _forward_train(self, features: Mapping[str, torch.Tensor], instances: list[Instances]) -> dict:
        all_instances = instances
        instances, split = supervised_instances(instances, self.point_loss_options)
        params = self.predict_params(features, [x.proposal_boxes for x in instances])
        # With no foreground proposal the mean would be NaN; 0 * sum keeps the graph for DDP.
        loss_l2 = self.params_l2_weight * (params**2).mean() if params.numel() else params.sum() * 0.0
        losses = kind_losses(
            split,
            self.point_loss_options.point_sup,
            params,
            instances,
            lambda rows, inst: {"loss_mask_point": self._point_loss(features, inst, rows, point_sup=False)},
            lambda rows, inst: {"loss_mask_point": self._point_loss(features, inst, rows, point_sup=True)},
        )
        if self.box_prior.enabled:
            # Mixed: the box-only proposals were dropped above; the prior sees them all again.
            losses.update(self._box_prior_losses(features, all_instances, params if split is None else None))
        return {**losses, "loss_l2": loss_l2}

    def _box_prior_losses(
        self,
        features: Mapping[str, torch.Tensor],
        instances: list[Instances],
        params: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The box prior's terms on the generated point head's ground-truth-class logits at the RoI
        grid's cell centres.

        Args:
            features: feature maps by name.
            instances: per image, the foreground proposals (all kinds with mixed supervision).
            params: (R, num_params) generated parameters of ``instances`` if already computed.
        """
        boxes = [x.proposal_boxes for x in instances]
        if params is None:
            params = self.predict_params(features, boxes)
        grid = self.box_prior.grid_size
        coords = roi_grid_points(grid, params.shape[0], params.device).to(params.dtype)
        classes = cat_gt_classes(instances, params.device)
        logits = self.point_logits(features, boxes, coords, params, classes).reshape(-1, grid, grid)
        selected = box_prior_selection(instances, self.point_loss_options.mixed_sup)
        return roi_box_prior_losses(logits, instances, self.box_prior, selected)

    def _point_loss(
        self,
        features: Mapping[str, torch.Tensor],
        instances: list[Instances],
        params: torch.Tensor,
        *,
        point_sup: bool,
    ) -> torch.Tensor:
        """The point BCE of the R proposals of ``instances`` whose generated parameters are ``params``
        (R, num_params): at their labelled points (``point_sup``) or at TRAIN_NUM_POINTS points
        labelled from their masks."""
        boxes = [x.proposal_boxes for x in instances]
        if point_sup:
            point_coords, point_labels = get_point_targets(instances)
        else:
            point_coords, point_labels = self._sample_mask_targets(instances, boxes)
        logits = self.point_logits(features, boxes, point_coords, params)
        return point_bce_loss(
            logits,
            point_labels,
            self.point_loss_options.normalization,
            log_prefix="implicit_point_rend",
            classes=cat_gt_classes(instances, params.device),
        )

    def _sample_mask_targets(
        self, instances: list[Instances], boxes: list[Boxes]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """TRAIN_NUM_POINTS uniform box-relative points per proposal, labelled from ``gt_masks``.

        Returns:
            point_coords: (R, P, 2) box-relative (u, v); point_labels: (R, P) in [0, 1].
        """
        cat_boxes = Boxes.cat(boxes)
        # Uniform sampling (paper §4.2): no importance sampling, there is no coarse mask to use.
        point_coords = torch.rand(len(cat_boxes), self.train_num_points, 2, device=cat_boxes.device)
        with torch.no_grad():
            point_labels = get_mask_point_labels(
                instances, point_coords, self.point_loss_options.mask_point_labels
            )
        return point_coords, point_labels

    def _forward_inference(
        self, features: Mapping[str, torch.Tensor], instances: list[Instances]
    ) -> list[Instances]:
        boxes = [x.pred_boxes for x in instances]
        classes = torch.cat([x.pred_classes for x in instances])
        params = self.predict_params(features, boxes)
        mask_logits = self.subdivision_inference(features, boxes, params, classes)
        # Sigmoid of the (already class-selected) logits into pred_masks, split per image.
        mask_rcnn_inference(mask_logits, instances)
        return instances

    def subdivision_inference(
        self,
        features: Mapping[str, torch.Tensor],
        boxes: Sequence[Boxes],
        params: torch.Tensor,
        classes: torch.Tensor,
    ) -> torch.Tensor:
        """Adaptive subdivision (paper §4.2) from a sqrt(N)² grid, evaluating only each instance's
        class row of the point head.

        Args:
            features: feature maps; boxes: N Boxes, R in total; params: (R, num_params);
            classes: (R,) predicted classes.

        Returns:
            (R, 1, M, M) logits of each instance's class, M = :attr:`output_resolution`, cell
            ``(row, col)`` centred at box-relative ``((col + 0.5) / M, (row + 0.5) / M)``.

        The logits are :meth:`point_logits`' (bit for bit on the inputs tested): the generated
        parameters are split and class-selected once, not at every step, and on CPU the point head
        runs chunk by chunk (:meth:`~point_sup.modeling.common.subdivision.Subdivision.mask_logits`) on
        features sampled from a channels-last copy of the maps
        (:meth:`~point_sup.modeling.common.point_features.FeatureSampler.prepare`).
        """
        weights, biases = self.point_head.select_params(params, classes)
        point_maps = None
        if self.point_head.image_feature_enabled:
            point_maps = self.point_features.prepare(features)

        def chunk_logits(chunk_boxes: list[Boxes], rows: slice, point_coords: torch.Tensor) -> torch.Tensor:
            fine_grained = None
            if point_maps is not None:
                fine_grained = self.point_features.at_points(point_maps, chunk_boxes, point_coords)
            return self.point_head.evaluate(
                fine_grained, point_coords, [w[rows] for w in weights], [b[rows] for b in biases]
            )

        return self.subdivision.mask_logits(chunk_logits, boxes, params.device, params.dtype)


@ROI_MASK_HEAD_REGISTRY.register()
class ImplicitPointRendPointSupHead(PointSupImplicitPointRendMaskHead):
    """:class:`PointSupImplicitPointRendMaskHead` under Detectron2 PointSup's head name (see the
    module docstring); its YAML file sets ``INPUT.POINT_SUP: True``, which this head reads."""


def _check_param_options(params_init: str, params_rank: int) -> None:
    """ValueError for an unknown ``PARAMS_INIT`` or a negative ``PARAMS_RANK``."""
    if params_init not in ("reference", "shared"):
        raise ValueError(f"PARAMS_INIT must be 'reference' or 'shared', got {params_init!r}")
    if params_rank < 0:
        raise ValueError(f"PARAMS_RANK must be 0 (full prediction layer) or positive, got {params_rank}")
