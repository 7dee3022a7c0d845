"""CondInst's inference outputs: FCOS's decoding of one image into detections that keep their
locations, and the detections' mask logits turned into Detectron2's full-image masks.

Decoding (:func:`detect`) is Detectron2's FCOS's: scores ``sqrt(p_cls * p_ctr)`` above
``MODEL.FCOS.INFERENCE_TH_TEST`` (CondInst's configs threshold after the centerness, as Detectron2's
FCOS does), the top ``PRE_NMS_TOPK_TEST`` per level, boxes clipped to the image, class-wise NMS,
``TEST.DETECTIONS_PER_IMAGE`` kept; each detection also keeps the flat index of its location, whose
generated head predicts its mask. Post-processing (:func:`postprocess`): the stride-s mask logits
upsampled to the input, resized to the output size and thresholded at probability 0.5, optionally
cropped to the predicted box (paper footnote 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.layers import batched_nms
from detectron2.modeling.meta_arch.fcos import FCOS
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

from .losses import box_cells_at_stride, mask_logits_to_image

__all__ = ["detect", "postprocess"]


def detect(
    model: FCOS,
    image: int,
    image_size: tuple[int, int],
    anchors: list[Boxes],
    logits: list[torch.Tensor],
    deltas: list[torch.Tensor],
    ctrness: list[torch.Tensor],
) -> tuple[Instances, torch.Tensor]:
    """FCOS's detections of image ``image`` of the batch.

    Args:
        model: the FCOS model, whose test-time settings decode (``box2box_transform``,
            ``test_score_thresh``, ``test_topk_candidates``, ``test_nms_thresh``,
            ``max_detections_per_image``).
        image: the image's index in the batch.
        image_size: its (h, w) in input pixels.
        anchors: L levels' anchor points (R_l boxes each, Detectron2's FCOS anchors).
        logits, deltas, ctrness: L levels' (N, R_l, K), (N, R_l, 4), (N, R_l, 1) float32 predictions.

    Returns:
        The detections (``pred_boxes`` in input coordinates, ``scores``, ``pred_classes``), and (D,)
        int64 the flat index over all levels, in order, of each detection's location.
    """
    boxes, scores, classes, levels, anchor_rows = [], [], [], [], []
    for level, (a, lg, dl, ct) in enumerate(zip(anchors, logits, deltas, ctrness, strict=True)):
        score = torch.sqrt(lg[image].sigmoid() * ct[image].sigmoid())  # (R_l, K)
        candidates = (score > model.test_score_thresh).nonzero()
        cand_scores = score[candidates[:, 0], candidates[:, 1]]
        num = cand_scores.shape[0]  # a tensor while tracing: the count stays dynamic in the graph
        if isinstance(num, torch.Tensor):
            num = torch.clamp(num, max=model.test_topk_candidates)
        else:
            num = min(num, model.test_topk_candidates)
        cand_scores, order = cand_scores.topk(num)
        rows, cls = candidates[order, 0], candidates[order, 1]
        boxes.append(model.box2box_transform.apply_deltas(dl[image][rows], a.tensor[rows]))
        scores.append(cand_scores)
        classes.append(cls)
        levels.append(torch.full_like(rows, level))
        anchor_rows.append(rows)
    boxes = Boxes(torch.cat(boxes))
    boxes.clip(image_size)
    scores, classes = torch.cat(scores), torch.cat(classes)
    levels, anchor_rows = torch.cat(levels), torch.cat(anchor_rows)
    keep = batched_nms(boxes.tensor, scores, classes, model.test_nms_thresh)[: model.max_detections_per_image]
    levels, anchor_rows = levels[keep], anchor_rows[keep]
    sizes = [torch.zeros((), dtype=torch.int64, device=levels.device)]
    sizes += [torch.as_tensor(a.tensor.shape[0], device=levels.device) for a in anchors[:-1]]
    offsets = torch.stack(sizes).cumsum(0)
    det = Instances(image_size, pred_boxes=boxes[keep], scores=scores[keep], pred_classes=classes[keep])
    return det, offsets[levels] + anchor_rows


def postprocess(
    det: Instances, image_size: tuple[int, int], height: int, width: int, stride: int, crop_to_box: bool
) -> Instances:
    """Rescale to the output size (Detectron2's ``detector_postprocess`` for the boxes) and turn the
    mask logits into full-image boolean masks.

    Args:
        det: detections in input coordinates with ``pred_mask_logits`` (D, 1, H_o, W_o) at stride
            ``stride`` over the padded input.
        image_size: (h, w) of the unpadded input.
        height, width: the output size (the input's ``height`` / ``width``).
        stride: of the mask logits.
        crop_to_box: remove the mask pixels outside the predicted box (``INFER_CROP_TO_BOX``).

    Returns:
        Detectron2's standard outputs: ``pred_boxes``, ``scores``, ``pred_classes`` and ``pred_masks``
        (D', height, width) bool, D' <= D (empty boxes dropped, their masks with them).
    """
    result = detector_postprocess(det, height, width)
    logits = result.get("pred_mask_logits")
    result.remove("pred_mask_logits")
    logits = mask_logits_to_image(logits, stride, image_size)
    if len(logits) and (logits.shape[-2] != height or logits.shape[-1] != width):
        logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
    masks = logits[:, 0] > 0.0  # probability > 0.5
    if len(logits) == 0:
        masks = torch.zeros((0, height, width), dtype=torch.bool, device=logits.device)
    if crop_to_box and len(masks):
        masks &= box_cells_at_stride(result.pred_boxes.tensor, (height, width), 1)
    result.pred_masks = masks
    return result
