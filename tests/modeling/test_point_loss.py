"""Shared point loss machinery: targets, mask labels at points, class selection, the point BCE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage

from point_sup.modeling.point_loss import (
    IGNORE_LABEL,
    get_point_targets,
    mask_labels_at_points,
    point_bce_loss,
    select_class_logits,
)


def _proposals(boxes: list[list[float]], coords: torch.Tensor, labels: torch.Tensor) -> Instances:
    inst = Instances((100, 120))
    inst.proposal_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).view(-1, 4))
    inst.gt_point_coords = coords
    inst.gt_point_labels = labels
    return inst


def test_point_targets_padding_out_of_box_and_edges() -> None:
    box = [10.0, 20.0, 50.0, 60.0]
    image_a = _proposals(
        [box],
        # inside, on the left edge, on the bottom-right corner, just outside (right), ignored
        torch.tensor([[[30.0, 40.0], [10.0, 30.0], [50.0, 60.0], [50.01, 40.0], [20.0, 30.0]]]),
        torch.tensor([[1.0, 0.0, 1.0, 1.0, -1.0]]),
    )
    empty = _proposals([], torch.zeros(0, 3, 2), torch.zeros(0, 3))
    image_b = _proposals(
        [box, [0.0, 0.0, 20.0, 10.0]],
        torch.tensor([[[20.0, 30.0], [9.99, 30.0]], [[5.0, 5.0], [5.0, -0.5]]]),
        torch.tensor([[0.0, 1.0], [1.0, 1.0]]),
    )
    labels_before = image_a.gt_point_labels.clone()
    coords, labels = get_point_targets([image_a, empty, image_b])
    assert coords.shape == (3, 5, 2) and labels.shape == (3, 5)
    assert labels.tolist() == [
        [1.0, 0.0, 1.0, IGNORE_LABEL, IGNORE_LABEL],
        [0.0, IGNORE_LABEL, IGNORE_LABEL, IGNORE_LABEL, IGNORE_LABEL],
        [1.0, IGNORE_LABEL, IGNORE_LABEL, IGNORE_LABEL, IGNORE_LABEL],
    ]
    torch.testing.assert_close(coords[0, :3], torch.tensor([[0.5, 0.5], [0.0, 0.25], [1.0, 1.0]]))
    torch.testing.assert_close(coords[2, 0], torch.tensor([0.25, 0.5]))
    assert torch.equal(image_a.gt_point_labels, labels_before), "the input must not be modified"


def test_point_targets_without_proposals() -> None:
    coords, labels = get_point_targets([_proposals([], torch.zeros(0, 4, 2), torch.zeros(0, 4))])
    assert coords.shape == (0, 0, 2) and labels.shape == (0, 0)
    coords, labels = get_point_targets([])
    assert coords.shape == (0, 0, 2) and labels.shape == (0, 0)


def _expected_labels(masks: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    R, H, W = masks.shape
    expected = torch.zeros(coords.shape[:2])
    for r in range(R):
        for p in range(coords.shape[1]):
            x, y = coords[r, p].tolist()
            col, row = int(torch.floor(torch.tensor(x))), int(torch.floor(torch.tensor(y)))
            if 0 <= col < W and 0 <= row < H:
                expected[r, p] = float(masks[r, row, col])
    return expected


def test_mask_labels_at_points_bitmasks() -> None:
    torch.manual_seed(0)
    masks = torch.rand(3, 30, 40) > 0.5
    coords = torch.rand(3, 50, 2) * torch.tensor([48.0, 38.0]) - 4.0  # some outside the image
    coords[0, 0] = torch.tensor([39.999, 29.999])  # last pixel
    coords[0, 1] = torch.tensor([40.0, 10.0])  # right outer edge: outside
    labels = mask_labels_at_points(BitMasks(masks), coords, (30, 40))
    assert labels.dtype == torch.float32
    torch.testing.assert_close(labels, _expected_labels(masks, coords))
    assert labels[0, 1] == 0.0


def test_mask_labels_at_points_polygons() -> None:
    polygons = PolygonMasks(
        [[[5.0, 5.0, 25.0, 5.0, 25.0, 20.0, 5.0, 20.0]], [[10.0, 2.0, 30.0, 25.0, 2.0, 25.0]]]
    )
    bitmasks = BitMasks.from_polygon_masks(polygons, 30, 40).tensor
    assert bitmasks.any(dim=(1, 2)).all()
    torch.manual_seed(1)
    coords = torch.rand(2, 200, 2) * torch.tensor([40.0, 30.0])
    labels = mask_labels_at_points(polygons, coords, (30, 40))
    torch.testing.assert_close(labels, _expected_labels(bitmasks, coords))
    assert 0 < labels.mean() < 1


def test_mask_labels_at_points_without_masks() -> None:
    labels = mask_labels_at_points(
        BitMasks(torch.zeros(0, 8, 8, dtype=torch.bool)), torch.zeros(0, 4, 2), (8, 8)
    )
    assert labels.shape == (0, 4)


def test_select_class_logits() -> None:
    logits = torch.arange(3 * 4 * 2, dtype=torch.float32).view(3, 4, 2)
    selected = select_class_logits(logits, torch.tensor([2, 0, 3]))
    assert selected.shape == (3, 1, 2)
    assert torch.equal(selected[:, 0], torch.stack([logits[0, 2], logits[1, 0], logits[2, 3]]))
    agnostic = logits[:, :1]
    assert torch.equal(select_class_logits(agnostic, torch.tensor([2, 0, 3])), agnostic)


def test_point_bce_loss_averages_over_valid_points() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.3, 4.0, -2.0]], requires_grad=True)
    labels = torch.tensor([[1.0, 0.0, -1.0], [-1.0, 0.0, 1.0]])
    with EventStorage() as storage:
        loss = point_bce_loss(logits, labels, log_prefix="test")
        scalars = {k: v[0] for k, v in storage.latest().items()}
    valid = labels >= 0
    expected = F.binary_cross_entropy_with_logits(logits[valid], labels[valid])
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert (logits.grad[~valid] == 0).all() and (logits.grad[valid] != 0).all()
    assert scalars["test/valid_point_fraction"] == 4 / 6
    assert (
        scalars["test/accuracy"] == 2 / 4
    )  # 2.0 -> 1 right, -1.0 -> 0 right, 4.0 -> 0 wrong, -2.0 -> 1 wrong


def test_point_bce_loss_all_ignored_keeps_graph() -> None:
    logits = torch.randn(2, 3, requires_grad=True)
    loss = point_bce_loss(logits, torch.full((2, 3), IGNORE_LABEL))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros(2, 3))
    empty = torch.zeros(0, 0, requires_grad=True)
    loss = point_bce_loss(empty, torch.zeros(0, 0))
    assert loss.item() == 0.0 and loss.requires_grad
