"""Shared point loss machinery: targets, mask labels at points, class selection, the point BCE."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage

from point_sup.modeling.common.point_features import point_sample
from point_sup.modeling.common.point_loss import (
    get_point_targets,
    ignore_points_outside_boxes,
    mask_labels_at_points,
    point_bce_loss,
    select_class_logits,
)
from point_sup.point_labels import IGNORE_LABEL, PADDING_LABEL
from point_sup.utils.host_syncs import count_host_syncs


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
    pad = PADDING_LABEL
    assert labels.tolist() == [
        [1.0, 0.0, 1.0, IGNORE_LABEL, IGNORE_LABEL],
        [0.0, IGNORE_LABEL, pad, pad, pad],  # padding stays padding, though outside the box
        [1.0, IGNORE_LABEL, pad, pad, pad],
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
    labels = mask_labels_at_points(BitMasks(masks), coords, (30, 40), mode="pixel")
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
    labels = mask_labels_at_points(polygons, coords, (30, 40), mode="pixel")
    torch.testing.assert_close(labels, _expected_labels(bitmasks, coords))
    assert 0 < labels.mean() < 1
    # The default labels are bilinear, read from the same rasterization.
    default = mask_labels_at_points(polygons, coords, (30, 40))
    torch.testing.assert_close(default, mask_labels_at_points(BitMasks(bitmasks), coords, (30, 40)))


def _bilinear_mask_value(mask: torch.Tensor, x: float, y: float) -> float:
    """Hand-written bilinear interpolation of an (H, W) image mask whose pixel (i, j) has its value
    at the centre (i + 0.5, j + 0.5); zero beyond the image."""
    H, W = mask.shape
    gx, gy = x - 0.5, y - 0.5
    x0, y0 = int(torch.floor(torch.tensor(gx))), int(torch.floor(torch.tensor(gy)))
    fx, fy = gx - x0, gy - y0
    value = 0.0
    for row, wy in ((y0, 1 - fy), (y0 + 1, fy)):
        for col, wx in ((x0, 1 - fx), (x0 + 1, fx)):
            if 0 <= row < H and 0 <= col < W:
                value += wx * wy * float(mask[row, col])
    return value


def test_mask_labels_at_points_bilinear_is_detectron2s() -> None:
    """The default labels of mask-supervised point heads: Detectron2's PointRend interpolates the bit
    mask bilinearly (soft labels at edges), not the containing pixel's value."""
    torch.manual_seed(2)
    masks = torch.rand(3, 30, 40) > 0.5
    coords = torch.rand(3, 50, 2) * torch.tensor([48.0, 38.0]) - 4.0
    coords[0, :3] = torch.tensor([[10.5, 7.5], [10.0, 7.5], [0.2, 29.9]])  # centre, between, corner
    labels = mask_labels_at_points(BitMasks(masks), coords, (30, 40))
    expected = torch.tensor(
        [[_bilinear_mask_value(masks[r], *coords[r, p].tolist()) for p in range(50)] for r in range(3)]
    )
    torch.testing.assert_close(labels, expected, rtol=1e-5, atol=1e-6)
    assert labels[0, 0] == float(masks[0, 7, 10])  # at a pixel centre: that pixel's value
    assert ((labels > 0) & (labels < 1)).any(), "soft labels between pixels of different value"

    point_features = pytest.importorskip("detectron2.projects.point_rend.point_features")
    if not hasattr(point_features, "sample_point_labels"):
        pytest.skip("this detectron2's PointRend has no sample_point_labels")
    images = []
    for start, stop in ((0, 2), (2, 3)):
        inst = Instances((30, 40))
        inst.gt_masks = BitMasks(masks[start:stop])
        images.append(inst)
    torch.testing.assert_close(point_features.sample_point_labels(images, coords), torch.cat(
        [mask_labels_at_points(images[0].gt_masks, coords[:2], (30, 40)),
         mask_labels_at_points(images[1].gt_masks, coords[2:], (30, 40))]
    ))  # fmt: skip


def test_mask_labels_at_points_bilinear_equals_the_former_division_by_a_size_tensor() -> None:
    """The normalisation divides by the Python ints W and H (no tensor copied to the device): the
    same float32 divisions as the former division by a (W, H) tensor, bit for bit."""
    g = torch.Generator().manual_seed(4)
    masks = torch.rand(4, 37, 53, generator=g) > 0.5
    coords = torch.rand(4, 60, 2, generator=g) * torch.tensor([60.0, 44.0]) - 3.0
    labels = mask_labels_at_points(BitMasks(masks), coords, (37, 53))
    former = point_sample(masks.float().unsqueeze(1), coords / coords.new_tensor([53, 37])).squeeze(1)
    assert torch.equal(labels, former)


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


def test_point_bce_loss_valid_points_normalization() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.3, 4.0, -2.0]], requires_grad=True)
    labels = torch.tensor([[1.0, 0.0, -1.0], [-1.0, 0.0, 1.0]])
    with EventStorage() as storage:
        loss = point_bce_loss(logits, labels, normalization="valid_points", log_prefix="test")
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


def _with_ignored_points(seed: int, num_masks: int = 8, num_points: int = 10, fraction: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_masks, num_points, generator=g) * 2
    labels = (torch.rand(num_masks, num_points, generator=g) > 0.5).float()
    ignored = torch.rand(num_masks, num_points, generator=g).argsort(dim=1) < int(fraction * num_points)
    labels[ignored] = IGNORE_LABEL
    return logits, labels


def test_point_bce_loss_default_is_detectron2_point_sup_loss() -> None:
    """Default normalisation = Detectron2's roi_mask_point_loss (PointSup/PointRend, behind the paper's
    numbers): ignored points count in the mean. With 30 % of the points ignored it differs from the
    mean over valid points by the valid fraction."""
    logits, labels = _with_ignored_points(seed=0)
    ours = point_bce_loss(logits, labels)
    valid = labels >= 0
    per_point = F.binary_cross_entropy_with_logits(logits, labels.clamp(min=0), reduction="none")
    by_hand = (per_point * valid).mean()
    torch.testing.assert_close(ours, by_hand)
    valid_mean = point_bce_loss(logits, labels, normalization="valid_points")
    torch.testing.assert_close(ours, valid_mean * 0.7)

    point_head = pytest.importorskip("detectron2.projects.point_rend.point_head")
    num_classes, classes = 3, torch.arange(8) % 3
    class_logits = torch.randn(8, num_classes, 10)
    class_logits[torch.arange(8), classes] = logits  # the ground-truth class's channel
    images = []
    for start, stop in ((0, 5), (5, 8)):
        inst = Instances((50, 50))
        inst.gt_classes = classes[start:stop]
        images.append(inst)
    class_logits.requires_grad_()
    with EventStorage():
        reference = point_head.roi_mask_point_loss(class_logits, images, labels)
    # Bit for bit: both weight the ignored points 0 in one sum over all points.
    ours = point_bce_loss(class_logits, labels, classes=classes)
    assert torch.equal(ours, reference)
    # Gradients: the same up to where the division by the point count is rounded.
    (grad,) = torch.autograd.grad(ours, class_logits)
    (grad_reference,) = torch.autograd.grad(reference, class_logits)
    torch.testing.assert_close(grad, grad_reference, rtol=2e-6, atol=1e-12)
    assert abs(float(ours.detach()) - float(valid_mean)) > 0.05  # the two normalisations really differ here


def test_point_bce_loss_padding_is_never_counted() -> None:
    logits, labels = _with_ignored_points(seed=1)
    padded_logits = torch.cat([logits, torch.randn(8, 4)], dim=1)
    padded_labels = torch.cat([labels, torch.full((8, 4), PADDING_LABEL)], dim=1)
    for normalization in ("all_points", "valid_points"):
        torch.testing.assert_close(
            point_bce_loss(padded_logits, padded_labels, normalization),
            point_bce_loss(logits, labels, normalization),
        )
    with pytest.raises(ValueError, match="NORMALIZATION"):
        point_bce_loss(logits, labels, normalization="mean")


def test_point_bce_loss_all_ignored_keeps_graph() -> None:
    logits = torch.randn(2, 3, requires_grad=True)
    loss = point_bce_loss(logits, torch.full((2, 3), IGNORE_LABEL))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros(2, 3))
    empty = torch.zeros(0, 0, requires_grad=True)
    loss = point_bce_loss(empty, torch.zeros(0, 0))
    assert loss.item() == 0.0 and loss.requires_grad


def _boolean_selection_bce(logits: torch.Tensor, labels: torch.Tensor, normalization: str) -> torch.Tensor:
    """point_bce_loss as it was before issue 23: the valid points selected with a boolean index."""
    valid = labels >= 0
    if not bool(valid.any()):
        return logits.sum() * 0.0
    total = F.binary_cross_entropy_with_logits(logits[valid], labels[valid], reduction="sum")
    count = valid.sum() if normalization == "valid_points" else (labels != PADDING_LABEL).sum()
    return total / count


@pytest.mark.parametrize("normalization", ["all_points", "valid_points"])
def test_point_bce_loss_equals_the_boolean_selection(normalization) -> None:
    """The weighted sum over all points is the former selection's loss and gradient, up to the float
    rounding of a different summation order (and a different SIMD lane of the sigmoid); gradients at
    unsupervised points are exactly 0."""
    g = torch.Generator().manual_seed(0)
    for num_masks, num_points in ((1, 1), (7, 5), (64, 10), (333, 3)):
        logits = (torch.randn(num_masks, num_points, generator=g) * 3).requires_grad_()
        labels = (torch.rand(num_masks, num_points, generator=g) > 0.5).float()
        kind = torch.rand(num_masks, num_points, generator=g)
        labels[kind < 0.2] = IGNORE_LABEL
        labels[kind > 0.9] = PADDING_LABEL
        labels[0] = torch.rand(num_points, generator=g)  # soft labels (points labelled from masks)
        ours = point_bce_loss(logits, labels, normalization)
        reference = _boolean_selection_bce(logits, labels, normalization)
        torch.testing.assert_close(ours, reference, rtol=1e-6, atol=0)
        (grad,) = torch.autograd.grad(ours, logits)
        (grad_reference,) = torch.autograd.grad(reference, logits)
        torch.testing.assert_close(grad, grad_reference, rtol=2e-6, atol=1e-12)
        assert torch.count_nonzero(grad[labels < 0]) == 0


def test_point_bce_loss_ignores_non_finite_logits_of_unsupervised_points() -> None:
    logits = torch.tensor([[1.0, float("inf"), float("nan")], [-2.0, 0.5, float("-inf")]], requires_grad=True)
    labels = torch.tensor([[1.0, IGNORE_LABEL, PADDING_LABEL], [0.0, 1.0, IGNORE_LABEL]])
    loss = point_bce_loss(logits, labels)
    valid = labels >= 0
    expected = F.binary_cross_entropy_with_logits(logits[valid], labels[valid], reduction="sum") / 5
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and torch.count_nonzero(logits.grad[~valid]) == 0


def test_point_bce_loss_needs_no_host_sync_and_logs_with_one_copy() -> None:
    """Issue 23: the loss makes a CUDA host wait for nothing; its statistics are read with one copy."""
    logits, labels = _with_ignored_points(seed=2)
    logits.requires_grad_()
    with EventStorage(), count_host_syncs() as syncs:
        point_bce_loss(logits, labels).backward()
    assert not syncs, syncs
    with EventStorage() as storage, count_host_syncs() as syncs:
        class_logits = torch.cat([torch.randn(8, 1, 10), logits[:, None]], dim=1)
        point_bce_loss(class_logits, labels, log_prefix="test", classes=torch.ones(8, dtype=torch.int64))
    assert syncs == {"to host": 1}, syncs
    scalars = {k: v[0] for k, v in storage.latest().items()}
    valid = labels >= 0
    correct = ((logits > 0) == (labels > 0.5)) & valid
    assert scalars["test/accuracy"] == int(correct.sum()) / int(valid.sum())
    assert scalars["test/valid_point_fraction"] == int(valid.sum()) / labels.numel()


def _ignore_in_place(point_coords_wrt_box: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
    """ignore_points_outside_boxes as it was before issue 23 (a boolean index_put)."""
    labels = point_labels.to(torch.float32).clone()
    outside = ((point_coords_wrt_box < 0.0) | (point_coords_wrt_box > 1.0)).any(dim=2) & (
        labels != PADDING_LABEL
    )
    labels[outside] = IGNORE_LABEL
    return labels


def test_ignore_points_outside_boxes_equals_the_in_place_rule() -> None:
    g = torch.Generator().manual_seed(0)
    coords = torch.rand(40, 12, 2, generator=g) * 1.4 - 0.2
    coords[0, :4] = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 0.5], [-0.0, 1.0]])  # on the edges
    labels = (torch.rand(40, 12, generator=g) > 0.5).to(torch.float64)
    labels[:, -3:] = PADDING_LABEL
    labels[5, :2] = IGNORE_LABEL
    ours = ignore_points_outside_boxes(coords, labels)
    assert ours.dtype == torch.float32
    assert torch.equal(ours, _ignore_in_place(coords, labels))
    assert torch.equal(labels[0, :4], ours[0, :4].double())  # edges count as inside
    assert ours.data_ptr() != labels.data_ptr()  # a new tensor, the input untouched
