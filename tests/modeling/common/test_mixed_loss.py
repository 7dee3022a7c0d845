"""Mixed supervision in the ROI mask heads (point_sup.modeling.common.mixed_loss): the loss of a mixed batch
is the documented weighted sum of the per-kind losses, computed by the pure-mask and pure-point heads
on their own instances; all-mask and all-point batches give today's losses exactly; each object is
reached only through its own kind of supervision."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import ROI_MASK_HEAD_REGISTRY
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage

from point_sup.data.mixed_supervision import Supervision
from point_sup.modeling.common.mixed_loss import (
    drop_box_only,
    kind_weights,
    nonzero_rows,
    split_by_supervision,
)
from point_sup.modeling.common.point_features import get_point_coords_wrt_image
from point_sup.modeling.common.point_loss import mask_labels_at_points
from point_sup.utils.host_syncs import count_host_syncs

MASK_RCNN = "PointSupMaskRCNNConvUpsampleHead"
POINT_REND = "PointSupPointRendMaskHead"
IMPLICIT = "PointSupImplicitPointRendMaskHead"
HEADS = [MASK_RCNN, POINT_REND, IMPLICIT]
NUM_CLASSES = 3
SIZE = 128
FEATURE_SHAPES = {"p2": ShapeSpec(channels=16, stride=4), "p3": ShapeSpec(channels=16, stride=8)}
M, P, B = Supervision.MASK, Supervision.POINTS, Supervision.BOX
MIX = ([M, P, B, P], [B, M, P])  # per image: 2 mask, 3 point, 2 box-only proposals


def _cfg(tiny_cfg, head: str, mode: str):
    cfg = tiny_cfg(head, num_classes=NUM_CLASSES, own_pooling=head != MASK_RCNN)
    cfg.INPUT.POINT_SUP = mode == "points"
    cfg.MODEL.MIXED_SUP.ENABLED = mode == "mixed"
    if head == POINT_REND:
        cfg.MODEL.ROI_MASK_HEAD.POINT_HEAD_ON = True
    return cfg


def _heads(tiny_cfg, head: str):
    """The head in "mask", "points" and "mixed" mode with the same (O(1)-scale) weights."""
    built = {}
    for mode in ("mask", "points", "mixed"):
        cfg = _cfg(tiny_cfg, head, mode)
        shape = ShapeSpec(channels=8, height=14, width=14) if head == MASK_RCNN else FEATURE_SHAPES
        built[mode] = ROI_MASK_HEAD_REGISTRY.get(head)(cfg, shape)
    torch.manual_seed(0)
    for p in built["mask"].parameters():
        torch.nn.init.normal_(p, std=0.2)
    for mode in ("points", "mixed"):
        built[mode].load_state_dict(built["mask"].state_dict())
    return built


def _proposals(kinds=MIX, seed: int = 0) -> list[Instances]:
    """Foreground proposals of two 128x128 images with blob masks, 8 points labelled from the mask
    (one ignored), and ``gt_supervision`` ``kinds``."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for image_kinds in kinds:
        n = len(image_kinds)
        inst = Instances((SIZE, SIZE))
        xy0 = torch.rand(n, 2, generator=g) * 70
        boxes = torch.cat([xy0, xy0 + 20 + torch.rand(n, 2, generator=g) * 35], dim=1)
        inst.proposal_boxes = Boxes(boxes)
        inst.gt_classes = torch.randint(NUM_CLASSES, (n,), generator=g)
        low = torch.randn(n, 1, SIZE // 16, SIZE // 16, generator=g)
        inst.gt_masks = BitMasks(
            torch.nn.functional.interpolate(low, size=(SIZE, SIZE), mode="bilinear")[:, 0] > 0
        )
        coords = get_point_coords_wrt_image(boxes, torch.rand(n, 8, 2, generator=g))
        inst.gt_point_coords = coords
        labels = mask_labels_at_points(inst.gt_masks, coords, (SIZE, SIZE), mode="pixel")
        labels[:, -1] = -1.0
        inst.gt_point_labels = labels
        inst.gt_supervision = torch.tensor([int(k) for k in image_kinds])
        out.append(inst)
    return out


def _inputs(head: str, instances: list[Instances], seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    if head == MASK_RCNN:
        return torch.randn(sum(len(i) for i in instances), 8, 14, 14, generator=g)
    return {
        k: torch.randn(2, 16, SIZE // s.stride, SIZE // s.stride, generator=g)
        for k, s in FEATURE_SHAPES.items()
    }


def _losses(head_name: str, head, inputs, instances, rows: torch.Tensor | None = None, seed: int = 0) -> dict:
    """The head's training losses; for Mask R-CNN the pooled features of ``rows`` (default all)."""
    torch.manual_seed(seed)  # PointRend / Implicit PointRend sample points when training from masks
    head.train()
    with EventStorage():
        if head_name == MASK_RCNN:
            x = inputs if rows is None else inputs[rows]
            return head(x, instances)
        return head(inputs, instances)


def _subset(instances: list[Instances], kind: Supervision) -> tuple[list[Instances], torch.Tensor]:
    rows = torch.cat([i.gt_supervision == kind for i in instances])
    return [i[i.gt_supervision == kind] for i in instances], rows


@pytest.mark.parametrize("weighting", ["instances", "sum"])
@pytest.mark.parametrize("head_name", HEADS)
def test_mixed_loss_is_weighted_sum_of_per_kind_losses(tiny_cfg, head_name, weighting) -> None:
    heads = _heads(tiny_cfg, head_name)
    options = heads["mixed"].point_loss_options
    heads["mixed"].point_loss_options = dataclasses.replace(options, mixed_weighting=weighting)
    instances = _proposals()
    inputs = _inputs(head_name, instances)
    mixed = _losses(head_name, heads["mixed"], inputs, instances)
    masks, mask_rows = _subset(instances, M)
    points, point_rows = _subset(instances, P)
    # Same seed as the mixed call: the mask recipe comes first there too, so it samples the same points.
    from_masks = _losses(head_name, heads["mask"], inputs, masks, mask_rows)
    from_points = _losses(head_name, heads["points"], inputs, points, point_rows)
    w_mask, w_points = (2 / 5, 3 / 5) if weighting == "instances" else (1.0, 1.0)
    assert kind_weights((2, 3), weighting) == (w_mask, w_points)
    assert set(mixed) == set(from_masks) | set(from_points)
    for name, value in mixed.items():
        if name == "loss_l2":  # Implicit PointRend: one L2 over the generated parameters of both kinds
            continue
        expected = w_mask * from_masks[name] + w_points * from_points[name]
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
        assert from_masks[name].detach() > 0.01 and from_points[name].detach() > 0.01


@pytest.mark.parametrize("head_name", HEADS)
@pytest.mark.parametrize("kind", [M, P])
def test_single_kind_batches_give_todays_losses_exactly(tiny_cfg, head_name, kind) -> None:
    heads = _heads(tiny_cfg, head_name)
    instances = _proposals(kinds=([kind] * 4, [kind] * 3))
    inputs = _inputs(head_name, instances)
    mixed = _losses(head_name, heads["mixed"], inputs, instances)
    today = _losses(head_name, heads["mask" if kind == M else "points"], inputs, instances)
    assert set(mixed) == set(today)
    for name in today:
        assert torch.equal(mixed[name], today[name]), name


@pytest.mark.parametrize("head_name", HEADS)
def test_each_object_only_through_its_own_kind(tiny_cfg, head_name) -> None:
    """Changing what an object's annotation carries beyond its kind changes nothing: a mask object's
    points, a point object's mask, a box-only object's mask and points (and its proposal's box)."""
    heads = _heads(tiny_cfg, head_name)
    instances = _proposals()
    inputs = _inputs(head_name, instances)
    reference = _losses(head_name, heads["mixed"], inputs, instances)
    changed = copy.deepcopy(instances)
    for inst in changed:
        kinds = inst.gt_supervision
        inst.gt_point_labels[kinds != P] = 1.0 - inst.gt_point_labels[kinds != P].clamp(min=0)
        masks = inst.gt_masks.tensor.clone()
        masks[kinds != M] = ~masks[kinds != M]
        inst.gt_masks = BitMasks(masks)
    again = _losses(head_name, heads["mixed"], inputs, changed)
    for name in reference:
        torch.testing.assert_close(again[name], reference[name], rtol=0, atol=0)
    # The box-only proposals give no mask loss at all: removing them changes nothing either.
    kept = [inst[inst.gt_supervision != B] for inst in instances]
    keep_rows = torch.cat([inst.gt_supervision != B for inst in instances])
    without = _losses(head_name, heads["mixed"], inputs, kept, keep_rows)
    for name in reference:
        torch.testing.assert_close(without[name], reference[name], rtol=1e-6, atol=1e-7)


def test_mask_rcnn_gradients_reach_each_proposal_through_its_kind_only(tiny_cfg) -> None:
    """Per proposal row of the pooled features: box-only rows get exactly zero gradient; mask rows
    the gradient of (2/5) x Mask R-CNN's loss on the mask rows; point rows (3/5) x the point loss's."""
    heads = _heads(tiny_cfg, MASK_RCNN)
    instances = _proposals()
    x = _inputs(MASK_RCNN, instances).requires_grad_()
    (grad,) = torch.autograd.grad(_losses(MASK_RCNN, heads["mixed"], x, instances)["loss_mask"], x)
    masks, mask_rows = _subset(instances, M)
    points, point_rows = _subset(instances, P)
    xm = x.detach()[mask_rows].requires_grad_()
    xp = x.detach()[point_rows].requires_grad_()
    with EventStorage():
        (grad_mask,) = torch.autograd.grad(heads["mask"](xm, masks)["loss_mask"] * 0.4, xm)
        (grad_points,) = torch.autograd.grad(heads["points"](xp, points)["loss_mask"] * 0.6, xp)
    box_rows = ~(mask_rows | point_rows)
    assert torch.count_nonzero(grad[box_rows]) == 0
    torch.testing.assert_close(grad[mask_rows], grad_mask, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(grad[point_rows], grad_points, rtol=1e-5, atol=1e-8)
    assert grad_mask.abs().sum() > 0 and grad_points.abs().sum() > 0


@pytest.mark.parametrize("head_name", HEADS)
def test_all_box_only_batch_gives_zero_mask_loss_and_keeps_the_graph(tiny_cfg, head_name) -> None:
    heads = _heads(tiny_cfg, head_name)
    instances = _proposals(kinds=([B, B], [B]))
    inputs = _inputs(head_name, instances)
    losses = _losses(head_name, heads["mixed"], inputs, instances)
    total = sum(losses.values())
    assert float(total) == 0.0
    total.backward()
    grads = [p.grad for p in heads["mixed"].parameters()]
    assert all(g is not None and torch.count_nonzero(g) == 0 for g in grads)


def test_split_keeps_order_and_requires_the_field() -> None:
    instances = _proposals()
    split = split_by_supervision(instances)
    assert split.weights == (0.4, 0.6)
    # MIX = ([M, P, B, P], [B, M, P]): rows 0-3 of image 0, 4-6 of image 1
    assert split.supervised_index.tolist() == [0, 1, 3, 5, 6]
    assert split.mask_rows.tolist() == [0, 3] and split.points_rows.tolist() == [1, 2, 4]
    assert split.mask_index.tolist() == [0, 5] and split.points_index.tolist() == [1, 3, 6]
    assert [len(i) for i in split.supervised] == [3, 2]
    assert [len(i) for i in split.points] == [2, 1]
    torch.testing.assert_close(
        split.points[0].proposal_boxes.tensor, instances[0].proposal_boxes.tensor[[1, 3]]
    )
    instances[1].remove("gt_supervision")
    with pytest.raises(ValueError, match="gt_supervision.*PointSupDatasetMapper"):
        split_by_supervision(instances)


def _assert_same_instances(ours: Instances, reference: Instances) -> None:
    assert ours.image_size == reference.image_size
    assert set(ours.get_fields()) == set(reference.get_fields())
    for name, value in reference.get_fields().items():
        mine = ours.get(name)
        if isinstance(value, PolygonMasks):
            assert len(mine.polygons) == len(value.polygons)
            for a, b in zip(mine.polygons, value.polygons, strict=True):
                assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
            continue
        tensor = value if isinstance(value, torch.Tensor) else value.tensor
        assert torch.equal(mine if isinstance(mine, torch.Tensor) else mine.tensor, tensor), name


def _boolean_split(instances: list[Instances], weighting: str):
    """split_by_supervision and drop_box_only as they were before issue 23 (boolean selection per
    image and kind; the weights from int() of the counts)."""
    kinds = [i.gt_supervision if len(i) else torch.zeros(0, dtype=torch.int64) for i in instances]
    supervised = [i[k != B] if len(i) else i for i, k in zip(instances, kinds, strict=True)]
    masks = [i[k == M] for i, k in zip(instances, kinds, strict=True)]
    points = [i[k == P] for i, k in zip(instances, kinds, strict=True)]
    flat = torch.cat(kinds)
    mask_rows, points_rows = flat == M, flat == P
    weights = kind_weights((int(mask_rows.sum()), int(points_rows.sum())), weighting)
    return supervised, masks, points, mask_rows, points_rows, weights


def _random_proposals(seed: int, polygons: bool) -> list[Instances]:
    g = torch.Generator().manual_seed(seed)
    num_images = int(torch.randint(1, 5, (1,), generator=g))
    counts = torch.randint(0, 9, (num_images,), generator=g).tolist()
    instances = _proposals(kinds=[[M] * n for n in counts], seed=seed)
    for inst in instances:
        n = len(inst)
        inst.gt_supervision = torch.randint(3, (n,), generator=g)
        inst.objectness_logits = torch.randn(n, generator=g)
        if polygons:
            xy = torch.rand(n, 3, 2, generator=g) * SIZE
            inst.gt_masks = PolygonMasks([[p.flatten().numpy().astype(np.float64)] for p in xy])
    return instances


@pytest.mark.parametrize("polygons", [False, True], ids=["bitmasks", "polygons"])
@pytest.mark.parametrize("weighting", ["instances", "sum"])
def test_split_equals_the_boolean_selection(polygons, weighting) -> None:
    """Per image and kind the same instances in the same order as the former boolean selection,
    rows consistent with them, the same weights (Python floats), for random mixes with empty images,
    images of one kind and polygon masks (indexed on the host)."""
    for seed in range(8):
        instances = _random_proposals(seed, polygons)
        split = split_by_supervision(instances, weighting)
        supervised, masks, points, mask_rows, points_rows, weights = _boolean_split(instances, weighting)
        assert split.weights == weights
        for ours, reference in zip(
            [*split.supervised, *split.masks, *split.points], [*supervised, *masks, *points], strict=True
        ):
            _assert_same_instances(ours, reference)
        for theirs in drop_box_only(instances), supervised:
            for ours, reference in zip(theirs, supervised, strict=True):
                _assert_same_instances(ours, reference)
        assert torch.equal(split.mask_index, mask_rows.nonzero()[:, 0])
        assert torch.equal(split.points_index, points_rows.nonzero()[:, 0])
        assert torch.equal(split.supervised_index, (mask_rows | points_rows).nonzero()[:, 0])
        sup_kinds = torch.cat([i.gt_supervision for i in split.supervised if len(i)] or [torch.zeros(0)])
        assert torch.equal(split.mask_rows, (sup_kinds == M).nonzero()[:, 0])
        assert torch.equal(split.points_rows, (sup_kinds == P).nonzero()[:, 0])


def test_split_reads_the_host_once() -> None:
    """Issue 23: one copy to the host (the kinds) per split, no other host-device synchronisation
    (the former split read the host once per image, kind and field, twice more for the weights)."""
    instances = _random_proposals(seed=3, polygons=False)
    assert sum(len(i) for i in instances) > 0
    with count_host_syncs() as syncs:
        split_by_supervision(instances)
    assert syncs == {"to host": 1}, syncs
    with count_host_syncs() as syncs:
        _boolean_split(instances, "instances")
    assert syncs["bool index"] > 10, syncs


def test_nonzero_rows() -> None:
    g = torch.Generator().manual_seed(0)
    for size in (0, 1, 7, 300):
        for fraction in (0.0, 0.3, 1.0):
            selected = torch.rand(size, generator=g) < fraction
            count = int(selected.sum())
            assert torch.equal(nonzero_rows(selected, count), selected.nonzero()[:, 0])


def test_kind_weights_of_device_counts_equal_the_python_ones() -> None:
    for counts in ((0, 0), (5, 0), (1, 2, 1), (0, 7), (3, 11), (1, 1, 1)):
        for weighting in ("instances", "sum"):
            ours = kind_weights(torch.tensor(counts), weighting)
            assert ours.dtype == torch.float32 and ours.shape == (len(counts),)
            reference = torch.tensor(kind_weights(counts, weighting), dtype=torch.float32)
            assert torch.equal(ours, reference), (counts, weighting)
    with count_host_syncs() as syncs:
        kind_weights(torch.tensor([3, 4]))
    assert not syncs


def test_kind_weights() -> None:
    assert kind_weights((0, 0)) == (0.0, 0.0)
    assert kind_weights((5, 0)) == (1.0, 0.0)
    assert kind_weights((1, 2, 1)) == (0.25, 0.5, 0.25)
    assert kind_weights((0, 7), "sum") == (0.0, 1.0)
    with pytest.raises(ValueError, match="MODEL.MIXED_SUP.WEIGHTING"):
        kind_weights((1, 1), "mean")
