"""Masks for given boxes: the inference of self-training's pseudo masks (paper §3.3.2,
point_sup.engine.pseudo_masks), for every model family.

The given boxes replace the detector's own: each box of ``detected_instances`` (``pred_boxes`` in the
input image's coordinates, ``pred_classes``; other fields are kept) gets the mask the model predicts
for it, so that no object is missed and none invented. The R-CNN models (Mask R-CNN, PointRend,
Implicit PointRend) do it with Detectron2's ``GeneralizedRCNN.inference(..., detected_instances=...)``
(their masks are pasted into their boxes); CondInst, whose masks come from FCOS locations rather than
from boxes, with :func:`condinst_masks_for_given_boxes`.
"""

from __future__ import annotations

import torch
from detectron2.structures import Instances

from ..modeling.condinst.head import MaskInstances
from ..modeling.condinst.meta_arch import PointSupCondInst

__all__ = ["condinst_masks_for_given_boxes", "inference_with_given_boxes"]


def inference_with_given_boxes(
    model: torch.nn.Module,
    batched_inputs: list[dict],
    detected_instances: list[Instances],
    do_postprocess: bool = True,
) -> list:
    """The masks ``model`` predicts for the given boxes, as its ``inference`` returns detections.

    Args:
        model: a Detectron2 ``GeneralizedRCNN`` with a mask head, or point_sup's CondInst; in eval mode.
        batched_inputs: the model's inputs (``image``, ``height``, ``width``).
        detected_instances: per image, the boxes (``pred_boxes`` in input-image coordinates,
            ``pred_classes``).
        do_postprocess: as for ``GeneralizedRCNN.inference``.

    Returns:
        ``[{"instances": Instances}]`` per image with ``pred_masks`` at each input's output size
        (without post-processing: the model's own per-image results).
    """
    if isinstance(model, PointSupCondInst):
        return condinst_masks_for_given_boxes(model, batched_inputs, detected_instances, do_postprocess)
    return model.inference(
        batched_inputs, detected_instances=detected_instances, do_postprocess=do_postprocess
    )


def condinst_masks_for_given_boxes(
    model: PointSupCondInst,
    batched_inputs: list[dict],
    detected_instances: list[Instances],
    do_postprocess: bool = True,
) -> list:
    """CondInst's masks of given boxes.

    Each box takes the generated parameters of the location FCOS would assign it: its best-scoring
    matched location for the box's class (``sqrt(p_cls * p_ctr)``); else the best inside the box; else
    the nearest. Its mask is restricted to the box, as a Mask R-CNN mask pasted into its box is.

    Args:
        model, batched_inputs, detected_instances, do_postprocess: as for
            :func:`inference_with_given_boxes`.

    Returns:
        Per image, post-processed ``{"instances"}`` (masks cropped to the boxes); without
        post-processing, the given instances in input coordinates with ``pred_mask_logits``
        (R, 1, H_o, W_o) at the mask output stride.
    """
    images, features, predictions = model.predict(batched_inputs)
    logits, _, ctrness, params = model.dense_predictions(predictions)
    anchors = model.anchor_generator(features)
    centers, soi = model.level_tensors(anchors)
    mask_features = model.mask_features(features)
    logits_all, ctrness_all = torch.cat(logits, dim=1), torch.cat(ctrness, dim=1)  # (N, R_total, ...)
    params_all = torch.cat(params, dim=1)
    results = []
    for i, given in enumerate(detected_instances):
        given = given.to(model.device)
        boxes = given.pred_boxes
        result = Instances(images.image_sizes[i], **given.get_fields())
        if len(boxes) == 0:
            result.pred_mask_logits = mask_features.new_zeros((0, 1, *model.mask_map_size(mask_features)))
            results.append(result)
            continue
        classes = given.pred_classes.clamp(0, model.num_classes - 1)
        prob = logits_all[i].sigmoid()[:, classes].T  # (M, R)
        score = torch.sqrt(prob * ctrness_all[i, :, 0].sigmoid()[None])
        matched = model._match_anchors(boxes, anchors) > 0  # Detectron2's FCOS assignment rule
        b = boxes.tensor
        inside = (
            (centers[None, :, 0] >= b[:, 0:1])
            & (centers[None, :, 0] <= b[:, 2:3])
            & (centers[None, :, 1] >= b[:, 1:2])
            & (centers[None, :, 1] <= b[:, 3:4])
        )
        dist = ((centers[None] - boxes.get_centers()[:, None]) ** 2).sum(dim=2)
        # Tiers: matched and inside (2), either (1), by score within a tier; else by distance.
        tier = matched.to(score.dtype) + inside.to(score.dtype)
        key = torch.where(tier > 0, 10.0 * tier + score, -dist / (dist.max() + 1.0))
        inst = MaskInstances.at_locations(i, key.argmax(dim=1), params_all, centers, soi)
        result.pred_mask_logits = model.mask_logits(mask_features, inst)
        results.append(result)
    if not do_postprocess:
        return results
    return model.postprocess(results, batched_inputs, images, crop_to_box=True)
