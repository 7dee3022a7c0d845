"""Mask R-CNN's mask head trained from labelled points."""

from __future__ import annotations

import math

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads.mask_head import (
    ROI_MASK_HEAD_REGISTRY,
    MaskRCNNConvUpsampleHead,
    mask_rcnn_loss,
)
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from point_sup.modeling.common.point_features import (
    generate_regular_grid_point_coords,
    get_point_coords_wrt_image,
)
from point_sup.modeling.common.point_loss import roi_grid_point_loss
from point_sup.modeling.mask_rcnn.mask_head import PointSupMaskRCNNConvUpsampleHead

SIDE = 28


def _proposals_with_masks(seed: int = 0) -> list[Instances]:
    """Three images (2, 0 and 1 foreground proposals) with random blob masks and fractional boxes."""
    g = torch.Generator().manual_seed(seed)
    images = []
    for boxes in ([[3.3, 4.7, 50.2, 40.9], [20.5, 10.0, 77.7, 58.1]], [], [[0.0, 0.0, 79.0, 63.0]]):
        inst = Instances((64, 80))
        n = len(boxes)
        inst.proposal_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).view(-1, 4))
        coarse = torch.rand(n, 1, 8, 10, generator=g)
        masks = torch.nn.functional.interpolate(coarse, size=(64, 80), mode="bilinear")[:, 0] > 0.5
        inst.gt_masks = BitMasks(masks)
        inst.gt_classes = torch.randint(0, 4, (n,), generator=g)
        images.append(inst)
    return images


def _add_grid_points(images: list[Instances]) -> None:
    """One labelled point at the centre of each 28x28 cell of every proposal, labelled with the
    cell's value in Mask R-CNN's 28x28 target (``crop_and_resize``)."""
    for inst in images:
        n = len(inst)
        boxes = inst.proposal_boxes.tensor
        grid = generate_regular_grid_point_coords(n, SIDE, "cpu")
        inst.gt_point_coords = get_point_coords_wrt_image(boxes, grid)
        targets = inst.gt_masks.crop_and_resize(boxes, SIDE)
        inst.gt_point_labels = targets.view(n, SIDE * SIDE).to(torch.float32)


@pytest.mark.parametrize("num_classes", [4, 1])
def test_grid_points_equal_mask_rcnn_loss(num_classes: int) -> None:
    images = _proposals_with_masks()
    _add_grid_points(images)
    torch.manual_seed(0)
    logits = (torch.randn(3, num_classes, SIDE, SIDE) * 3).requires_grad_()
    with EventStorage():
        expected = mask_rcnn_loss(logits, images)
        (grad_expected,) = torch.autograd.grad(expected, logits)
        loss = roi_grid_point_loss(logits, images)
        (grad,) = torch.autograd.grad(loss, logits)
    assert 0 < images[0].gt_point_labels.mean() < 1
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(grad, grad_expected, rtol=0, atol=1e-7)


def _head_cfg(tiny_cfg, point_sup: bool):
    cfg = tiny_cfg("PointSupMaskRCNNConvUpsampleHead", num_classes=4)
    cfg.INPUT.POINT_SUP = point_sup
    return cfg


def test_head_from_points_equals_head_from_masks(tiny_cfg) -> None:
    shape = ShapeSpec(channels=8, height=14, width=14)
    head_cls = ROI_MASK_HEAD_REGISTRY.get("PointSupMaskRCNNConvUpsampleHead")
    mask_head = head_cls(_head_cfg(tiny_cfg, False), shape, loss_weight=2.0)
    point_head = head_cls(_head_cfg(tiny_cfg, True), shape, loss_weight=2.0)
    assert isinstance(point_head, MaskRCNNConvUpsampleHead)
    assert point_head.point_loss_options.point_sup and not mask_head.point_loss_options.point_sup
    point_head.load_state_dict(mask_head.state_dict())
    # A larger predictor init than the parent's 0.001 so the masks are far from uniform.
    torch.nn.init.normal_(point_head.predictor.weight, std=0.5)
    mask_head.load_state_dict(point_head.state_dict())
    parent = MaskRCNNConvUpsampleHead(_head_cfg(tiny_cfg, False), shape)
    parent.load_state_dict(mask_head.state_dict())
    images = _proposals_with_masks(seed=1)
    _add_grid_points(images)
    x = torch.randn(3, 8, 14, 14)
    with EventStorage():
        from_masks = mask_head(x, images)["loss_mask"]
        from_parent = parent(x, images)["loss_mask"]
        from_points = point_head(x, images)["loss_mask"]
    assert from_masks.item() == 2.0 * from_parent.item()  # the parent's loss, weighted
    torch.testing.assert_close(from_points, from_masks, rtol=0, atol=1e-5)
    assert from_points.item() > 0.05


def _bilinear_weights(u: float, v: float, side: int) -> dict[tuple[int, int], float]:
    """Weights of the grid cells (row, col) in the interpolated value at box-relative (u, v),
    cells centred at (k + 0.5) / side, cells outside the grid dropped (zero padding)."""
    gx, gy = u * side - 0.5, v * side - 0.5
    x0, y0 = math.floor(gx), math.floor(gy)
    fx, fy = gx - x0, gy - y0
    weights = {}
    for row, wy in ((y0, 1 - fy), (y0 + 1, fy)):
        for col, wx in ((x0, 1 - fx), (x0 + 1, fx)):
            if 0 <= row < side and 0 <= col < side and wx * wy > 0:
                weights[(row, col)] = weights.get((row, col), 0.0) + wx * wy
    return weights


@pytest.mark.parametrize("normalization", ["all_points", "valid_points"])
def test_gradients_reach_only_labelled_in_box_points(normalization: str) -> None:
    box = [10.0, 20.0, 66.0, 76.0]  # 56 x 56: two image pixels per cell
    # interior, near the top edge, at the left edge, in the bottom-left corner cell, ignored, out of box x2
    rel = [(0.3, 0.4), (0.71, 0.05), (0.005, 0.6), (0.005, 0.995), (0.5, 0.6), (1.2, 0.5), (0.5, -0.1)]
    point_labels = [1.0, 0.0, 1.0, 0.0, -1.0, 1.0, 0.0]
    inst = Instances((100, 100))
    inst.proposal_boxes = Boxes(torch.tensor([box]))
    inst.gt_classes = torch.tensor([1])
    inst.gt_point_coords = torch.tensor(
        [[[box[0] + u * (box[2] - box[0]), box[1] + v * (box[3] - box[1])] for u, v in rel]]
    )
    inst.gt_point_labels = torch.tensor([point_labels])
    torch.manual_seed(0)
    logits = torch.randn(1, 3, SIDE, SIDE).requires_grad_()
    loss = roi_grid_point_loss(logits, [inst], normalization=normalization)
    (grad,) = torch.autograd.grad(loss, logits)

    # Analytic gradient: z_k = sum_c w_kc L_c, loss = sum_k BCE(z_k, y_k) over the 4 valid points,
    # divided by all 7 labelled points (Detectron2's default) or by the 4 valid ones.
    class_logits = logits[0, 1].detach()
    expected = torch.zeros(SIDE, SIDE)
    expected_loss = 0.0
    valid = [k for k, (u, v) in enumerate(rel) if point_labels[k] >= 0 and 0 <= u <= 1 and 0 <= v <= 1]
    assert valid == [0, 1, 2, 3]
    denominator = len(rel) if normalization == "all_points" else len(valid)
    for k in valid:
        weights = _bilinear_weights(*rel[k], SIDE)
        assert 1 <= len(weights) <= 4
        z = sum(w * class_logits[rc] for rc, w in weights.items())
        y = point_labels[k]
        expected_loss += float(torch.nn.functional.softplus(z) - y * z) / denominator
        for rc, w in weights.items():
            expected[rc] += (torch.sigmoid(z) - y) * w / denominator
    assert loss.item() == pytest.approx(expected_loss, abs=1e-6)
    assert (grad[0, [0, 2]] == 0).all(), "only the ground-truth class channel gets gradients"
    torch.testing.assert_close(grad[0, 1], expected, rtol=1e-5, atol=1e-7)
    # Non-zero exactly at the bilinear neighbours of the valid points: 4 cells inside, 2 at an
    # edge, 1 in a corner (the rest of the bilinear footprint falls outside the box).
    neighbours = set().union(*(_bilinear_weights(*rel[k], SIDE) for k in valid))
    assert {tuple(rc) for rc in grad[0, 1].nonzero().tolist()} == neighbours
    assert [len(_bilinear_weights(*rel[k], SIDE)) for k in valid] == [4, 4, 2, 1]


def test_no_proposals_or_no_valid_points_keep_the_graph(tiny_cfg) -> None:
    head = PointSupMaskRCNNConvUpsampleHead(
        _head_cfg(tiny_cfg, True), ShapeSpec(channels=8, height=14, width=14)
    )
    head.train()
    empty = Instances((64, 64))
    empty.proposal_boxes = Boxes(torch.zeros(0, 4))
    with EventStorage():
        loss = head(torch.zeros(0, 8, 14, 14), [empty, empty])["loss_mask"]
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()

    inst = Instances((64, 64))
    inst.proposal_boxes = Boxes(torch.tensor([[10.0, 10.0, 20.0, 20.0]]))
    inst.gt_classes = torch.tensor([0])
    inst.gt_point_coords = torch.tensor([[[30.0, 30.0], [15.0, 15.0]]])  # outside, and ignored
    inst.gt_point_labels = torch.tensor([[1.0, -1.0]])
    head.zero_grad()
    with EventStorage():
        loss = head(torch.randn(1, 8, 14, 14), [inst])["loss_mask"]
    assert loss.item() == 0.0
    loss.backward()
    assert head.predictor.weight.grad is not None and (head.predictor.weight.grad == 0).all()


def test_training_step_in_generalized_rcnn(tiny_cfg, point_sup_inputs) -> None:
    cfg = tiny_cfg("PointSupMaskRCNNConvUpsampleHead")
    cfg.INPUT.POINT_SUP = True
    model = build_model(cfg)
    model.train()
    with EventStorage() as storage:
        losses = model(point_sup_inputs())
        total = sum(losses.values())
        total.backward()
        logged = storage.latest()
    assert torch.isfinite(losses["loss_mask"]) and losses["loss_mask"].item() > 0
    assert "mask_rcnn_point/accuracy" in logged
    grad = model.roi_heads.mask_head.predictor.weight.grad
    assert grad is not None and grad.abs().sum() > 0

    # A batch of images without instances has no foreground proposal: zero mask loss, no crash.
    with EventStorage():
        losses = model(point_sup_inputs((0, 0)))
    assert losses["loss_mask"].item() == 0.0

    model.eval()
    with torch.no_grad():
        outputs = model([{"image": x["image"], "height": 64, "width": 64} for x in point_sup_inputs()])
    for out in outputs:
        inst = out["instances"]
        assert inst.pred_masks.shape == (len(inst), 64, 64)
