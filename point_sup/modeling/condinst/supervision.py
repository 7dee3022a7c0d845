"""CondInst's mask losses, one object per supervision (paper Table 3b; BoxInst for Figures 3 and 5).

Every instance's generated head predicts (R, 1, H_o, W_o) float32 mask logits at the mask output stride
s (frame: point_sup.modeling.condinst.dynamic_mask_head); a :class:`MaskLoss` turns them, with the
ground truth of each instance's object, into named losses:

:class:`DiceMaskLoss` (``"mask"``, M)
    CondInst's dice loss against the ground-truth mask sampled at stride s: ``loss_mask``.
:class:`PointMaskLoss` (``"points"``, P_N, ``INPUT.POINT_SUP``)
    the point BCE (paper §3.2) at each labelled point's own stride-s cell (paper footnote 2), points
    outside the ground-truth box ignored, nothing else supervised: ``loss_mask``.
    ``MODEL.CONDINST.POINT_LOGITS: bilinear`` reads each point in the upsampled mask instead.
:class:`BoxInstMaskLoss` (``"boxes"``, B, ``MODEL.BOXINST.ENABLED``)
    BoxInst's projection and pairwise losses: ``loss_prj``, ``loss_pairwise``.
:class:`PointsWithBoxPriorLoss` (``"points"`` with ``MODEL.BOX_PRIOR``, point_sup's option)
    P_N's ``loss_mask`` plus BoxInst's two terms on the same objects, weighted by
    ``MODEL.BOX_PRIOR.PROJECTION_WEIGHT`` / ``PAIRWISE_WEIGHT`` (point_sup.modeling.common.box_prior).
:class:`MixedMaskLoss` (``"mixed"``, ``MODEL.MIXED_SUP.ENABLED``)
    each instance by the kind of its object (point_sup.data.mixed_supervision) through the loss of
    that kind (box-only objects: BoxInst's losses with ``MODEL.BOXINST.ENABLED``, else none), the
    kinds weighted as point_sup.modeling.common.mixed_loss says. With ``MODEL.BOX_PRIOR`` the
    point-supervised objects get :class:`PointsWithBoxPriorLoss` and the box-only ones the weighted
    box terms (with or without ``MODEL.BOXINST.ENABLED``).

Every loss takes an optional ``selected`` (R,) bool: the loss of the selected instances alone,
computed on all R with the others weighted 0, so that nothing is read back from the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.structures import ImageList, Instances

from ...config import condinst_supervision
from ...data.mixed_supervision import Supervision
from ...point_labels import PADDING_LABEL
from ..common.box_prior import BoxPriorOptions
from ..common.box_terms import selected_mean
from ..common.mixed_loss import kind_weights
from ..common.point_features import get_point_coords_wrt_box
from ..common.point_loss import PointLossOptions, check_choice, ignore_points_outside_boxes, point_bce_loss
from .boxinst import (
    PairwiseOptions,
    cell_color_similarity,
    input_rgb,
    neighbour_offsets,
    pairwise_loss,
    pairwise_warmup,
    projection_loss,
    removed_bottom_rows,
)
from .head import MaskInstances
from .losses import (
    box_masks_at_stride,
    dice_loss,
    mask_cells_at_stride,
    point_logits_at_cells,
    point_logits_bilinear,
)

__all__ = [
    "POINT_LOGITS",
    "SUPERVISIONS",
    "BoxInstMaskLoss",
    "DiceMaskLoss",
    "MaskLoss",
    "MaskLossInputs",
    "MixedMaskLoss",
    "PointMaskLoss",
    "PointsWithBoxPriorLoss",
    "build_mask_loss",
]

SUPERVISIONS = ("mask", "points", "boxes", "mixed")
# MODEL.CONDINST.POINT_LOGITS: "cell" (paper footnote 2), "bilinear" (point_sup's option).
POINT_LOGITS = ("cell", "bilinear")


@dataclass(frozen=True)
class MaskLossInputs:
    """What the mask losses read besides the mask logits.

    Attributes:
        gt_instances: per image, the ground truth (``gt_boxes``, and ``gt_masks`` /
            ``gt_point_coords`` + ``gt_point_labels`` / ``gt_supervision`` as the supervision needs).
        images: the normalised, padded network input.
        stride: s of the mask logits (``MODEL.CONDINST.MASK_OUT_STRIDE``), in input pixels.
        pixel_mean, pixel_std: (C, 1, 1), the model's input normalisation (BoxInst reads colours).
        original_heights: per image, the height of the original image (the input's ``height``):
            where BoxInst's removed bottom rows are; None: no row is removed.
    """

    gt_instances: list[Instances]
    images: ImageList
    stride: int
    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor
    original_heights: list[int] | None = None


class MaskLoss:
    """A supervision of CondInst's masks: named losses of R instances' mask logits."""

    # The supervision's name, one of SUPERVISIONS (point_sup.config.condinst_supervision).
    name: ClassVar[str]

    def __call__(
        self,
        mask_logits: torch.Tensor,
        inst: MaskInstances,
        inputs: MaskLossInputs,
        selected: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """
        Args:
            mask_logits: (R, 1, H_o, W_o) float32 logits at stride ``inputs.stride``.
            inst: the R instances, with ``gt_index``.
            inputs: the ground truth and the images.
            selected: optional (R,) bool: the loss of these instances alone.

        Returns:
            Scalar losses by name; 0 with the graph of ``mask_logits`` when there is no instance.
        """
        raise NotImplementedError


class DiceMaskLoss(MaskLoss):
    """CondInst's dice loss (M), averaged over the instances."""

    name = "mask"

    def __init__(self, require_masks: bool = True) -> None:
        """
        Args:
            require_masks: ValueError for an image with objects but no ``gt_masks``; off (mixed
                supervision), such an image has no mask-supervised object and its targets are 0.
        """
        self.require_masks = require_masks

    def __call__(self, mask_logits, inst, inputs, selected=None):
        if len(inst.image_index) == 0:
            return {"loss_mask": mask_logits.sum() * 0.0}
        map_size = tuple(mask_logits.shape[-2:])
        device = mask_logits.device
        targets = []
        for gt, image_size in zip(inputs.gt_instances, inputs.images.image_sizes, strict=True):
            if len(gt) and not gt.has("gt_masks"):
                if self.require_masks:
                    raise ValueError(
                        "CondInst trained from masks got objects without gt_masks; train from points "
                        "with INPUT.POINT_SUP or from boxes with MODEL.BOXINST.ENABLED"
                    )
                # No mask-supervised object in this image: no row of the target is read.
                targets.append(torch.zeros((len(gt), *map_size), dtype=torch.bool, device=device))
            elif len(gt):
                targets.append(mask_cells_at_stride(gt.gt_masks, image_size, map_size, inputs.stride, device))
            else:
                targets.append(torch.zeros((0, *map_size), dtype=torch.bool, device=device))
        losses = dice_loss(mask_logits.sigmoid()[:, 0], inst.per_instance(targets))
        return {"loss_mask": selected_mean(losses, selected)}


class PointMaskLoss(MaskLoss):
    """Footnote 2's point loss (P_N): the point BCE at each labelled point's prediction."""

    name = "points"

    def __init__(self, point_logits: str = "cell", normalization: str = "all_points") -> None:
        """
        Args:
            point_logits: one of :data:`POINT_LOGITS`, how a point's prediction is read
                (``MODEL.CONDINST.POINT_LOGITS``).
            normalization: ``MODEL.POINT_LOSS.NORMALIZATION``.
        """
        check_choice("MODEL.CONDINST.POINT_LOGITS", point_logits, POINT_LOGITS)
        self.point_logits = point_logits
        self.normalization = normalization

    def __call__(self, mask_logits, inst, inputs, selected=None):
        """The instances not ``selected`` have all their points counted as padding, so that they are
        neither supervised nor counted."""
        if len(inst.image_index) == 0:
            return {"loss_mask": mask_logits.sum() * 0.0}
        gt_instances = inputs.gt_instances
        num_points = max(gt.gt_point_coords.shape[1] for gt in gt_instances)
        coords = inst.per_instance(
            [
                F.pad(gt.gt_point_coords, (0, 0, 0, num_points - gt.gt_point_coords.shape[1]))
                for gt in gt_instances
            ]
        ).to(torch.float32)
        labels = inst.per_instance(
            [
                F.pad(gt.gt_point_labels, (0, num_points - gt.gt_point_labels.shape[1]), value=PADDING_LABEL)
                for gt in gt_instances
            ]
        )
        boxes = inst.per_instance([gt.gt_boxes.tensor for gt in gt_instances])
        labels = ignore_points_outside_boxes(get_point_coords_wrt_box(boxes, coords), labels)
        if selected is not None:
            labels = torch.where(selected[:, None], labels, PADDING_LABEL)
        read = point_logits_at_cells if self.point_logits == "cell" else point_logits_bilinear
        point_logits = read(mask_logits, coords, inputs.stride)
        loss = point_bce_loss(
            point_logits, labels, normalization=self.normalization, log_prefix="condinst_point"
        )
        return {"loss_mask": loss}


class BoxInstMaskLoss(MaskLoss):
    """BoxInst's projection term (averaged over the instances) and pairwise term (averaged over the
    selected pairs of all instances, warmed up)."""

    name = "boxes"

    def __init__(
        self,
        pairwise: PairwiseOptions,
        bottom_pixels_removed: int = 10,
        input_format: str = "BGR",
        projection_weight: float = 1.0,
        pairwise_weight: float = 1.0,
    ) -> None:
        """
        Args:
            pairwise: the pairwise term's options.
            projection_weight, pairwise_weight: the terms' weights (BoxInst's: 1; the box prior's
                ``MODEL.BOX_PRIOR`` keys).
            bottom_pixels_removed: the pairwise term treats this many bottom rows of each original
                image, scaled to the input, as outside it (AdelaiDet's 10 for COCO); <= 0: none.
            input_format: ``INPUT.FORMAT`` of the input images, whose colours are read.
        """
        if input_format not in ("BGR", "RGB"):
            raise ValueError(
                f"BoxInst reads colours from BGR or RGB input, not INPUT.FORMAT {input_format!r}"
            )
        self.pairwise = pairwise
        self.offsets = neighbour_offsets(pairwise.size, pairwise.dilation)
        self.bottom_pixels_removed = bottom_pixels_removed
        self.input_format = input_format
        self.projection_weight = projection_weight
        self.pairwise_weight = pairwise_weight

    def color_similarity(self, inputs: MaskLossInputs, map_size: tuple[int, int]) -> torch.Tensor:
        """(N, K, H_o, W_o) colour similarities of the input images' cells (boxinst.cell_color_similarity)."""
        image_sizes = list(inputs.images.image_sizes)
        bottom_rows = None
        if inputs.original_heights is not None:
            bottom_rows = removed_bottom_rows(
                self.bottom_pixels_removed, inputs.original_heights, image_sizes
            )
        rgb = input_rgb(inputs.images, inputs.pixel_mean, inputs.pixel_std, self.input_format)
        return cell_color_similarity(rgb, image_sizes, map_size, inputs.stride, self.offsets, bottom_rows)

    def __call__(self, mask_logits, inst, inputs, selected=None):
        """An instance that is not ``selected`` has no cell in its box: none of its pairs is averaged."""
        if len(inst.image_index) == 0:
            zero = mask_logits.sum() * 0.0
            return {"loss_prj": zero, "loss_pairwise": zero}
        map_size = tuple(mask_logits.shape[-2:])
        boxes = inst.per_instance([gt.gt_boxes.tensor for gt in inputs.gt_instances])
        box_masks = box_masks_at_stride(boxes, map_size, inputs.stride)
        logits = mask_logits[:, 0]
        prj = selected_mean(projection_loss(logits.sigmoid(), box_masks), selected)
        if selected is not None:
            box_masks = box_masks * selected[:, None, None].to(box_masks.dtype)
        with torch.no_grad():
            similarity = self.color_similarity(inputs, map_size)[inst.image_index]
        pairwise = pairwise_loss(logits, similarity, box_masks, self.offsets, self.pairwise.color_thresh)
        factor = self.pairwise_weight * pairwise_warmup(self.pairwise.warmup_iters)
        return {"loss_prj": prj * self.projection_weight, "loss_pairwise": pairwise * factor}


class PointsWithBoxPriorLoss(MaskLoss):
    """P_N's point loss plus the box prior's terms on the same instances (``MODEL.BOX_PRIOR``)."""

    name = "points"

    def __init__(self, points: PointMaskLoss, boxes: BoxInstMaskLoss) -> None:
        """
        Args:
            points: the point loss (``loss_mask``).
            boxes: the box terms with the prior's weights (``loss_prj``, ``loss_pairwise``).
        """
        self.points = points
        self.boxes = boxes

    def __call__(self, mask_logits, inst, inputs, selected=None):
        return {
            **self.points(mask_logits, inst, inputs, selected),
            **self.boxes(mask_logits, inst, inputs, selected),
        }


class MixedMaskLoss(MaskLoss):
    """Each instance through the loss of its object's kind (``gt_supervision``), kinds weighted.

    Every kind's loss runs on all R instances with the others' ``selected`` off, which is the loss of
    the kind's instances alone without selecting them on the host; the kind weights
    (point_sup.modeling.common.mixed_loss.kind_weights) are computed on the device from device counts.
    A loss name of several kinds (``loss_mask`` of masks and points) is their weighted sum.
    """

    name = "mixed"

    def __init__(self, kinds: Sequence[tuple[Supervision, MaskLoss]], weighting: str = "instances") -> None:
        """
        Args:
            kinds: (kind, its loss) in the order of the counts of
                :func:`~point_sup.modeling.common.mixed_loss.kind_weights`: masks, points, then (with
                BoxInst's box losses) boxes. A kind not listed (box-only without BoxInst) gets no loss.
            weighting: ``MODEL.MIXED_SUP.WEIGHTING``.
        """
        self.kinds = list(kinds)
        self.weighting = weighting

    def __call__(self, mask_logits, inst, inputs, selected=None):
        kinds = (
            inst.per_instance([gt.gt_supervision for gt in inputs.gt_instances])
            if len(inst.image_index)
            else torch.zeros((0,), dtype=torch.int64, device=mask_logits.device)
        )
        rows = [kinds == kind for kind, _ in self.kinds]
        weights = kind_weights(torch.stack([r.sum() for r in rows]), self.weighting)
        losses: dict[str, torch.Tensor] = {}
        for k, ((_, loss), kind_rows) in enumerate(zip(self.kinds, rows, strict=True)):
            for name, value in loss(mask_logits, inst, inputs, selected=kind_rows).items():
                term = weights[k] * value
                losses[name] = losses[name] + term if name in losses else term
        return losses


def build_mask_loss(cfg: CfgNode) -> MaskLoss:
    """The mask loss of a CondInst / BoxInst config (point_sup.config.condinst_supervision)."""
    supervision = condinst_supervision(cfg)
    options = PointLossOptions.from_config(cfg)
    prior = BoxPriorOptions.from_config(cfg)
    boxinst = cfg.MODEL.BOXINST
    # BoxInst's terms weigh 1; with the box prior they carry its weights (same terms, same objects).
    weights = (prior.projection_weight, prior.pairwise_weight) if prior.enabled else (1.0, 1.0)
    boxes = BoxInstMaskLoss(
        PairwiseOptions.from_config(cfg), boxinst.BOTTOM_PIXELS_REMOVED, cfg.INPUT.FORMAT, *weights
    )
    points: MaskLoss = PointMaskLoss(cfg.MODEL.CONDINST.POINT_LOGITS, options.normalization)
    if prior.enabled:
        points = PointsWithBoxPriorLoss(points, boxes)
    if supervision in ("points", "boxes"):
        return points if supervision == "points" else boxes
    if supervision == "mask":
        return DiceMaskLoss()
    kinds = [(Supervision.MASK, DiceMaskLoss(require_masks=False)), (Supervision.POINTS, points)]
    if boxinst.ENABLED or prior.enabled:
        kinds.append((Supervision.BOX, boxes))
    return MixedMaskLoss(kinds, options.mixed_weighting)
