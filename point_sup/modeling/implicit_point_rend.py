"""Implicit PointRend (paper §4): a per-instance generated point-head MLP as the mask head.

For every RoI a *parameter head* (PointRend's coarse-mask-head architecture, the shared
:class:`~point_sup.modeling.conv_fc_head.ConvFCHead`) predicts all
weights and biases of a small *point head* MLP; the point head maps the features of a point to a mask
logit. The mask is thus represented implicitly by those parameters and can be queried at any point:
at labelled points for training from P_N annotations, at uniformly sampled points for training from
masks, and by adaptive subdivision (28² → 224², paper §4.2) at inference.

Point-head input per point (``in_channels`` = 256 + C_p2 with the default keys):

* a random Fourier encoding of the point's box-relative position (``POS_ENC_ENABLED``): with
  ``(u, v)`` in ``[0, 1]^2`` box-relative (see :mod:`point_sup.modeling.point_features`), the
  encoded position is ``q = 2 * (u, v) - 1`` (relative to the box centre, scaled by the half box
  size, so ``[-1, 1]^2`` covers the box), and the encoding is ``[sin(2π q G), cos(2π q G)]`` with a
  fixed ``G ~ N(0, 1)^(2 x 128)`` drawn at construction (buffer ``pos_enc_gaussian``, saved in
  checkpoints): 128 sines then 128 cosines. Same as Detectron2's ``ImplicitPointHead``.
* then the bilinearly sampled fine-grained features (``IMAGE_FEATURE_ENABLED``, POINT_HEAD.IN_FEATURES,
  p2 by default).

Layout of the generated parameter vector (per instance, length ``num_params``) — kept identical to
Detectron2's ``ImplicitPointHead`` so a checkpoint's prediction layer needs no permutation: first all
weight matrices layer by layer, each ``(out, in)`` row-major, then all bias vectors layer by layer.
Layers: ``in_channels → FC_DIM`` then ``NUM_FC - 1`` times ``FC_DIM → FC_DIM`` (ReLU after each of these
``NUM_FC`` hidden layers), then ``FC_DIM → K`` logits, K = NUM_CLASSES or 1 (CLS_AGNOSTIC_MASK).

Loss (paper §4.3): the point BCE (:func:`~point_sup.modeling.point_loss.point_bce_loss`, normalised
as ``MODEL.POINT_LOSS.NORMALIZATION`` says) as ``loss_mask_point`` plus
``loss_l2 = PARAMS_L2_REGULARIZER * mean(params²)``, the mean of the squared generated parameters
over all instances and all ``num_params`` entries (Detectron2's definition; it is ``0`` with a
gradient graph when there is no instance).

Training from masks labels the uniformly sampled points as Detectron2 does by default (the bit mask
interpolated bilinearly, soft labels near edges); ``MODEL.POINT_LOSS.MASK_POINT_LABELS: "pixel"``
labels a point by the mask pixel that contains it instead
(:func:`~point_sup.modeling.point_loss.mask_labels_at_points`: the rule by which P_N points are
labelled).

Differences from Detectron2's ``ImplicitPointRendMaskHead``, all deliberate:

* Training from points (INPUT.POINT_SUP) is supported, as in Detectron2's PointSup
  (``ImplicitPointRendPointSupHead``): points outside the proposal box are ignored.
* Inference evaluates only the predicted class's output row of the point head and keeps (R, 1, H, W)
  logits instead of (R, K, H, W): the same ``pred_masks``, K times less memory at 224².
* Zero instances work in training (the reference's ``mean`` of an empty tensor is NaN) and inference,
  and so do instances without a labelled point (``gt_point_coords`` (G, 0, 2): user data with empty
  point lists, point-based augmentation that kept no point inside the image): the point loss is 0
  with every parameter in the graph.

Parameter count (COCO, K = 80, p2 with 256 channels, defaults above): ``num_params`` = 512·256 +
2·256·256 + 256·80 + 3·256 + 80 = 283,472, so the parameter head's prediction layer alone has
1024 · 283,472 = 290,275,328 weights; the head has 304,716,880 trainable parameters in all.
:data:`LIGHT_VARIANT_OVERRIDES` is the documented lighter option (parameter-head FC width 256,
class-agnostic point head): 263,169 generated parameters, 71,174,145 trainable (4.3x fewer). See
:func:`count_parameters` and ``bench/bench_implicit_point_rend.py``.

Small variant (``MODEL.IMPLICIT_POINTREND.PARAMS_RANK`` r > 0; ours, not the paper's): the
prediction layer is factorised, ``params = b + B (A h + a)`` for the parameter head's last hidden
features h (FC_DIM), with A (r x FC_DIM) the parameter head's ``prediction`` layer (now r outputs:
the per-instance coefficients) and ``param_basis`` = (B, b), B (num_params x r) a basis of
point-head MLPs shared by all instances and b their common offset. Everything downstream (the
generated MLP, its inputs, the L2 on the generated parameters, subdivision) is unchanged. Its
initialisation keeps the generated parameters' initial distribution and the size of a gradient
step on them: B with columns of about unit norm (std 1/sqrt(num_params)), A with std
0.001·sqrt(num_params / r) (the full layer's 0.001, scaled up accordingly), a and b zero;
``PARAMS_INIT: shared`` puts the shared MLP in b. With r = 32
(``configs/COCO/implicit_point_rend_R_50_FPN_3x_P10_point_aug_small.yaml``) the COCO head has
23,545,456 trainable parameters, 12.9x fewer than the paper-faithful 304,716,880, and the
prediction costs FC_DIM·r + r·num_params instead of FC_DIM·num_params multiply-adds per instance
(32x fewer).

Config: ROI_MASK_HEAD.{IN_FEATURES, POOLER_RESOLUTION, CONV_DIM, FC_DIM, NUM_FC}, POINT_HEAD.{NAME,
NUM_CLASSES, IN_FEATURES, FC_DIM, NUM_FC, CLS_AGNOSTIC_MASK, TRAIN_NUM_POINTS, SUBDIVISION_STEPS,
SUBDIVISION_NUM_POINTS}, IMPLICIT_POINTREND.*, INPUT.POINT_SUP. POINT_HEAD.NAME must be
``ImplicitPointHead`` (Detectron2's name for the generated point head) or be left at its default
(see :mod:`point_sup.config`). Set SUBDIVISION_STEPS to 3 (28 → 224, as the paper and Detectron2's
Implicit PointRend configs do); the shared default 5 is PointRend's (7 → 224).

``ImplicitPointRendPointSupHead`` is the same head under Detectron2 PointSup's name, so that
project's ``implicit_pointrend_R_50_FPN_3x_point_sup_point_aug_coco.yaml`` builds here (Detectron2's
PointSup project, not part of the detectron2 package, registers that name too: import one of the two).

What is Detectron2's: the parameter head is ``detectron2.projects.point_rend``'s ``ConvFCHead``
(hence the same parameter names under ``param_head.``). The point head and the mask head are not
subclasses of its ``ImplicitPointHead`` / ``ImplicitPointRendMaskHead``: the point head would lose
the predicted-class-only evaluation (its forward always computes all K rows), ``split_params`` /
``initial_params`` (``PARAMS_INIT: shared``) and its buffer name; the mask head would override
every method (point supervision, zero instances, class-selected subdivision).
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

from ..config import (
    POINT_HEAD_NAME_DEFAULT,
    check_point_head_classes,
    check_point_head_name,
    is_mixed_supervision,
)
from .conv_fc_head import ConvFCHead
from .implicit_point_head import DynamicPointHead
from .mixed_loss import combine_kind_losses, split_by_supervision
from .point_features import features_for_point_sampling, roi_grid_features, sample_named_features
from .point_loss import cat_gt_classes, get_mask_point_labels, get_point_targets, point_bce_loss
from .subdivision import adaptive_subdivision, chunked_point_logits

__all__ = [
    "LIGHT_VARIANT_OVERRIDES",
    "ImplicitPointRendPointSupHead",
    "PointSupImplicitPointRendMaskHead",
    "convert_from_detectron2_implicit_pointrend",
    "convert_to_detectron2_implicit_pointrend",
    "count_parameters",
]

logger = logging.getLogger(__name__)

# The documented lighter variant (``cfg.merge_from_list(LIGHT_VARIANT_OVERRIDES)``). The parameter
# head's size is dominated by its prediction layer, (last hidden width) x num_params, and num_params
# is dominated by the point head's hidden layers, so a class-agnostic point head alone saves only 7 %
# (the per-class part is just the 256 x K output layer). What does shrink it is a narrower parameter
# head (paper §4.3: "Implicit PointRend performs as well with a smaller parameter head"): FC width 256
# instead of 1024 makes the prediction layer 4x smaller. Note that Detectron2's standard box head
# (two FC of 1024) would NOT be lighter: its last layer is 1024 wide too.
LIGHT_VARIANT_OVERRIDES: list = [
    "MODEL.ROI_MASK_HEAD.FC_DIM",
    256,
    "MODEL.POINT_HEAD.CLS_AGNOSTIC_MASK",
    True,
]


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
        param_in_features: Sequence[str],
        pooler_resolution: int,
        conv_dim: int,
        fc_dims: Sequence[int],
        point_in_features: Sequence[str],
        num_classes: int,
        cls_agnostic_mask: bool,
        point_fc_dim: int,
        point_num_fc: int,
        image_feature_enabled: bool,
        pos_enc_enabled: bool,
        params_l2_weight: float,
        params_init: str = "reference",
        params_rank: int = 0,
        point_sup: bool,
        point_loss_normalization: str = "all_points",
        mask_point_labels: str = "bilinear",
        train_num_points: int,
        subdivision_steps: int,
        subdivision_num_points: int,
        mixed_sup: bool = False,
        mixed_weighting: str = "instances",
    ) -> None:
        """
        Args:
            input_shape: shapes of the feature maps the head receives (name → ShapeSpec).
            param_in_features: maps pooled for the parameter head (ROI_MASK_HEAD.IN_FEATURES).
            pooler_resolution: S, side of the pooled grid (ROI_MASK_HEAD.POOLER_RESOLUTION, 14).
            conv_dim, fc_dims: parameter head widths (ROI_MASK_HEAD.CONV_DIM, NUM_FC x FC_DIM).
            point_in_features: maps sampled at the points (POINT_HEAD.IN_FEATURES).
            num_classes: foreground classes.
            cls_agnostic_mask: one mask logit per point instead of one per class.
            point_fc_dim, point_num_fc: point head MLP (POINT_HEAD.FC_DIM, NUM_FC).
            image_feature_enabled, pos_enc_enabled: point head inputs (MODEL.IMPLICIT_POINTREND).
            params_l2_weight: weight of the L2 loss on generated parameters.
            params_init: "reference" or "shared" (MODEL.IMPLICIT_POINTREND.PARAMS_INIT).
            params_rank: 0 for one prediction layer FC_DIM → num_params (the paper's); r > 0 for
                the shared-basis factorisation FC_DIM → r → num_params (PARAMS_RANK; module
                docstring, *Small variant*).
            point_sup: train from ``gt_point_coords``/``gt_point_labels`` instead of ``gt_masks``.
            point_loss_normalization, mask_point_labels: ``MODEL.POINT_LOSS.*``.
            train_num_points: points per RoI sampled uniformly in the box when training from masks.
            subdivision_steps: adaptive subdivision steps; each doubles the side (3: 28 → 224).
            subdivision_num_points: N points recomputed per step; the initial grid is sqrt(N) a side.
            mixed_sup, mixed_weighting: ``MODEL.MIXED_SUP.ENABLED`` / ``.WEIGHTING``: sampled mask
                points for mask-supervised proposals, labelled points for point-supervised ones,
                one L2 over both (point_sup.modeling.mixed_loss).
        """
        super().__init__()
        self.param_in_features = tuple(param_in_features)
        self.point_in_features = tuple(point_in_features)
        self.feature_scales = {k: 1.0 / v.stride for k, v in input_shape.items()}
        self.pooler_resolution = pooler_resolution
        self.params_l2_weight = params_l2_weight
        self.point_sup = point_sup
        self.mixed_sup = mixed_sup
        self.mixed_weighting = mixed_weighting
        self.train_num_points = train_num_points
        self.subdivision_steps = subdivision_steps
        self.subdivision_num_points = subdivision_num_points
        self.point_loss_normalization = point_loss_normalization
        self.mask_point_labels = mask_point_labels
        self.init_resolution = math.isqrt(subdivision_num_points)
        if self.init_resolution**2 != subdivision_num_points:
            # The initial grid is sqrt(N) x sqrt(N) so that step 0 evaluates exactly N points too.
            raise ValueError(f"SUBDIVISION_NUM_POINTS must be a square, got {subdivision_num_points}")

        self.point_head = DynamicPointHead(
            feature_channels=sum(input_shape[f].channels for f in self.point_in_features),
            fc_dim=point_fc_dim,
            num_fc=point_num_fc,
            num_outputs=1 if cls_agnostic_mask else num_classes,
            image_feature_enabled=image_feature_enabled,
            pos_enc_enabled=pos_enc_enabled,
        )
        pooled_shape = ShapeSpec(
            channels=sum(input_shape[f].channels for f in self.param_in_features),
            height=pooler_resolution,
            width=pooler_resolution,
        )
        if params_init not in ("reference", "shared"):
            raise ValueError(f"PARAMS_INIT must be 'reference' or 'shared', got {params_init!r}")
        if params_rank < 0:
            raise ValueError(f"PARAMS_RANK must be 0 (full prediction layer) or positive, got {params_rank}")
        num_params = self.point_head.num_params
        self.param_head = ConvFCHead(
            pooled_shape, conv_dim=conv_dim, fc_dims=fc_dims, output_shape=(params_rank or num_params,)
        )
        # The last layer of the generation: the parameter head's own prediction layer, or the basis.
        generator: nn.Linear = self.param_head.prediction
        self.param_basis: nn.Linear | None = None
        if params_rank:
            self.param_basis = nn.Linear(params_rank, num_params)
            # Basis columns of about unit norm (B^T B ≈ I): a gradient step on the coefficient
            # layer then moves the generated parameters by the projection of what it would move
            # them with the full layer, not by num_params / r times more (unit-variance columns
            # made training unstable on the miniature). The coefficient weights are scaled up by
            # sqrt(num_params / r) instead, so that the generated parameters start with the full
            # layer's distribution (N(0, 0.001²) weights there).
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
        if not isinstance(input_shape, Mapping):
            raise ValueError(
                "PointSupImplicitPointRendMaskHead pools its own features: "
                "set ROI_MASK_HEAD.POOLER_TYPE to ''"
            )
        check_point_head_name(cfg, cls.__name__, cls.point_head_names)
        check_point_head_classes(cfg, cls.__name__)
        num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
        mask = cfg.MODEL.ROI_MASK_HEAD
        point = cfg.MODEL.POINT_HEAD
        implicit = cfg.MODEL.IMPLICIT_POINTREND
        return {
            "input_shape": input_shape,
            "param_in_features": mask.IN_FEATURES,
            "pooler_resolution": mask.POOLER_RESOLUTION,
            "conv_dim": mask.CONV_DIM,
            "fc_dims": [mask.FC_DIM] * mask.NUM_FC,
            "point_in_features": point.IN_FEATURES,
            "num_classes": num_classes,
            # Either switch makes it class-agnostic: ROI_MASK_HEAD's is Mask R-CNN's usual one.
            "cls_agnostic_mask": bool(point.CLS_AGNOSTIC_MASK or mask.CLS_AGNOSTIC_MASK),
            "point_fc_dim": point.FC_DIM,
            "point_num_fc": point.NUM_FC,
            "image_feature_enabled": implicit.IMAGE_FEATURE_ENABLED,
            "pos_enc_enabled": implicit.POS_ENC_ENABLED,
            "params_l2_weight": implicit.PARAMS_L2_REGULARIZER,
            "params_init": implicit.PARAMS_INIT,
            "params_rank": implicit.PARAMS_RANK,
            "point_sup": cfg.INPUT.POINT_SUP,
            "mixed_sup": is_mixed_supervision(cfg),
            "mixed_weighting": cfg.MODEL.MIXED_SUP.WEIGHTING,
            "train_num_points": point.TRAIN_NUM_POINTS,
            "subdivision_steps": point.SUBDIVISION_STEPS,
            "subdivision_num_points": point.SUBDIVISION_NUM_POINTS,
            "point_loss_normalization": cfg.MODEL.POINT_LOSS.NORMALIZATION,
            "mask_point_labels": cfg.MODEL.POINT_LOSS.MASK_POINT_LABELS,
        }

    @property
    def output_resolution(self) -> int:
        """Side of the predicted masks: sqrt(N) · 2^steps (224 for N = 28², 3 steps)."""
        return self.init_resolution * 2**self.subdivision_steps

    # ------------------------------------------------------------------ building blocks
    def predict_params(self, features: Mapping[str, torch.Tensor], boxes: Sequence[Boxes]) -> torch.Tensor:
        """Generated point-head parameters of the boxes.

        Args:
            features: feature maps, (N, C, H, W) each.
            boxes: N Boxes (image coordinates), R in total.

        Returns:
            (R, num_params).
        """
        pooled = roi_grid_features(
            features, self.param_in_features, self.feature_scales, boxes, self.pooler_resolution
        )
        out = self.param_head(pooled)
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
            fine_grained = sample_named_features(
                features, self.point_in_features, self.feature_scales, boxes, point_coords
            )
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
        split = split_by_supervision(instances, self.mixed_weighting) if self.mixed_sup else None
        if split is not None:
            instances = split.supervised  # box-only proposals get no mask head at all
        boxes = [x.proposal_boxes for x in instances]
        params = self.predict_params(features, boxes)
        # With no foreground proposal the mean would be NaN; 0 * sum keeps the graph for DDP.
        loss_l2 = self.params_l2_weight * (params**2).mean() if params.numel() else params.sum() * 0.0
        if split is None:
            return {"loss_mask_point": self._point_loss(features, instances, params), "loss_l2": loss_l2}
        losses = combine_kind_losses(
            {"loss_mask_point": self._point_loss(features, split.masks, params[split.mask_rows], False)},
            {"loss_mask_point": self._point_loss(features, split.points, params[split.points_rows], True)},
            split.weights,
        )
        return {**losses, "loss_l2": loss_l2}

    def _point_loss(
        self,
        features: Mapping[str, torch.Tensor],
        instances: list[Instances],
        params: torch.Tensor,
        point_sup: bool | None = None,
    ) -> torch.Tensor:
        """The point BCE of the R proposals of ``instances`` whose generated parameters are ``params``
        (R, num_params): at their labelled points (``point_sup``, default the head's) or at
        TRAIN_NUM_POINTS points labelled from their masks."""
        boxes = [x.proposal_boxes for x in instances]
        if self.point_sup if point_sup is None else point_sup:
            point_coords, point_labels = get_point_targets(instances)
        else:
            point_coords, point_labels = self._sample_mask_targets(instances, boxes)
        logits = self.point_logits(features, boxes, point_coords, params)
        return point_bce_loss(
            logits,
            point_labels,
            self.point_loss_normalization,
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
            point_labels = get_mask_point_labels(instances, point_coords, self.mask_point_labels)
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
        runs chunk by chunk (:func:`~point_sup.modeling.subdivision.chunked_point_logits`) on
        features sampled from a channels-last copy of the maps
        (:func:`~point_sup.modeling.point_features.features_for_point_sampling`).
        """
        weights, biases = self.point_head.select_params(params, classes)
        point_maps = None
        if self.point_head.image_feature_enabled:
            point_maps = features_for_point_sampling(features, self.point_in_features)

        def chunk_logits(chunk_boxes: list[Boxes], rows: slice, point_coords: torch.Tensor) -> torch.Tensor:
            fine_grained = None
            if point_maps is not None:
                fine_grained = sample_named_features(
                    point_maps, self.point_in_features, self.feature_scales, chunk_boxes, point_coords
                )
            return self.point_head.evaluate(
                fine_grained, point_coords, [w[rows] for w in weights], [b[rows] for b in biases]
            )

        return adaptive_subdivision(
            lambda point_coords: chunked_point_logits(chunk_logits, boxes, point_coords),
            params.shape[0],
            self.init_resolution,
            self.subdivision_steps,
            self.subdivision_num_points,
            params.device,
            params.dtype,
        )


@ROI_MASK_HEAD_REGISTRY.register()
class ImplicitPointRendPointSupHead(PointSupImplicitPointRendMaskHead):
    """:class:`PointSupImplicitPointRendMaskHead` under Detectron2 PointSup's head name (see the
    module docstring); its YAML file sets ``INPUT.POINT_SUP: True``, which this head reads."""


# ---------------------------------------------------------------------- counting and conversion
def count_parameters(head: nn.Module) -> dict[str, int]:
    """Trainable parameters of an Implicit PointRend mask head, split where the size goes.

    Returns:
        ``{"total", "param_head_hidden", "param_head_prediction", "generated_per_instance"}``:
        all trainable parameters; those of the parameter head before its prediction layer; those
        of the prediction layer (weights + biases; with PARAMS_RANK > 0 the coefficient layer and
        the basis together); and ``num_params`` of the generated MLP.
    """
    assert isinstance(head, PointSupImplicitPointRendMaskHead)
    layers = [head.param_head.prediction] + ([head.param_basis] if head.param_basis is not None else [])
    prediction = sum(p.numel() for layer in layers for p in layer.parameters())
    total = sum(p.numel() for p in head.parameters() if p.requires_grad)
    return {
        "total": total,
        "param_head_hidden": total - prediction,
        "param_head_prediction": prediction,
        "generated_per_instance": head.point_head.num_params,
    }


# (ours, Detectron2's) name pairs: the parameter head has Detectron2's ConvFCHead names below it.
_NAME_PAIRS = (
    ("param_head.", "parameter_head."),
    ("point_head.pos_enc_gaussian", "point_head.positional_encoding_gaussian_matrix"),
)


def _rename(state_dict: Mapping[str, torch.Tensor], pairs: Sequence[tuple[str, str]]) -> dict:
    out = {}
    for key, value in state_dict.items():
        new = next((key.replace(src, dst, 1) for src, dst in pairs if src in key), key)
        out[new] = value
    return out


def convert_from_detectron2_implicit_pointrend(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Detectron2's ``ImplicitPointRendMaskHead`` state dict (or a whole model's) → ours.

    Only mask-head keys are renamed (wherever they sit, e.g. under ``roi_heads.mask_head.``); every
    other key, and every tensor, is kept as is: both heads use the same parameter-vector layout and
    the same positional-encoding matrix shape, so the weights need no reshaping.
    """
    return _rename(state_dict, [(d2, ours) for ours, d2 in _NAME_PAIRS])


def convert_to_detectron2_implicit_pointrend(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Our state dict (or a whole model's) → Detectron2's ``ImplicitPointRendMaskHead`` names.

    Expects the current names; a checkpoint with point_sup's former parameter-head names loads into
    the head first (:class:`~point_sup.modeling.conv_fc_head.ConvFCHead` renames them). A head with
    ``PARAMS_RANK > 0`` (a ``param_basis``) has no Detectron2 counterpart: ValueError.
    """
    basis = [k for k in state_dict if "param_basis." in k]
    if basis:
        raise ValueError(
            f"{basis[0]}: a low-rank Implicit PointRend (MODEL.IMPLICIT_POINTREND.PARAMS_RANK > 0) "
            "has no Detectron2 ImplicitPointRendMaskHead equivalent"
        )
    return _rename(state_dict, _NAME_PAIRS)
