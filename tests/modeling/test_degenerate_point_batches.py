"""Batches whose labelled points supervise nothing, or not every image: each R-CNN mask head trains.

Point-based augmentation keeps only the points inside the augmented image, and user data can carry
empty point lists, so a batch (on one rank) can have foreground proposals with ``gt_point_coords`` of
shape (G, 0, 2), points that all lie outside their proposal boxes, or images with different numbers
of points. Every head, in point and in mixed supervision, must then give finite losses (0 where no
point is supervised) whose graph reaches every parameter of the mask head: DDP without
``find_unused_parameters`` waits for a gradient of each one.
"""

from __future__ import annotations

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import ROI_MASK_HEAD_REGISTRY
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from point_sup.data.mixed_supervision import Supervision
from point_sup.modeling.common.point_features import get_point_coords_wrt_image

SIZE = 128
NUM_CLASSES = 3
FEATURE_SHAPES = {"p2": ShapeSpec(channels=16, stride=4), "p3": ShapeSpec(channels=16, stride=8)}
# name -> (registered head, config overrides)
HEADS = {
    "mask_rcnn": ("PointSupMaskRCNNConvUpsampleHead", {}),
    "point_rend": ("PointSupPointRendMaskHead", {"POINT_HEAD_ON": True}),
    "implicit": ("PointSupImplicitPointRendMaskHead", {}),
    "implicit_small": ("PointSupImplicitPointRendMaskHead", {"PARAMS_RANK": 4}),
}
BATCHES = ("no_points", "outside_boxes", "zero_and_ten")


def _head(tiny_cfg, name: str, mixed: bool):
    registered, overrides = HEADS[name]
    cfg = tiny_cfg(registered, num_classes=NUM_CLASSES, own_pooling=name != "mask_rcnn")
    cfg.INPUT.POINT_SUP = not mixed
    cfg.MODEL.MIXED_SUP.ENABLED = mixed
    cfg.MODEL.ROI_MASK_HEAD.POINT_HEAD_ON = overrides.get("POINT_HEAD_ON", False)
    cfg.MODEL.IMPLICIT_POINTREND.PARAMS_RANK = overrides.get("PARAMS_RANK", 0)
    shape = ShapeSpec(channels=8, height=14, width=14) if name == "mask_rcnn" else FEATURE_SHAPES
    torch.manual_seed(0)
    return ROI_MASK_HEAD_REGISTRY.get(registered)(cfg, shape)


def _proposals(batch: str, mixed: bool) -> list[Instances]:
    """Two images of foreground proposals (3 and 2) whose points are as ``batch`` says; in mixed
    supervision they are all point-supervised (the second image's last one mask-supervised in the
    ``zero_and_ten`` batch, so that both kinds meet the degenerate points)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for image, n in enumerate((3, 2)):
        inst = Instances((SIZE, SIZE))
        xy0 = torch.rand(n, 2, generator=g) * 60
        boxes = torch.cat([xy0, xy0 + 20 + torch.rand(n, 2, generator=g) * 40], dim=1)
        inst.proposal_boxes = Boxes(boxes)
        inst.gt_classes = torch.randint(NUM_CLASSES, (n,), generator=g)
        num_points = 10 if batch == "outside_boxes" or (batch == "zero_and_ten" and image == 1) else 0
        rel = torch.rand(n, num_points, 2, generator=g)
        if batch == "outside_boxes":  # beyond the right or the bottom edge of the box
            rel[..., int(torch.randint(2, (1,), generator=g))] += 1.05
        inst.gt_point_coords = get_point_coords_wrt_image(boxes, rel)
        inst.gt_point_labels = (torch.rand(n, num_points, generator=g) > 0.5).float()
        if mixed:
            kinds = [Supervision.POINTS] * n
            if batch == "zero_and_ten" and image == 1:
                kinds[-1] = Supervision.MASK
            inst.gt_supervision = torch.tensor([int(k) for k in kinds])
            inst.gt_masks = BitMasks(torch.rand(n, SIZE, SIZE, generator=g) > 0.5)
        out.append(inst)
    return out


def _inputs(name: str, num_proposals: int):
    g = torch.Generator().manual_seed(1)
    if name == "mask_rcnn":
        return torch.randn(num_proposals, 8, 14, 14, generator=g)
    return {
        k: torch.randn(2, 16, SIZE // s.stride, SIZE // s.stride, generator=g)
        for k, s in FEATURE_SHAPES.items()
    }


@pytest.mark.parametrize("mixed", [False, True], ids=["points", "mixed"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", list(HEADS))
def test_finite_losses_and_every_parameter_in_the_graph(tiny_cfg, name, batch, mixed) -> None:
    head = _head(tiny_cfg, name, mixed)
    head.train()
    proposals = _proposals(batch, mixed)
    inputs = _inputs(name, sum(len(p) for p in proposals))
    with EventStorage():
        losses = head(inputs, proposals)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    point_losses = [v for k, v in losses.items() if k != "loss_l2"]
    if batch == "zero_and_ten":  # the second image's points supervise
        assert all(float(v) > 0 for v in point_losses), losses
    else:  # nothing is supervised: exactly 0
        assert all(float(v) == 0.0 for v in point_losses), losses
    sum(losses.values()).backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None]
    assert not missing, f"parameters outside the loss graph: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())
