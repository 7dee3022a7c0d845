"""Mixed precision (``SOLVER.AMP.ENABLED``) with every point head: under CPU bfloat16 autocast the
whole model's losses are finite and close to float32's, and the mask head's gradients are finite and
close to float32's (the grid sampling, the generated MLP and the point loss run under autocast as
Detectron2's AMP trainer would run them). CondInst's case is in test_condinst.py."""

from __future__ import annotations

import pytest
import torch
from detectron2.modeling import build_model

HEADS = ["PointSupMaskRCNNConvUpsampleHead", "PointSupPointRendMaskHead", "PointSupImplicitPointRendMaskHead"]


def _rcnn(tiny_cfg, point_sup_inputs, head: str):
    cfg = tiny_cfg(head)
    cfg.INPUT.POINT_SUP = True
    if head != HEADS[0]:
        cfg.MODEL.ROI_MASK_HEAD.POOLER_TYPE = ""
    cfg.MODEL.ROI_MASK_HEAD.POINT_HEAD_ON = head == HEADS[1]
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
