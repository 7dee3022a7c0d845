"""Mixed precision (``SOLVER.AMP.ENABLED``) with every ROI point head: under CPU autocast, to bfloat16
(AMP on CPU) and to float16 (CUDA's AMP dtype, whose range is the risk: largest value 65504), the
whole model's losses are finite and close to float32's, the mask head's gradients finite and close
to float32's (the grid sampling, the generated MLP and the point loss run under autocast as
Detectron2's AMP trainer would run them), and float16 inference gives finite detections whose masks
agree with float32's. CondInst's cases are in test_condinst.py."""

from __future__ import annotations

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import pairwise_iou

HEADS = ["PointSupMaskRCNNConvUpsampleHead", "PointSupPointRendMaskHead", "PointSupImplicitPointRendMaskHead"]
# (head, MODEL.IMPLICIT_POINTREND.PARAMS_RANK): the small Implicit PointRend too.
CASES = [(HEADS[0], 0), (HEADS[1], 0), (HEADS[2], 0), (HEADS[2], 8)]
CASE_IDS = ["mask_rcnn", "point_rend", "implicit", "implicit_small"]

# float16 keeps 11 bits of mantissa: losses to about 3 digits. Measured on these models: the point
# losses within 6e-6, Detectron2's box classification loss within 4.3e-3 (its logits' rounding);
# gradient cosines 0.99999, norms within 0.1 %.
FLOAT16_LOSS_RTOL = 0.01
FLOAT16_MIN_COSINE = 0.999
FLOAT16_NORM_RTOL = 0.01
# Inference: a float32 detection is matched by the float16 one of highest IoU (scores within float16
# rounding can swap the order, or which of two near-equal boxes is kept); measured: every detection
# matched at IoU > 0.999, masks differing in at most 1.2 % of the matched pixels (PointRend's
# subdivision picks its uncertain points from rounded logits, so whole 224² cells can differ).
FLOAT16_MIN_MATCHED = 0.9
FLOAT16_MASK_PIXELS_DIFFERING = 0.03


def _rcnn(tiny_cfg, point_sup_inputs, head: str, params_rank: int = 0):
    cfg = tiny_cfg(head)
    cfg.INPUT.POINT_SUP = True
    if head != HEADS[0]:
        cfg.MODEL.ROI_MASK_HEAD.POOLER_TYPE = ""
    cfg.MODEL.ROI_MASK_HEAD.POINT_HEAD_ON = head == HEADS[1]
    cfg.MODEL.IMPLICIT_POINTREND.PARAMS_RANK = params_rank
    # Narrow heads: CPU bfloat16 matmuls are slow, and Implicit PointRend's parameter head (1024 x
    # all generated parameters by default) would take most of a minute.
    cfg.MODEL.ROI_MASK_HEAD.FC_DIM = 64
    cfg.MODEL.POINT_HEAD.FC_DIM = 32
    torch.manual_seed(0)
    model = build_model(cfg)
    return model, "roi_heads.mask_head", point_sup_inputs((3, 2))


@pytest.mark.parametrize("head", HEADS)
def test_bfloat16_autocast_gives_finite_losses_and_gradients_close_to_float32(
    tiny_cfg, point_sup_inputs, autocast_check, head
):
    autocast_check(*_rcnn(tiny_cfg, point_sup_inputs, head))


@pytest.mark.parametrize(("head", "params_rank"), CASES, ids=CASE_IDS)
def test_float16_autocast_training_step_is_finite_and_close_to_float32(
    tiny_cfg, point_sup_inputs, autocast_check, head, params_rank
):
    autocast_check(
        *_rcnn(tiny_cfg, point_sup_inputs, head, params_rank),
        dtype=torch.float16,
        loss_rtol=FLOAT16_LOSS_RTOL,
        min_cosine=FLOAT16_MIN_COSINE,
        norm_rtol=FLOAT16_NORM_RTOL,
    )


@pytest.mark.parametrize(("head", "params_rank"), CASES, ids=CASE_IDS)
def test_float16_autocast_inference_matches_float32(tiny_cfg, point_sup_inputs, head, params_rank):
    model, _, inputs = _rcnn(tiny_cfg, point_sup_inputs, head, params_rank)
    model.eval()
    inputs = [{"image": x["image"], "height": 128, "width": 128} for x in inputs]
    with torch.no_grad():
        full = model(inputs)
        with torch.autocast("cpu", dtype=torch.float16):
            half = model(inputs)
    for f, h in zip(full, half, strict=True):
        f, h = f["instances"], h["instances"]
        assert len(f) > 0 and len(h) > 0
        assert torch.isfinite(h.scores).all() and torch.isfinite(h.pred_boxes.tensor).all()
        assert h.pred_masks.dtype == torch.bool and h.pred_masks.shape[1:] == f.pred_masks.shape[1:]
        iou, match = pairwise_iou(f.pred_boxes, h.pred_boxes).max(dim=1)
        matched = iou > 0.99
        assert matched.float().mean() >= FLOAT16_MIN_MATCHED
        differ = (f.pred_masks[matched] != h.pred_masks[match[matched]]).float().mean()
        assert differ <= FLOAT16_MASK_PIXELS_DIFFERING
