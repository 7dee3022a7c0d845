"""Tiny Detectron2 models for the modeling tests: random weights, CPU, ~128 px images."""

from __future__ import annotations

import copy
from operator import attrgetter

import pytest
import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from point_sup import add_point_sup_config
from point_sup.modeling.common.point_features import get_point_coords_wrt_image


def tiny_rcnn_cfg(mask_head: str, num_classes: int = 3, *, own_pooling: bool = False) -> CfgNode:
    """A Mask R-CNN R18-FPN config small enough for a CPU training step in well under a second.

    GroupNorm instead of frozen BatchNorm because there are no pretrained weights here (see
    /work/shared/notes/environment.md); channel widths are cut to keep the step cheap. With
    ``own_pooling`` (PointRend's and Implicit PointRend's heads, which pool their own features) the
    mask head gets no pooler, p2-p3 and narrower widths.
    """
    cfg = add_point_sup_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "GN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16], [32], [64], [128], [256]]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 200
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 100
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 100
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 50
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 1
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    cfg.MODEL.ROI_MASK_HEAD.NAME = mask_head
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 2
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 32
    cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 14
    cfg.MODEL.POINT_HEAD.NUM_CLASSES = num_classes
    cfg.TEST.DETECTIONS_PER_IMAGE = 20
    cfg.INPUT.MIN_SIZE_TRAIN = (128,)
    cfg.INPUT.MAX_SIZE_TRAIN = 128
    cfg.INPUT.MIN_SIZE_TEST = 128
    cfg.INPUT.MAX_SIZE_TEST = 128
    if own_pooling:
        cfg.MODEL.ROI_MASK_HEAD.POOLER_TYPE = ""
        cfg.MODEL.ROI_MASK_HEAD.IN_FEATURES = ("p2", "p3")
        cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 8
        cfg.MODEL.ROI_MASK_HEAD.FC_DIM = 32
        cfg.MODEL.POINT_HEAD.FC_DIM = 16
        cfg.MODEL.POINT_HEAD.TRAIN_NUM_POINTS = 49
    return cfg


@pytest.fixture
def tiny_cfg():
    """Factory ``tiny_cfg(mask_head_name, num_classes=3)`` of tiny R18-FPN Mask R-CNN configs."""
    torch.manual_seed(0)
    return tiny_rcnn_cfg


def make_point_sup_inputs(num_instances: tuple[int, ...] = (3, 0)) -> list[dict]:
    """Hand-made point-supervised training inputs (dataset mapper output) of 128x128 images."""
    g = torch.Generator().manual_seed(0)
    all_boxes = torch.tensor([[10.0, 10.0, 60.0, 70.0], [50.0, 40.0, 120.0, 110.0], [5.0, 80.0, 40.0, 125.0]])
    inputs = []
    for n in num_instances:
        inst = Instances((128, 128))
        boxes = all_boxes[:n]
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = torch.arange(n) % 3
        rel = torch.rand(n, 10, 2, generator=g)
        inst.gt_point_coords = get_point_coords_wrt_image(boxes, rel)
        # object = the centre half of the box, like a blob
        inst.gt_point_labels = ((rel - 0.5).abs() < 0.25).all(dim=2).float()
        inst.gt_point_labels[:, -1] = -1.0
        image = torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8, generator=g)
        inputs.append({"image": image, "instances": inst, "height": 128, "width": 128})
    return inputs


@pytest.fixture
def point_sup_inputs():
    """Factory ``point_sup_inputs(num_instances=(3, 0))`` of point-supervised training inputs."""
    return make_point_sup_inputs


def losses_and_grads(
    model, part: str, inputs, amp: bool, dtype: torch.dtype = torch.bfloat16
) -> tuple[dict, torch.Tensor]:
    """The losses and the gradients of the submodule ``part`` (a dotted name) of a copy of ``model``
    (a copy: state such as FCOS's loss-normaliser EMA must not carry over from run to run), under CPU
    autocast to ``dtype`` when ``amp``."""
    model = copy.deepcopy(model)
    model.train()
    model.zero_grad()
    torch.manual_seed(1)  # the same proposals / sampled points in both runs
    with EventStorage(0), torch.autocast("cpu", dtype=dtype, enabled=amp):
        losses = model(inputs)
    sum(losses.values()).backward()
    grads = torch.cat([p.grad.flatten() for p in attrgetter(part)(model).parameters() if p.grad is not None])
    return {k: v.detach().float() for k, v in losses.items()}, grads


def assert_autocast_close_to_float32(
    model,
    part: str,
    inputs,
    *,
    dtype: torch.dtype = torch.bfloat16,
    loss_rtol: float = 0.05,
    min_cosine: float = 0.95,
    norm_rtol: float = 0.15,
) -> None:
    """SOLVER.AMP.ENABLED's check (tests/modeling/test_amp.py): under CPU autocast to ``dtype`` the
    losses of ``model`` on ``inputs`` are finite and within ``loss_rtol`` (relative, plus 1e-3) of
    float32's, the gradients of its ``part`` finite, in float32's direction (cosine > ``min_cosine``)
    and of its size (norm within ``norm_rtol``).

    The defaults are bfloat16's (SOLVER.AMP on CPU; see the comments below). float16 (CUDA's AMP
    dtype, which autocast also runs on CPU) keeps 3 more mantissa bits but a far smaller range
    (largest value 65504, smallest normal 6e-5): its callers pass tighter tolerances, so that what
    it catches is range, an overflow (inf / NaN) or an underflow (a gradient off in direction or size).
    """
    full, full_grads = losses_and_grads(model, part, inputs, amp=False)
    half, half_grads = losses_and_grads(model, part, inputs, amp=True, dtype=dtype)
    assert set(full) == set(half)
    for name, value in half.items():
        assert torch.isfinite(value), name
        # bfloat16 keeps 8 bits of mantissa: about 2-3 significant digits through a whole network
        assert abs(float(value) - float(full[name])) <= loss_rtol * abs(float(full[name])) + 1e-3, name
    assert torch.isfinite(half_grads).all()
    assert full_grads.abs().sum() > 0
    # Direction and size, not elementwise: bfloat16's backward through a randomly initialised
    # network cancels large terms, so single entries move by tens of percent (CondInst: 20 % in L2)
    # while the gradient as a whole stays put.
    full64, half64 = full_grads.double(), half_grads.double()
    cosine = float(full64 @ half64 / (full64.norm() * half64.norm()))
    # 0.95: CondInst's P10 case passed 0.97 on one 2-core machine and gives 0.968 on another (the CPU's
    # bfloat16 kernels differ); a wrong cast (a float16 underflow, a loss left in bfloat16) is far lower.
    assert cosine > min_cosine, cosine
    assert abs(float(half64.norm() / full64.norm()) - 1.0) < norm_rtol


@pytest.fixture
def autocast_check():
    """:func:`assert_autocast_close_to_float32`: ``autocast_check(model, part, inputs)`` (bfloat16),
    or with ``dtype=torch.float16`` and that dtype's tolerances."""
    return assert_autocast_close_to_float32
