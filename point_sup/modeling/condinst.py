"""CondInst (Tian et al., ECCV 2020) on Detectron2's FCOS, trained from masks, P_N points or boxes
(BoxInst, Tian et al., CVPR 2021): paper Table 3b (CondInst M 37.5, P10 + point aug. 35.7) and the
box-only baseline of Figures 3 and 5 (BoxInst 31.6).

``PointSupCondInst`` (``META_ARCH_REGISTRY``) is Detectron2's ``FCOS`` (its anchor points, matching,
focal / GIoU / centerness losses and box decoding) plus CondInst's two additions:

- a **controller**: one more 3x3 conv on FCOS's box tower, predicting at every location the
  ``num_params`` parameters of a dynamic mask head (point_sup.modeling.dynamic_mask_head: three 1x1
  convs, 8 channels, relative coordinates as two extra inputs);
- a **mask branch** (point_sup.modeling.mask_branch) on P3-P5 giving 8 channels at stride 8.

Each positive FCOS location (training) or detection (inference) runs its generated head on its
image's mask features plus its relative coordinates, at stride 8; the logits are upsampled to
``MODEL.CONDINST.MASK_OUT_STRIDE`` (4). Supervision (:attr:`PointSupCondInst.supervision`):

``"mask"`` (M)
    CondInst's dice loss on the ground-truth masks at stride 4 (point_sup.modeling.condinst_losses).
``"points"`` (P_N, ``INPUT.POINT_SUP``)
    the point BCE at each labelled point's own stride-4 cell, points outside the ground-truth box
    ignored, nothing else supervised (paper footnote 2); point-based augmentation is the mapper's.
    ``MODEL.CONDINST.POINT_LOGITS: bilinear`` reads each point in the upsampled mask instead.
``"boxes"`` (B, ``MODEL.BOXINST.ENABLED``)
    BoxInst's projection and pairwise losses (point_sup.modeling.boxinst_losses); the pairwise term
    ramps up linearly over ``MODEL.BOXINST.PAIRWISE.WARMUP_ITERS`` iterations of the trainer.
``"mixed"`` (``MODEL.MIXED_SUP.ENABLED``)
    each positive location by the kind of its object (point_sup.data.mixed_supervision): the dice
    loss for mask-supervised objects, the point loss for point-supervised ones, and for box-only
    ones BoxInst's losses if ``MODEL.BOXINST.ENABLED``, else none; weighted as
    point_sup.modeling.mixed_loss says (``loss_mask`` holds the mask and point kinds).

Mask losses are named ``loss_mask`` (M, P_N) or ``loss_prj`` / ``loss_pairwise`` (B), next to FCOS's
``loss_fcos_cls`` / ``loss_fcos_loc`` / ``loss_fcos_ctr``.

On a GPU the training step reads one number back from the device besides what Detectron2's FCOS
losses read: the count of positive locations, which sizes the mask head's batch. The dice targets are
sampled from the boolean masks on the device (condinst_losses.mask_cells_at_stride; the CondInst
configs rasterize polygons in the data loader's workers), BoxInst's per-object top-k is one batched
sort, and the kinds of a mixed batch weigh their losses instead of selecting instances. Under float16
autocast (CUDA's AMP) the backbone, the heads and the generated dynamic heads run in float16; FCOS's
losses, scores and boxes, the relative coordinates, the mask logits from the dynamic heads on and
every mask loss run in float32 (CondInst's authors compute relative coordinates and BoxInst's weights
in float32; the mask losses' sums over a COCO-sized map exceed float16's range).

Inference: FCOS's scores ``sqrt(p_cls * p_ctr)`` above ``MODEL.FCOS.INFERENCE_TH_TEST`` (CondInst's
configs threshold after the centerness, as Detectron2's FCOS does), the top ``PRE_NMS_TOPK_TEST`` per
level, boxes clipped to the image, class-wise NMS, ``TEST.DETECTIONS_PER_IMAGE`` kept. Masks are the stride-4
logits upsampled to the input, resized to the output size and thresholded at probability 0.5;
``MODEL.CONDINST.INFER_CROP_TO_BOX`` removes the pixels outside the predicted box (paper footnote 2,
set by the P_N configs). Outputs are Detectron2's standard ``pred_boxes``, ``scores``,
``pred_classes`` and full-image boolean ``pred_masks`` (N, H, W), as every evaluator expects.

What differs from AdelaiDet's CondInst, which does not build on current Detectron2/torch and is not
used: Detectron2's FCOS places anchor points at ``stride * (i, j)`` (AdelaiDet: ``+ stride // 2``) and
has no learnable per-level scale. BoxInst's colour similarities are 0 for pairs touching the bottom
``MODEL.BOXINST.BOTTOM_PIXELS_REMOVED`` (10) rows of the original image, scaled to the input, as
AdelaiDet's (COCO's bottom rows are often mislabelled).
Registered as ``PointSupCondInst`` so that AdelaiDet's ``CondInst`` can be installed alongside.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, batched_nms
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.meta_arch.fcos import FCOS, FCOSHead
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import get_event_storage
from torch import nn

from ..config import condinst_supervision
from ..data.mixed_supervision import Supervision
from .boxinst_losses import (
    color_similarity,
    image_cells,
    neighbour_offsets,
    pairwise_loss,
    projection_loss,
    rgb_to_lab,
)
from .condinst_losses import (
    box_cells_at_stride,
    box_masks_at_stride,
    dice_loss,
    mask_cells_at_stride,
    mask_logits_to_image,
    point_logits_at_cells,
    point_logits_bilinear,
)
from .dynamic_mask_head import (
    DynamicMaskHeadLayout,
    dynamic_mask_logits,
    relative_coordinates,
    upsample_logits,
)
from .mask_branch import MaskBranch
from .mixed_loss import kind_weights
from .point_features import get_point_coords_wrt_box
from .point_loss import PADDING_LABEL, ignore_points_outside_boxes, point_bce_loss

__all__ = ["POINT_LOGITS", "SUPERVISIONS", "CondInstHead", "PairwiseOptions", "PointSupCondInst"]

logger = logging.getLogger(__name__)

SUPERVISIONS = ("mask", "points", "boxes", "mixed")
# MODEL.CONDINST.POINT_LOGITS: "cell" (paper footnote 2), "bilinear" (point_sup's option).
POINT_LOGITS = ("cell", "bilinear")


def _selected_mean(values: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` (R,) over the ``selected`` (R,) bool entries, 0 when none is: the others
    weigh 0 instead of being selected on the host."""
    weights = selected.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp(min=1.0)


@dataclass(frozen=True)
class PairwiseOptions:
    """BoxInst's pairwise term (``MODEL.BOXINST.PAIRWISE``)."""

    size: int = 3
    dilation: int = 2
    color_thresh: float = 0.3
    warmup_iters: int = 10000


class CondInstHead(FCOSHead):
    """Detectron2's ``FCOSHead`` plus CondInst's controller: a 3x3 conv on the box tower predicting
    ``num_params`` dynamic-mask-head parameters per location (initialised N(0, 0.01²), bias 0)."""

    def __init__(self, *, input_shape: list[ShapeSpec], conv_dims: list[int], num_params: int, **kwargs):
        super().__init__(input_shape=input_shape, conv_dims=conv_dims, **kwargs)
        self.controller = nn.Conv2d(conv_dims[-1], num_params, kernel_size=3, stride=1, padding=1)
        nn.init.normal_(self.controller.weight, std=0.01)
        nn.init.constant_(self.controller.bias, 0.0)

    def forward(self, features: list[torch.Tensor]):
        """
        Args:
            features: L feature maps (N, C, H_l, W_l).

        Returns:
            Four lists over levels: class logits (N, K, H_l, W_l), box deltas (N, 4, ...),
            centerness (N, 1, ...), controller parameters (N, num_params, H_l, W_l).
        """
        if len(features) != self._num_features:
            raise ValueError(f"expected {self._num_features} feature levels, got {len(features)}")
        logits, deltas, ctrness, params = [], [], [], []
        for feature in features:
            logits.append(self.cls_score(self.cls_subnet(feature)))
            box_feature = self.bbox_subnet(feature)
            deltas.append(self.bbox_pred(box_feature))
            ctrness.append(self.ctrness(box_feature))
            params.append(self.controller(box_feature))
        return logits, deltas, ctrness, params


@dataclass
class _MaskInstances:
    """The instances whose masks are predicted: positives (training) or detections (inference).

    image_index (R,) int64; params (R, P); locations (R, 2) anchor points (x, y); sizes_of_interest
    (R,); gt_index (R,) int64 index into its image's ground truth (training only).
    """

    image_index: torch.Tensor
    params: torch.Tensor
    locations: torch.Tensor
    sizes_of_interest: torch.Tensor
    gt_index: torch.Tensor | None = None

    def select(self, rows: torch.Tensor) -> _MaskInstances:
        """The instances at ``rows`` ((R,) bool or int64)."""
        return _MaskInstances(
            self.image_index[rows],
            self.params[rows],
            self.locations[rows],
            self.sizes_of_interest[rows],
            None if self.gt_index is None else self.gt_index[rows],
        )


@META_ARCH_REGISTRY.register()
class PointSupCondInst(FCOS):
    """CondInst / BoxInst (see the module docstring)."""

    @configurable
    def __init__(
        self,
        *,
        mask_branch: MaskBranch,
        mask_head_layout: DynamicMaskHeadLayout,
        supervision: str = "mask",
        mask_out_stride: int = 4,
        max_proposals: int = -1,
        topk_proposals_per_image: int = -1,
        infer_crop_to_box: bool = False,
        point_logits: str = "cell",
        pairwise: PairwiseOptions = PairwiseOptions(),
        bottom_pixels_removed: int = 10,
        point_loss_normalization: str = "all_points",
        input_format: str = "BGR",
        mixed_box_losses: bool = False,
        mixed_weighting: str = "instances",
        **fcos_kwargs,
    ):
        """
        Args:
            mask_branch: the mask branch; its stride must be a multiple of ``mask_out_stride``.
            mask_head_layout: shapes of the dynamic mask head (``num_params`` = the controller's).
            supervision: one of :data:`SUPERVISIONS`.
            mask_out_stride: stride of the predicted masks (4).
            max_proposals, topk_proposals_per_image: ``MODEL.CONDINST`` (see point_sup.config).
            infer_crop_to_box: remove mask pixels outside the predicted box at inference.
            point_logits: one of :data:`POINT_LOGITS`, how the P_N loss reads a point's prediction
                (``MODEL.CONDINST.POINT_LOGITS``).
            pairwise: BoxInst's pairwise options.
            bottom_pixels_removed: BoxInst's pairwise term treats this many bottom rows of each
                original image (``height``), scaled to the input, as outside it; <= 0: none.
            point_loss_normalization: ``MODEL.POINT_LOSS.NORMALIZATION`` of the P_N loss.
            input_format: ``INPUT.FORMAT`` (BoxInst's colours are read from the input image).
            mixed_box_losses: with ``"mixed"``, BoxInst's losses for box-only objects
                (``MODEL.BOXINST.ENABLED``).
            mixed_weighting: ``MODEL.MIXED_SUP.WEIGHTING``.
            fcos_kwargs: arguments of Detectron2's ``FCOS`` (backbone, head, head_in_features,
                num_classes, ...).
        """
        super().__init__(**fcos_kwargs)
        if supervision not in SUPERVISIONS:
            raise ValueError(f"supervision must be one of {SUPERVISIONS}, got {supervision!r}")
        if mask_branch.stride % mask_out_stride:
            raise ValueError(
                f"MODEL.CONDINST.MASK_OUT_STRIDE ({mask_out_stride}) must divide the mask branch's "
                f"stride ({mask_branch.stride})"
            )
        if mask_branch.out_channels != mask_head_layout.in_channels:
            raise ValueError("the mask branch's OUT_CHANNELS must be the dynamic mask head's input channels")
        if input_format not in ("BGR", "RGB"):
            raise ValueError(
                f"PointSupCondInst reads colours from BGR or RGB input, not INPUT.FORMAT {input_format!r}"
            )
        self.mask_branch = mask_branch
        self.mask_head_layout = mask_head_layout
        self.supervision = supervision
        self.mask_out_stride = mask_out_stride
        self.max_proposals = max_proposals
        self.topk_proposals_per_image = topk_proposals_per_image
        self.infer_crop_to_box = infer_crop_to_box
        if point_logits not in POINT_LOGITS:
            raise ValueError(
                f"MODEL.CONDINST.POINT_LOGITS must be one of {POINT_LOGITS}, got {point_logits!r}"
            )
        self.point_logits = point_logits
        self.pairwise = pairwise
        self.pairwise_offsets = neighbour_offsets(pairwise.size, pairwise.dilation)
        self.bottom_pixels_removed = bottom_pixels_removed
        self.point_loss_normalization = point_loss_normalization
        self.input_format = input_format
        self.mixed_box_losses = mixed_box_losses
        self.mixed_weighting = mixed_weighting
        missing = [f for f in mask_branch.in_features if f not in self.head_in_features]
        if missing:
            raise ValueError(
                f"MODEL.CONDINST.MASK_BRANCH.IN_FEATURES {mask_branch.in_features} must be among "
                f"MODEL.FCOS.IN_FEATURES {self.head_in_features}"
            )
        shapes = self.backbone.output_shape()
        # CondInst normalises relative coordinates by the level's size of interest: 8 x its stride
        # (Detectron2's FCOS assigns each level objects up to that size).
        self.sizes_of_interest = [8.0 * shapes[f].stride for f in self.head_in_features]

    @classmethod
    def from_config(cls, cfg) -> dict:
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        fcos, condinst = cfg.MODEL.FCOS, cfg.MODEL.CONDINST
        missing = [f for f in fcos.IN_FEATURES if f not in shapes]
        if missing:
            raise ValueError(
                f"MODEL.FCOS.IN_FEATURES {list(fcos.IN_FEATURES)}: {missing} are not features of the "
                f"backbone {cfg.MODEL.BACKBONE.NAME} ({sorted(shapes)}); use build_fcos_resnet_fpn_backbone"
            )
        branch_cfg = condinst.MASK_BRANCH
        mask_branch = MaskBranch(
            shapes,
            branch_cfg.IN_FEATURES,
            channels=branch_cfg.CHANNELS,
            num_convs=branch_cfg.NUM_CONVS,
            norm=branch_cfg.NORM,
            out_channels=branch_cfg.OUT_CHANNELS,
        )
        layout = DynamicMaskHeadLayout(
            in_channels=branch_cfg.OUT_CHANNELS,
            channels=condinst.MASK_HEAD.CHANNELS,
            num_layers=condinst.MASK_HEAD.NUM_LAYERS,
            rel_coords=not condinst.MASK_HEAD.DISABLE_REL_COORDS,
        )
        feature_shapes = [shapes[f] for f in fcos.IN_FEATURES]
        head = CondInstHead(
            input_shape=feature_shapes,
            conv_dims=[feature_shapes[0].channels] * fcos.NUM_CONVS,
            num_params=layout.num_params,
            num_classes=fcos.NUM_CLASSES,
            norm=fcos.NORM,
            prior_prob=fcos.PRIOR_PROB,
        )
        pw = cfg.MODEL.BOXINST.PAIRWISE
        return {
            "backbone": backbone,
            "head": head,
            "head_in_features": list(fcos.IN_FEATURES),
            "num_classes": fcos.NUM_CLASSES,
            "center_sampling_radius": fcos.CENTER_SAMPLING_RADIUS,
            "focal_loss_alpha": fcos.LOSS_ALPHA,
            "focal_loss_gamma": fcos.LOSS_GAMMA,
            "test_score_thresh": fcos.INFERENCE_TH_TEST,
            "test_topk_candidates": fcos.PRE_NMS_TOPK_TEST,
            "test_nms_thresh": fcos.NMS_TH,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "mask_branch": mask_branch,
            "mask_head_layout": layout,
            "supervision": condinst_supervision(cfg),
            "mask_out_stride": condinst.MASK_OUT_STRIDE,
            "max_proposals": condinst.MAX_PROPOSALS,
            "topk_proposals_per_image": condinst.TOPK_PROPOSALS_PER_IM,
            "infer_crop_to_box": condinst.INFER_CROP_TO_BOX,
            "point_logits": condinst.POINT_LOGITS,
            "pairwise": PairwiseOptions(pw.SIZE, pw.DILATION, pw.COLOR_THRESH, pw.WARMUP_ITERS),
            "bottom_pixels_removed": cfg.MODEL.BOXINST.BOTTOM_PIXELS_REMOVED,
            "point_loss_normalization": cfg.MODEL.POINT_LOSS.NORMALIZATION,
            "input_format": cfg.INPUT.FORMAT,
            "mixed_box_losses": bool(cfg.MODEL.BOXINST.ENABLED),
            "mixed_weighting": cfg.MODEL.MIXED_SUP.WEIGHTING,
        }

    # ----------------------------------------------------------------------------------------------
    # Shared
    # ----------------------------------------------------------------------------------------------
    def _mask_logits(self, mask_features: torch.Tensor, inst: _MaskInstances) -> torch.Tensor:
        """(R, 1, H_o, W_o) float32 logits at the mask output stride for the R instances.

        The generated heads run in the features' dtype (float16 under CUDA's AMP, as CondInst's
        authors run them); their logits are upsampled and returned in float32: the mask losses sum
        over every cell of a COCO-sized map (200 x 336 at stride 4), beyond float16's 65504.
        """
        stride = self.mask_branch.stride
        rel = None
        if self.mask_head_layout.rel_coords:
            rel = relative_coordinates(
                inst.locations, inst.sizes_of_interest, tuple(mask_features.shape[-2:]), stride
            )
        logits = dynamic_mask_logits(mask_features, inst.image_index, inst.params, self.mask_head_layout, rel)
        return upsample_logits(logits.float(), stride // self.mask_out_stride)

    def _level_tensors(self, anchors: list[Boxes]) -> tuple[torch.Tensor, torch.Tensor]:
        """Anchor points (R_total, 2) and sizes of interest (R_total,) over all levels, in order."""
        centers = Boxes.cat(anchors).get_centers()
        soi = torch.cat(
            [
                torch.full((len(a),), s, device=centers.device)
                for a, s in zip(anchors, self.sizes_of_interest, strict=True)
            ]
        )
        return centers, soi

    # ----------------------------------------------------------------------------------------------
    # Training
    #
    # The step reads nothing back from the device but the one count that sizes the mask head's batch
    # (``nonzero`` of the positive locations in _positive_instances; the number of mask instances it
    # logs is that count): selections are weights or ``torch.where``, sizes and offsets are Python
    # numbers from the ground truth's lengths. Detectron2's FCOS losses (``self.losses``) read their
    # own.
    # ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _match(self, anchors: list[Boxes], gt_instances: list[Instances]):
        """FCOS's labels and matched boxes (as Detectron2's ``label_anchors``) plus the matched
        ground-truth index of every anchor point (-1 for background): lists over images of (R_total,)."""
        labels, boxes, indices = [], [], []
        total = sum(len(a) for a in anchors)
        device = anchors[0].tensor.device
        for inst in gt_instances:
            if len(inst) == 0:
                labels.append(torch.full((total,), self.num_classes, dtype=torch.int64, device=device))
                boxes.append(torch.zeros((total, 4), device=device))
                indices.append(torch.full((total,), -1, dtype=torch.int64, device=device))
                continue
            quality = self._match_anchors(inst.gt_boxes, anchors)  # (M, R), Detectron2's rule
            best, idx = quality.max(dim=0)
            idx = torch.where(best < 1e-5, -1, idx)
            safe = idx.clamp(min=0)
            labels.append(torch.where(idx < 0, self.num_classes, inst.gt_classes[safe]))
            boxes.append(inst.gt_boxes.tensor[safe])
            indices.append(idx)
        return labels, boxes, indices

    def forward_training(
        self,
        images: ImageList,
        features,
        predictions,
        gt_instances,
        bottom_rows: list[int] | None = None,
    ):
        """FCOS's losses and the mask losses of :attr:`supervision`.

        Args:
            images, features, predictions, gt_instances: as Detectron2's ``FCOS.forward_training``.
            bottom_rows: per image, input pixel rows at its bottom that BoxInst's pairwise term
                treats as outside the image (:meth:`removed_bottom_rows`); None: none.
        """
        logits, deltas, ctrness, params = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4, 1, self.mask_head_layout.num_params]
        )
        # FCOS's losses in float32 (a no-op without autocast): under SOLVER.AMP its box decoding
        # writes float32 boxes into a half-precision tensor and fails.
        logits, deltas, ctrness = ([t.float() for t in x] for x in (logits, deltas, ctrness))
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes, gt_index = self._match(anchors, gt_instances)
        losses = self.losses(anchors, logits, gt_labels, deltas, gt_boxes, ctrness)

        mask_features = self.mask_branch(dict(zip(self.head_in_features, features, strict=True)))
        inst = self._positive_instances(anchors, gt_labels, gt_index, logits, ctrness, params)
        get_event_storage().put_scalar("condinst/num_mask_instances", float(len(inst.image_index)))
        mask_logits = self._mask_logits(mask_features, inst)
        # Keeps every parameter in the graph when there is nothing to supervise (DDP needs it). Summed
        # in float32: under float16 autocast a sum over every cell of every level would overflow, and
        # inf * 0 is NaN.
        zero = (
            mask_logits.sum() * 0.0
            + mask_features.float().sum() * 0.0
            + sum(p.float().sum() for p in params) * 0.0
        )
        if self.supervision == "mask":
            losses["loss_mask"] = self._dice_loss(mask_logits, inst, gt_instances, images) + zero
        elif self.supervision == "points":
            losses["loss_mask"] = self._point_loss(mask_logits, inst, gt_instances) + zero
        elif self.supervision == "mixed":
            mixed = self._mixed_losses(mask_logits, inst, gt_instances, images, bottom_rows)
            losses.update({k: v + zero for k, v in mixed.items()})
        else:
            prj, pairwise = self._box_losses(mask_logits, inst, gt_instances, images, bottom_rows)
            losses["loss_prj"] = prj + zero
            losses["loss_pairwise"] = pairwise + zero
        return losses

    def _positive_instances(self, anchors, gt_labels, gt_index, logits, ctrness, params) -> _MaskInstances:
        centers, soi = self._level_tensors(anchors)
        labels = torch.stack(gt_labels)  # (N, R_total)
        positive = (labels >= 0) & (labels != self.num_classes)
        gt_index_all = torch.stack(gt_index)  # (N, R_total)
        params_all = torch.cat(params, dim=1)  # (N, R_total, P)
        if self.topk_proposals_per_image > 0:
            with torch.no_grad():
                score = (
                    torch.cat(logits, dim=1).sigmoid().amax(dim=2)
                    * torch.cat(ctrness, dim=1).sigmoid()[..., 0]
                )
            positive = self._topk_per_object(positive, gt_index_all, score)
        # The step's one read from the device: how many instances the mask head runs on.
        image_index, anchor_index = positive.nonzero(as_tuple=True)
        if self.max_proposals >= 0 and len(image_index) > self.max_proposals:
            keep = torch.randperm(len(image_index), device=image_index.device)[: self.max_proposals]
            image_index, anchor_index = image_index[keep], anchor_index[keep]
        return _MaskInstances(
            image_index=image_index,
            params=params_all[image_index, anchor_index],
            locations=centers[anchor_index],
            sizes_of_interest=soi[anchor_index],
            gt_index=gt_index_all[image_index, anchor_index],
        )

    def _mixed_losses(
        self, mask_logits, inst: _MaskInstances, gt_instances, images: ImageList, bottom_rows=None
    ) -> dict:
        """Per-kind losses of a mixed batch (point_sup.modeling.mixed_loss), each on its own instances.

        Every kind's loss runs on all R instances with the others weighted 0 (the dice and projection
        terms: the mean over the kind's instances; the point loss: the other instances' points are
        padding; the pairwise term: the other instances' cells are outside the box), which is the loss
        of the kind's instances alone without selecting them on the host. The kind weights
        (point_sup.modeling.mixed_loss.kind_weights) are computed on the device from device counts.
        """
        kinds = (
            self._per_instance(inst, [gt.gt_supervision for gt in gt_instances])
            if len(inst.image_index)
            else (torch.zeros((0,), dtype=torch.int64, device=mask_logits.device))
        )
        rows = [kinds == Supervision.MASK, kinds == Supervision.POINTS]
        if self.mixed_box_losses:
            rows.append(kinds == Supervision.BOX)
        weights = kind_weights(torch.stack([r.sum() for r in rows]), self.mixed_weighting)
        dice = self._dice_loss(mask_logits, inst, gt_instances, images, selected=rows[0])
        point = self._point_loss(mask_logits, inst, gt_instances, selected=rows[1])
        losses = {"loss_mask": weights[0] * dice + weights[1] * point}
        if self.mixed_box_losses:
            prj, pairwise = self._box_losses(
                mask_logits, inst, gt_instances, images, bottom_rows, selected=rows[2]
            )
            losses["loss_prj"] = weights[2] * prj
            losses["loss_pairwise"] = weights[2] * pairwise
        return losses

    def _topk_per_object(
        self, positive: torch.Tensor, gt_index: torch.Tensor, score: torch.Tensor
    ) -> torch.Tensor:
        """BoxInst's TOPK_PROPOSALS_PER_IM: per image, for each object, the ``k // #objects`` (at least
        one) positive locations with the highest ``max_class p_cls * p_ctr``; #objects counts the
        objects of the image with a positive location.

        One batched computation on the device, no per-object loop and no read to the host: within
        each image, the locations are ordered by object, then by score (highest first); a location's
        rank within its object is its position minus its object's first position, and it is kept
        when the rank is below its image's quota. Equal scores: the lower location index (levels in
        order, row-major within a level) ranks first (both sorts are stable).

        Args:
            positive: (N, R_total) bool, the positive locations.
            gt_index: (N, R_total) int64, each location's object in its image (any value where not
                positive).
            score: (N, R_total) floating, the ranking score.

        Returns:
            (N, R_total) bool, the kept positive locations.
        """
        # Not positive: object -1, sorted before every object and never kept.
        objects = torch.where(positive, gt_index, -1)
        by_score = score.argsort(dim=1, descending=True, stable=True)
        by_object = objects.gather(1, by_score).argsort(dim=1, stable=True)
        order = by_score.gather(1, by_object)  # (N, R_total): by object, then by score, then by index
        grouped = objects.gather(1, order)  # non-decreasing in each row
        first = torch.searchsorted(grouped, grouped)  # each object's first position in its row
        rank = torch.arange(grouped.shape[1], device=grouped.device) - first
        num_objects = ((rank == 0) & (grouped >= 0)).sum(dim=1, keepdim=True)  # (N, 1)
        quota = (self.topk_proposals_per_image // num_objects.clamp(min=1)).clamp(min=1)
        keep = (grouped >= 0) & (rank < quota)
        return torch.zeros_like(positive).scatter(1, order, keep)

    @staticmethod
    def _per_instance(inst: _MaskInstances, per_image: list[torch.Tensor]) -> torch.Tensor:
        """Row ``gt_index`` of the image of each instance, from per-image tensors (G_i, ...)."""
        # Each image's offset in the concatenation is a Python number (its predecessors' lengths):
        # no tensor is made from a list on the device.
        flat = inst.gt_index
        for i, rows in enumerate(per_image[:-1]):
            if len(rows):
                flat = flat + (inst.image_index > i) * len(rows)
        return torch.cat(per_image)[flat]

    def _dice_loss(
        self,
        mask_logits,
        inst: _MaskInstances,
        gt_instances,
        images: ImageList,
        selected: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """CondInst's dice loss averaged over the instances, or over the ``selected`` ones ((R,) bool;
        the others weigh 0)."""
        if len(inst.image_index) == 0:
            return mask_logits.sum() * 0.0
        map_size = tuple(mask_logits.shape[-2:])
        device = mask_logits.device
        targets = []
        for gt, image_size in zip(gt_instances, images.image_sizes, strict=True):
            if len(gt) and not gt.has("gt_masks") and self.supervision == "mixed":
                # No mask-supervised object in this image: no row of the target is read.
                targets.append(torch.zeros((len(gt), *map_size), dtype=torch.bool, device=device))
                continue
            if len(gt) and not gt.has("gt_masks"):
                raise ValueError(
                    "CondInst trained from masks got objects without gt_masks; train from points with "
                    "INPUT.POINT_SUP or from boxes with MODEL.BOXINST.ENABLED"
                )
            if len(gt):
                targets.append(
                    mask_cells_at_stride(gt.gt_masks, image_size, map_size, self.mask_out_stride, device)
                )
            else:
                targets.append(torch.zeros((0, *map_size), dtype=torch.bool, device=device))
        losses = dice_loss(mask_logits.sigmoid()[:, 0], self._per_instance(inst, targets))
        return losses.mean() if selected is None else _selected_mean(losses, selected)

    def _point_loss(
        self, mask_logits, inst: _MaskInstances, gt_instances, selected: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Footnote 2's point loss of the instances, or of the ``selected`` ones ((R,) bool: the
        others' points count as padding, so that they are neither supervised nor counted)."""
        if len(inst.image_index) == 0:
            return mask_logits.sum() * 0.0
        num_points = max(gt.gt_point_coords.shape[1] for gt in gt_instances)
        coords = self._per_instance(
            inst,
            [
                F.pad(gt.gt_point_coords, (0, 0, 0, num_points - gt.gt_point_coords.shape[1]))
                for gt in gt_instances
            ],
        ).to(torch.float32)
        labels = self._per_instance(
            inst,
            [
                F.pad(gt.gt_point_labels, (0, num_points - gt.gt_point_labels.shape[1]), value=PADDING_LABEL)
                for gt in gt_instances
            ],
        )
        boxes = self._per_instance(inst, [gt.gt_boxes.tensor for gt in gt_instances])
        labels = ignore_points_outside_boxes(get_point_coords_wrt_box(boxes, coords), labels)
        if selected is not None:
            labels = torch.where(selected[:, None], labels, PADDING_LABEL)
        read = point_logits_at_cells if self.point_logits == "cell" else point_logits_bilinear
        point_logits = read(mask_logits, coords, self.mask_out_stride)
        return point_bce_loss(
            point_logits, labels, normalization=self.point_loss_normalization, log_prefix="condinst_point"
        )

    def _box_losses(
        self,
        mask_logits,
        inst: _MaskInstances,
        gt_instances,
        images: ImageList,
        bottom_rows=None,
        selected: torch.Tensor | None = None,
    ):
        """BoxInst's projection term (averaged over the instances, or the ``selected`` ones, (R,)
        bool) and its pairwise term (averaged over the selected pairs of those instances), warmed up."""
        if len(inst.image_index) == 0:
            zero = mask_logits.sum() * 0.0
            return zero, zero
        map_size = tuple(mask_logits.shape[-2:])
        boxes = self._per_instance(inst, [gt.gt_boxes.tensor for gt in gt_instances])
        box_masks = box_masks_at_stride(boxes, map_size, self.mask_out_stride)
        logits = mask_logits[:, 0]
        projection = projection_loss(logits.sigmoid(), box_masks)
        if selected is None:
            prj = projection.mean()
        else:
            prj = _selected_mean(projection, selected)
            # An instance that is not selected has no cell in its box: none of its pairs is averaged.
            box_masks = box_masks * selected[:, None, None].to(box_masks.dtype)
        with torch.no_grad():
            similarity = self._image_color_similarity(images, map_size, bottom_rows)[inst.image_index]
        pairwise = pairwise_loss(
            logits, similarity, box_masks, self.pairwise_offsets, self.pairwise.color_thresh
        )
        return prj, pairwise * self._pairwise_warmup()

    def _pairwise_warmup(self) -> float:
        """Linear warm-up of the pairwise term over the trainer's iterations (1 outside a trainer)."""
        if self.pairwise.warmup_iters <= 0:
            return 1.0
        try:
            iteration = get_event_storage().iter
        except AssertionError:
            return 1.0
        return min(float(iteration) / self.pairwise.warmup_iters, 1.0)

    def _image_color_similarity(
        self, images: ImageList, map_size: tuple[int, int], bottom_rows: list[int] | None = None
    ) -> torch.Tensor:
        """(N, K, H_o, W_o) colour similarities of the input images at the mask output stride, 0 for
        pairs with a cell outside the image (boxinst_losses.image_cells)."""
        stride = self.mask_out_stride
        pixels = images.tensor * self.pixel_std + self.pixel_mean  # the input image, 0-255
        if self.input_format == "BGR":
            pixels = pixels.flip(1)
        height, width = map_size
        pixels = F.pad(
            pixels,
            (0, max(0, width * stride - pixels.shape[-1]), 0, max(0, height * stride - pixels.shape[-2])),
        )
        pooled = F.avg_pool2d(pixels[..., : height * stride, : width * stride], stride, stride)
        lab = rgb_to_lab(pooled / 255.0)
        valid = image_cells(list(images.image_sizes), map_size, stride, bottom_rows, device=lab.device)
        return color_similarity(lab, valid, self.pairwise_offsets)

    def removed_bottom_rows(self, batched_inputs: list[dict], images: ImageList) -> list[int]:
        """Per image, ``int(bottom_pixels_removed * h / height)``: BoxInst's removed bottom rows of
        the original image (``height``, the input's own ``h`` when absent) in input pixels."""
        if self.bottom_pixels_removed <= 0:
            return [0] * len(images)
        return [
            int(self.bottom_pixels_removed * h / inputs.get("height", h))
            for inputs, (h, _) in zip(batched_inputs, images.image_sizes, strict=True)
        ]

    # ----------------------------------------------------------------------------------------------
    # Inference
    # ----------------------------------------------------------------------------------------------
    def forward(self, batched_inputs):
        """Training: FCOS's and the mask losses. Inference: Detectron2's standard outputs with
        full-image ``pred_masks`` (see the module docstring)."""
        if not self.training:
            return self.inference(batched_inputs)
        images, features, predictions = self._predict(batched_inputs)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        return self.forward_training(
            images, features, predictions, gt_instances, self.removed_bottom_rows(batched_inputs, images)
        )

    def _predict(self, batched_inputs: list[dict]):
        """The normalised, padded images, the head's input features and the head's predictions."""
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        features = [features[f] for f in self.head_in_features]
        return images, features, self.head(features)

    def inference(
        self,
        batched_inputs: list[dict],
        detected_instances: list[Instances] | None = None,
        do_postprocess: bool = True,
    ):
        """Inference, as ``GeneralizedRCNN.inference``.

        Args:
            batched_inputs: as for ``forward``.
            detected_instances: optional, per image, boxes to predict masks for (``pred_boxes`` in
                the input image's coordinates, ``pred_classes``; other fields are kept), instead of
                detecting: the self-training pseudo masks (point_sup.engine.pseudo_masks). Each box
                takes the parameters of the location FCOS would assign it (its best-scoring matched
                location for the box's class; else the best inside the box; else the nearest), and
                its mask is restricted to the box, as a Mask R-CNN mask pasted into its box is.
            do_postprocess: resize to each input's ``height`` x ``width`` and threshold the masks
                (else: instances in input coordinates with ``pred_mask_logits``).

        Returns:
            ``[{"instances": Instances}]`` per image (or the list of Instances without postprocessing).
        """
        images, features, predictions = self._predict(batched_inputs)
        if detected_instances is None:
            results = self.forward_inference(images, features, predictions)
            crop = self.infer_crop_to_box
        else:
            results = self._masks_for_given_boxes(images, features, predictions, detected_instances)
            crop = True
        if not do_postprocess:
            return results
        processed = []
        for result, inputs, image_size in zip(results, batched_inputs, images.image_sizes, strict=True):
            height = inputs.get("height", image_size[0])
            width = inputs.get("width", image_size[1])
            processed.append({"instances": self._postprocess(result, image_size, height, width, crop)})
        return processed

    def _masks_for_given_boxes(self, images, features, predictions, detected_instances) -> list[Instances]:
        logits, _, ctrness, params = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4, 1, self.mask_head_layout.num_params]
        )
        logits, ctrness = [t.float() for t in logits], [t.float() for t in ctrness]  # as forward_inference
        anchors = self.anchor_generator(features)
        centers, soi = self._level_tensors(anchors)
        mask_features = self.mask_branch(dict(zip(self.head_in_features, features, strict=True)))
        logits_all, ctrness_all = torch.cat(logits, dim=1), torch.cat(ctrness, dim=1)  # (N, R_total, ...)
        params_all = torch.cat(params, dim=1)
        results = []
        for i, given in enumerate(detected_instances):
            given = given.to(self.device)
            boxes = given.pred_boxes
            result = Instances(images.image_sizes[i], **given.get_fields())
            if len(boxes) == 0:
                result.pred_mask_logits = mask_features.new_zeros((0, 1, *self._mask_map_size(mask_features)))
                results.append(result)
                continue
            classes = given.pred_classes.clamp(0, self.num_classes - 1)
            prob = logits_all[i].sigmoid()[:, classes].T  # (M, R)
            score = torch.sqrt(prob * ctrness_all[i, :, 0].sigmoid()[None])
            matched = self._match_anchors(boxes, anchors) > 0
            b = boxes.tensor
            inside = (
                (centers[None, :, 0] >= b[:, 0:1])
                & (centers[None, :, 0] <= b[:, 2:3])
                & (centers[None, :, 1] >= b[:, 1:2])
                & (centers[None, :, 1] <= b[:, 3:4])
            )
            dist = ((centers[None] - boxes.get_centers()[:, None]) ** 2).sum(dim=2)
            tier = matched.to(score.dtype) + inside.to(score.dtype)
            key = torch.where(tier > 0, 10.0 * tier + score, -dist / (dist.max() + 1.0))
            flat = key.argmax(dim=1)
            inst = _MaskInstances(
                image_index=torch.full_like(flat, i),
                params=params_all[i, flat],
                locations=centers[flat],
                sizes_of_interest=soi[flat],
            )
            result.pred_mask_logits = self._mask_logits(mask_features, inst)
            results.append(result)
        return results

    def _mask_map_size(self, mask_features: torch.Tensor) -> tuple[int, int]:
        factor = self.mask_branch.stride // self.mask_out_stride
        return mask_features.shape[-2] * factor, mask_features.shape[-1] * factor

    def forward_inference(self, images: ImageList, features, predictions) -> list[Instances]:
        """Detections with ``pred_mask_logits`` (D, 1, H_o, W_o) at the mask output stride, per image,
        in input coordinates."""
        logits, deltas, ctrness, params = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4, 1, self.mask_head_layout.num_params]
        )
        # Scores and boxes in float32 (a no-op without autocast): float16 box decoding would round
        # coordinates beyond 1024 to whole pixels.
        logits, deltas, ctrness = ([t.float() for t in x] for x in (logits, deltas, ctrness))
        anchors = self.anchor_generator(features)
        mask_features = self.mask_branch(dict(zip(self.head_in_features, features, strict=True)))
        centers, soi = self._level_tensors(anchors)
        params_all = torch.cat(params, dim=1)  # (N, R_total, P)
        results = []
        for i, image_size in enumerate(images.image_sizes):
            det, inst = self._detect(
                i, image_size, anchors, logits, deltas, ctrness, params_all, centers, soi
            )
            det.pred_mask_logits = self._mask_logits(mask_features, inst)
            results.append(det)
        return results

    def _detect(self, i, image_size, anchors, logits, deltas, ctrness, params_all, centers, soi):
        """FCOS decoding of image ``i`` keeping each detection's location and parameters
        (``params_all`` (N, R_total, P), ``centers`` / ``soi`` over all levels: see _level_tensors)."""
        boxes, scores, classes, levels, anchor_rows = [], [], [], [], []
        for level, (a, lg, dl, ct) in enumerate(zip(anchors, logits, deltas, ctrness, strict=True)):
            score = torch.sqrt(lg[i].sigmoid() * ct[i].sigmoid())  # (R_l, K)
            candidates = (score > self.test_score_thresh).nonzero()
            cand_scores = score[candidates[:, 0], candidates[:, 1]]
            num = min(len(cand_scores), self.test_topk_candidates)
            cand_scores, order = cand_scores.topk(num)
            rows, cls = candidates[order, 0], candidates[order, 1]
            box = self.box2box_transform.apply_deltas(dl[i][rows], a.tensor[rows])
            boxes.append(box)
            scores.append(cand_scores)
            classes.append(cls)
            levels.append(torch.full_like(rows, level))
            anchor_rows.append(rows)
        boxes = Boxes(torch.cat(boxes))
        boxes.clip(image_size)
        scores, classes = torch.cat(scores), torch.cat(classes)
        levels, anchor_rows = torch.cat(levels), torch.cat(anchor_rows)
        keep = batched_nms(boxes.tensor, scores, classes, self.test_nms_thresh)[
            : self.max_detections_per_image
        ]
        levels, anchor_rows = levels[keep], anchor_rows[keep]
        offsets = torch.tensor([0] + [len(a) for a in anchors[:-1]], device=levels.device).cumsum(0)
        flat = offsets[levels] + anchor_rows
        det = Instances(image_size, pred_boxes=boxes[keep], scores=scores[keep], pred_classes=classes[keep])
        inst = _MaskInstances(
            image_index=torch.full_like(flat, i),
            params=params_all[i, flat],
            locations=centers[flat],
            sizes_of_interest=soi[flat],
        )
        return det, inst

    def _postprocess(
        self, det: Instances, image_size: tuple[int, int], height: int, width: int, crop_to_box: bool
    ) -> Instances:
        """Rescale to the output size (Detectron2's ``detector_postprocess`` for the boxes) and turn
        the mask logits into full-image boolean masks."""
        result = detector_postprocess(det, height, width)
        logits = result.get("pred_mask_logits")
        result.remove("pred_mask_logits")
        logits = mask_logits_to_image(logits, self.mask_out_stride, image_size)
        if len(logits) and (logits.shape[-2] != height or logits.shape[-1] != width):
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        masks = logits[:, 0] > 0.0  # probability > 0.5
        if len(logits) == 0:
            masks = torch.zeros((0, height, width), dtype=torch.bool, device=logits.device)
        if crop_to_box and len(masks):
            masks &= box_cells_at_stride(result.pred_boxes.tensor, (height, width), 1)
        result.pred_masks = masks
        return result
