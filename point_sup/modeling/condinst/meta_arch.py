"""CondInst (Tian et al., ECCV 2020) on Detectron2's FCOS, trained from masks, P_N points or boxes
(BoxInst, Tian et al., CVPR 2021): paper Table 3b (CondInst M, P10 + point aug.) and the box-only
baseline of Figures 3 and 5.

``PointSupCondInst`` (``META_ARCH_REGISTRY``) is Detectron2's ``FCOS`` (its anchor points, matching,
focal / GIoU / centerness losses and box decoding) plus CondInst's two additions: a *controller*
(point_sup.modeling.condinst.head) predicting at every location the parameters of a dynamic mask head
(point_sup.modeling.condinst.dynamic_mask_head), and a *mask branch*
(point_sup.modeling.condinst.mask_branch) giving a few channels at the stride of its first level.

Each positive FCOS location (training) or detection (inference) runs its generated head on its image's
mask features plus its relative coordinates; the (R, 1, H_o, W_o) logits are upsampled to
``MODEL.CONDINST.MASK_OUT_STRIDE`` (4) over the padded input. Training adds the mask losses of the
config's supervision (:attr:`PointSupCondInst.mask_loss`, point_sup.modeling.condinst.supervision:
``loss_mask``, or ``loss_prj`` / ``loss_pairwise``) to FCOS's ``loss_fcos_cls`` / ``loss_fcos_loc`` /
``loss_fcos_ctr``. Inference (point_sup.modeling.condinst.decoding) outputs Detectron2's standard
``pred_boxes``, ``scores``, ``pred_classes`` and full-image boolean ``pred_masks`` (N, H, W).

Registered as ``PointSupCondInst`` so that AdelaiDet's ``CondInst`` can be installed alongside. Host
synchronisation, float16 and what differs from AdelaiDet: docs/implementation.md, *CondInst*.
"""

from __future__ import annotations

import warnings

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.meta_arch.fcos import FCOS
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import get_event_storage

from .decoding import detect, postprocess
from .dynamic_mask_head import (
    DynamicMaskHeadLayout,
    dynamic_mask_logits,
    relative_coordinates,
    upsample_logits,
)
from .head import CondInstHead, MaskInstances
from .mask_branch import MaskBranch
from .supervision import MaskLoss, MaskLossInputs, build_mask_loss

__all__ = ["PointSupCondInst", "topk_per_object"]


@META_ARCH_REGISTRY.register()
class PointSupCondInst(FCOS):
    """CondInst / BoxInst (see the module docstring)."""

    @configurable
    def __init__(
        self,
        *,
        mask_branch: MaskBranch,
        mask_head_layout: DynamicMaskHeadLayout,
        mask_loss: MaskLoss,
        mask_out_stride: int = 4,
        max_proposals: int = -1,
        topk_proposals_per_image: int = -1,
        infer_crop_to_box: bool = False,
        **fcos_kwargs,
    ):
        """
        Args:
            mask_branch: the mask branch; its stride must be a multiple of ``mask_out_stride``.
            mask_head_layout: shapes of the dynamic mask head (``num_params`` = the controller's).
            mask_loss: the supervision's mask loss (point_sup.modeling.condinst.supervision).
            mask_out_stride: stride of the predicted masks (4).
            max_proposals, topk_proposals_per_image: ``MODEL.CONDINST`` (see point_sup.config).
            infer_crop_to_box: remove mask pixels outside the predicted box at inference.
            fcos_kwargs: arguments of Detectron2's ``FCOS`` (backbone, head, head_in_features,
                num_classes, ...).
        """
        super().__init__(**fcos_kwargs)
        if mask_branch.stride % mask_out_stride:
            raise ValueError(
                f"MODEL.CONDINST.MASK_OUT_STRIDE ({mask_out_stride}) must divide the mask branch's "
                f"stride ({mask_branch.stride})"
            )
        if mask_branch.out_channels != mask_head_layout.in_channels:
            raise ValueError("the mask branch's OUT_CHANNELS must be the dynamic mask head's input channels")
        missing = [f for f in mask_branch.in_features if f not in self.head_in_features]
        if missing:
            raise ValueError(
                f"MODEL.CONDINST.MASK_BRANCH.IN_FEATURES {mask_branch.in_features} must be among "
                f"MODEL.FCOS.IN_FEATURES {self.head_in_features}"
            )
        self.mask_branch = mask_branch
        self.mask_head_layout = mask_head_layout
        self.mask_loss = mask_loss
        self.mask_out_stride = mask_out_stride
        self.max_proposals = max_proposals
        self.topk_proposals_per_image = topk_proposals_per_image
        self.infer_crop_to_box = infer_crop_to_box
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
            "mask_loss": build_mask_loss(cfg),
            "mask_out_stride": condinst.MASK_OUT_STRIDE,
            "max_proposals": condinst.MAX_PROPOSALS,
            "topk_proposals_per_image": condinst.TOPK_PROPOSALS_PER_IM,
            "infer_crop_to_box": condinst.INFER_CROP_TO_BOX,
        }

    # ----------------------------------------------------------------------------------------------
    # Shared by training, inference and given-box inference (point_sup.engine.given_boxes)
    # ----------------------------------------------------------------------------------------------
    def predict(self, batched_inputs: list[dict]) -> tuple[ImageList, list[torch.Tensor], tuple]:
        """The normalised, padded images, the head's input features (L levels) and the head's
        predictions (four lists over levels, see :class:`CondInstHead`)."""
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        features = [features[f] for f in self.head_in_features]
        return images, features, self.head(features)

    def dense_predictions(self, predictions: tuple) -> tuple[list[torch.Tensor], ...]:
        """The head's predictions per level as (N, R_l, C): class logits, box deltas and centerness in
        float32 (a no-op without autocast: FCOS's losses, scores and boxes are computed in float32,
        float16 box decoding would round coordinates beyond 1024 to whole pixels), then the
        controller's parameters in their dtype."""
        logits, deltas, ctrness, params = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4, 1, self.mask_head_layout.num_params]
        )
        logits, deltas, ctrness = ([t.float() for t in x] for x in (logits, deltas, ctrness))
        return logits, deltas, ctrness, params

    def mask_features(self, features: list[torch.Tensor]) -> torch.Tensor:
        """The mask branch's (N, C, H, W) output for the head's input features."""
        return self.mask_branch(dict(zip(self.head_in_features, features, strict=True)))

    def mask_logits(self, mask_features: torch.Tensor, inst: MaskInstances) -> torch.Tensor:
        """(R, 1, H_o, W_o) float32 logits at the mask output stride for the R instances.

        The generated heads run in the features' dtype (float16 under CUDA's AMP, as CondInst's
        authors run them); their logits are upsampled and returned in float32: the mask losses sum
        over every cell of a COCO-sized map, beyond float16's 65504.
        """
        stride = self.mask_branch.stride
        rel = None
        if self.mask_head_layout.rel_coords:
            rel = relative_coordinates(
                inst.locations, inst.sizes_of_interest, tuple(mask_features.shape[-2:]), stride
            )
        logits = dynamic_mask_logits(mask_features, inst.image_index, inst.params, self.mask_head_layout, rel)
        return upsample_logits(logits.float(), stride // self.mask_out_stride)

    def mask_map_size(self, mask_features: torch.Tensor) -> tuple[int, int]:
        """(H_o, W_o) of the mask logits at the mask output stride."""
        factor = self.mask_branch.stride // self.mask_out_stride
        return mask_features.shape[-2] * factor, mask_features.shape[-1] * factor

    def level_tensors(self, anchors: list[Boxes]) -> tuple[torch.Tensor, torch.Tensor]:
        """Anchor points (R_total, 2) and sizes of interest (R_total,) over all levels, in order."""
        centers = Boxes.cat(anchors).get_centers()
        soi = torch.cat(
            [
                torch.full_like(a.tensor[:, 0], s, dtype=torch.as_tensor(s).dtype)
                for a, s in zip(anchors, self.sizes_of_interest, strict=True)
            ]
        )
        return centers, soi

    def forward(self, batched_inputs):
        """Training: FCOS's and the mask losses. Inference: Detectron2's standard outputs with
        full-image ``pred_masks`` (see the module docstring)."""
        if not self.training:
            return self.inference(batched_inputs)
        images, features, predictions = self.predict(batched_inputs)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        heights = [x.get("height", h) for x, (h, _) in zip(batched_inputs, images.image_sizes, strict=True)]
        return self.forward_training(images, features, predictions, gt_instances, heights)

    # ----------------------------------------------------------------------------------------------
    # Training
    #
    # The step reads nothing back from the device but the one count that sizes the mask head's batch
    # (``nonzero`` of the positive locations in positive_instances; the number of mask instances it
    # logs is that count): selections are weights or ``torch.where``, sizes and offsets are Python
    # numbers from the ground truth's lengths. Detectron2's FCOS losses (``self.losses``) read their
    # own.
    # ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def match(self, anchors: list[Boxes], gt_instances: list[Instances]):
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
        original_heights: list[int] | None = None,
    ):
        """FCOS's losses and the mask losses of :attr:`mask_loss`.

        Args:
            images, features, predictions, gt_instances: as Detectron2's ``FCOS.forward_training``.
            original_heights: per image, the original image's height (the input's ``height``), which
                places BoxInst's removed bottom rows; None: no row is removed.
        """
        logits, deltas, ctrness, params = self.dense_predictions(predictions)
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes, gt_index = self.match(anchors, gt_instances)
        losses = self.losses(anchors, logits, gt_labels, deltas, gt_boxes, ctrness)

        mask_features = self.mask_features(features)
        inst = self.positive_instances(anchors, gt_labels, gt_index, logits, ctrness, params)
        get_event_storage().put_scalar("condinst/num_mask_instances", float(len(inst.image_index)))
        mask_logits = self.mask_logits(mask_features, inst)
        # Keeps every parameter in the graph when there is nothing to supervise (DDP needs it). Summed
        # in float32: under float16 autocast a sum over every cell of every level would overflow, and
        # inf * 0 is NaN.
        zero = (
            mask_logits.sum() * 0.0
            + mask_features.float().sum() * 0.0
            + sum(p.float().sum() for p in params) * 0.0
        )
        inputs = MaskLossInputs(
            gt_instances, images, self.mask_out_stride, self.pixel_mean, self.pixel_std, original_heights
        )
        losses.update({k: v + zero for k, v in self.mask_loss(mask_logits, inst, inputs).items()})
        return losses

    def positive_instances(self, anchors, gt_labels, gt_index, logits, ctrness, params) -> MaskInstances:
        """The positive locations of the batch (BoxInst's top-k per object with
        ``TOPK_PROPOSALS_PER_IM``, at most ``MAX_PROPOSALS`` drawn at random) with their parameters."""
        centers, soi = self.level_tensors(anchors)
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
            positive = topk_per_object(positive, gt_index_all, score, self.topk_proposals_per_image)
        # The step's one read from the device: how many instances the mask head runs on.
        image_index, anchor_index = positive.nonzero(as_tuple=True)
        if self.max_proposals >= 0 and len(image_index) > self.max_proposals:
            keep = torch.randperm(len(image_index), device=image_index.device)[: self.max_proposals]
            image_index, anchor_index = image_index[keep], anchor_index[keep]
        return MaskInstances(
            image_index=image_index,
            params=params_all[image_index, anchor_index],
            locations=centers[anchor_index],
            sizes_of_interest=soi[anchor_index],
            gt_index=gt_index_all[image_index, anchor_index],
        )

    # ----------------------------------------------------------------------------------------------
    # Inference
    # ----------------------------------------------------------------------------------------------
    def inference(
        self,
        batched_inputs: list[dict],
        detected_instances: list[Instances] | None = None,
        do_postprocess: bool = True,
    ):
        """Inference, as ``GeneralizedRCNN.inference``.

        Args:
            batched_inputs: as for ``forward``.
            detected_instances: deprecated: masks for given boxes are
                point_sup.engine.given_boxes.inference_with_given_boxes, which this calls.
            do_postprocess: resize to each input's ``height`` x ``width`` and threshold the masks
                (else: instances in input coordinates with ``pred_mask_logits``).

        Returns:
            ``[{"instances": Instances}]`` per image (or the list of Instances without postprocessing).
        """
        if detected_instances is not None:
            # Imported here: the engine builds on the model, not the model on the engine.
            from ...engine.given_boxes import inference_with_given_boxes

            warnings.warn(
                "PointSupCondInst.inference(detected_instances=...) is deprecated: use "
                "point_sup.engine.given_boxes.inference_with_given_boxes(model, ...)",
                DeprecationWarning,
                stacklevel=2,
            )
            return inference_with_given_boxes(self, batched_inputs, detected_instances, do_postprocess)
        images, features, predictions = self.predict(batched_inputs)
        results = self.forward_inference(images, features, predictions)
        if not do_postprocess:
            return results
        return self.postprocess(results, batched_inputs, images, self.infer_crop_to_box)

    def forward_inference(self, images: ImageList, features, predictions) -> list[Instances]:
        """Detections with ``pred_mask_logits`` (D, 1, H_o, W_o) at the mask output stride, per image,
        in input coordinates."""
        logits, deltas, ctrness, params = self.dense_predictions(predictions)
        anchors = self.anchor_generator(features)
        mask_features = self.mask_features(features)
        centers, soi = self.level_tensors(anchors)
        params_all = torch.cat(params, dim=1)  # (N, R_total, P)
        results = []
        for i, image_size in enumerate(images.image_sizes):
            det, flat = detect(self, i, image_size, anchors, logits, deltas, ctrness)
            inst = MaskInstances.at_locations(i, flat, params_all, centers, soi)
            det.pred_mask_logits = self.mask_logits(mask_features, inst)
            results.append(det)
        return results

    def postprocess(
        self, results: list[Instances], batched_inputs: list[dict], images: ImageList, crop_to_box: bool
    ) -> list[dict]:
        """``[{"instances": ...}]`` of :func:`~point_sup.modeling.condinst.decoding.postprocess` of each
        image's ``results``, at its input's ``height`` x ``width`` (its own size when absent)."""
        processed = []
        for result, inputs, image_size in zip(results, batched_inputs, images.image_sizes, strict=True):
            height = inputs.get("height", image_size[0])
            width = inputs.get("width", image_size[1])
            instances = postprocess(result, image_size, height, width, self.mask_out_stride, crop_to_box)
            processed.append({"instances": instances})
        return processed


def topk_per_object(
    positive: torch.Tensor, gt_index: torch.Tensor, score: torch.Tensor, k: int
) -> torch.Tensor:
    """BoxInst's TOPK_PROPOSALS_PER_IM: per image, for each object, the ``k // #objects`` (at least
    one) positive locations with the highest ``max_class p_cls * p_ctr``; #objects counts the objects
    of the image with a positive location.

    One batched computation on the device, no per-object loop and no read to the host: within each
    image, the locations are ordered by object, then by score (highest first); a location's rank
    within its object is its position minus its object's first position, and it is kept when the rank
    is below its image's quota. Equal scores: the lower location index (levels in order, row-major
    within a level) ranks first (both sorts are stable).

    Args:
        positive: (N, R_total) bool, the positive locations.
        gt_index: (N, R_total) int64, each location's object in its image (any value where not
            positive).
        score: (N, R_total) floating, the ranking score.
        k: locations per image (``MODEL.CONDINST.TOPK_PROPOSALS_PER_IM``).

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
    quota = (k // num_objects.clamp(min=1)).clamp(min=1)
    keep = (grouped >= 0) & (rank < quota)
    return torch.zeros_like(positive).scatter(1, order, keep)
