"""PointRend's mask head trained from labelled points (paper Table 3c) or from masks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import ROI_MASK_HEAD_REGISTRY, build_model
from detectron2.modeling.roi_heads.mask_head import mask_rcnn_loss
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from point_sup.modeling.common import subdivision
from point_sup.modeling.common.point_features import (
    calculate_uncertainty,
    get_point_coords_wrt_image,
    get_uncertain_point_coords_with_randomness,
    point_sample_fine_grained_features,
)
from point_sup.modeling.common.point_loss import mask_labels_at_points, point_bce_loss, select_class_logits
from point_sup.modeling.point_rend.mask_head import PointSupPointRendMaskHead

NUM_CLASSES = 3
INPUT_SHAPE = {"p2": ShapeSpec(channels=40, stride=4), "p3": ShapeSpec(channels=40, stride=8)}


def _cfg(tiny_cfg, point_sup: bool = True, point_head_on: bool = True):
    cfg = tiny_cfg("PointSupPointRendMaskHead", num_classes=NUM_CLASSES)
    cfg.INPUT.POINT_SUP = point_sup
    cfg.MODEL.ROI_MASK_HEAD.POOLER_TYPE = ""
    cfg.MODEL.ROI_MASK_HEAD.POINT_HEAD_ON = point_head_on
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 16  # < 40 input channels: the 1x1 reduction conv is used
    cfg.MODEL.ROI_MASK_HEAD.FC_DIM = 64
    cfg.MODEL.POINT_HEAD.FC_DIM = 32
    cfg.MODEL.POINT_HEAD.TRAIN_NUM_POINTS = 49
    cfg.MODEL.POINT_HEAD.SUBDIVISION_STEPS = 2
    cfg.MODEL.POINT_HEAD.SUBDIVISION_NUM_POINTS = 100
    return cfg


def _features(seed: int = 0, num_images: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "p2": torch.randn(num_images, 40, 32, 32, generator=g),
        "p3": torch.randn(num_images, 40, 16, 16, generator=g),
    }


def _make_head(cfg) -> PointSupPointRendMaskHead:
    head = ROI_MASK_HEAD_REGISTRY.get("PointSupPointRendMaskHead")(cfg, INPUT_SHAPE)
    # Larger prediction weights than the 0.001 init so that predictions and losses are informative.
    for predictor in (head.coarse_head.prediction, getattr(head.point_head, "predictor", None)):
        if predictor is not None:
            torch.nn.init.normal_(predictor.weight, std=0.3)
            torch.nn.init.normal_(predictor.bias, std=0.3)
    return head


def _point_proposals() -> list[Instances]:
    """Two images: 2 proposals with 6 points (one out of box, one ignored) and 1 with 4 points."""
    g = torch.Generator().manual_seed(5)
    images = []
    for boxes, num_points in (
        ([[8.3, 10.0, 70.5, 90.2], [60.0, 30.0, 120.0, 100.0]], 6),
        ([[0.0, 0.0, 127.0, 127.0]], 4),
    ):
        n = len(boxes)
        inst = Instances((128, 128))
        box_tensor = torch.tensor(boxes)
        inst.proposal_boxes = Boxes(box_tensor)
        inst.gt_classes = torch.arange(n) % NUM_CLASSES
        rel = torch.rand(n, num_points, 2, generator=g)
        rel[:, 0] = torch.tensor([1.3, 0.5])  # outside every box
        inst.gt_point_coords = get_point_coords_wrt_image(box_tensor, rel)
        labels = (torch.rand(n, num_points, generator=g) > 0.5).float()
        labels[:, 1] = -1.0
        inst.gt_point_labels = labels
        images.append(inst)
    return images


def _bilinear(grid: torch.Tensor, u: float, v: float) -> torch.Tensor:
    """Hand-written bilinear interpolation of an (S, S) grid aligned with the box at box-relative
    (u, v): cell centres at (k + 0.5) / S, zero outside the grid."""
    side = grid.shape[-1]
    gx, gy = u * side - 0.5, v * side - 0.5
    x0, y0 = math.floor(gx), math.floor(gy)
    fx, fy = gx - x0, gy - y0
    value = grid.new_zeros(())
    for row, wy in ((y0, 1 - fy), (y0 + 1, fy)):
        for col, wx in ((x0, 1 - fx), (x0 + 1, fx)):
            if 0 <= row < side and 0 <= col < side:
                value = value + wx * wy * grid[row, col]
    return value


@pytest.mark.parametrize("normalization", ["all_points", "valid_points"])
def test_losses_from_points_are_bces_at_the_labelled_points(tiny_cfg, normalization: str) -> None:
    cfg = _cfg(tiny_cfg)
    cfg.MODEL.POINT_LOSS.NORMALIZATION = normalization
    head = _make_head(cfg)
    head.train()
    features, images = _features(), _point_proposals()
    with EventStorage():
        losses = head(features, images)
    assert set(losses) == {"loss_mask", "loss_mask_point"}

    boxes = [inst.proposal_boxes for inst in images]
    cat_boxes = torch.cat([b.tensor for b in boxes])
    coarse = head._coarse_logits(features, boxes).detach()
    assert coarse.shape == (3, NUM_CLASSES, 7, 7)
    classes = torch.cat([inst.gt_classes for inst in images])
    coarse_logits, valid_labels, valid_rel, valid_rows = [], [], [], []
    for r, (inst, k) in enumerate([(images[0], 0), (images[0], 1), (images[1], 0)]):
        box = cat_boxes[r]
        for coords, label in zip(inst.gt_point_coords[k], inst.gt_point_labels[k], strict=True):
            u = float((coords[0] - box[0]) / (box[2] - box[0]))
            v = float((coords[1] - box[1]) / (box[3] - box[1]))
            if label < 0 or not (0 <= u <= 1 and 0 <= v <= 1):
                continue
            coarse_logits.append(_bilinear(coarse[r, classes[r]], u, v))
            valid_labels.append(float(label))
            valid_rel.append((u, v))
            valid_rows.append(r)
    assert len(valid_labels) == 2 * 4 + 2  # per proposal: all points but the ignored and outside one
    labels = torch.tensor(valid_labels)
    # All labelled points (2 x 6 + 4), ignored ones included, or only the 10 valid ones.
    denominator = 16 if normalization == "all_points" else 10
    expected_coarse = (
        F.binary_cross_entropy_with_logits(torch.stack(coarse_logits), labels, reduction="sum") / denominator
    )
    torch.testing.assert_close(losses["loss_mask"], expected_coarse, rtol=1e-5, atol=1e-6)

    # Point head: fine p2 features at the labelled points, concatenated with the coarse logits there.
    point_logits = []
    for r, (u, v), coarse_at_point in zip(
        valid_rows,
        valid_rel,
        [
            torch.stack([_bilinear(c, *uv) for c in coarse[r]])
            for r, uv in zip(valid_rows, valid_rel, strict=True)
        ],
        strict=True,
    ):
        per_image = [
            Boxes(cat_boxes[r : r + 1]) if i == (0 if r < 2 else 1) else Boxes(torch.zeros(0, 4))
            for i in range(2)
        ]
        fine, _ = point_sample_fine_grained_features(
            [features["p2"]], [0.25], per_image, torch.tensor([[[u, v]]])
        )
        out = head.point_head(fine, coarse_at_point.view(1, NUM_CLASSES, 1))
        point_logits.append(out[0, classes[r], 0])
    expected_point = (
        F.binary_cross_entropy_with_logits(torch.stack(point_logits), labels, reduction="sum") / denominator
    )
    torch.testing.assert_close(losses["loss_mask_point"], expected_point, rtol=1e-5, atol=1e-6)


def test_coarse_head_alone_from_points(tiny_cfg) -> None:
    full = _make_head(_cfg(tiny_cfg))
    coarse_only = _make_head(_cfg(tiny_cfg, point_head_on=False))
    coarse_only.coarse_head.load_state_dict(full.coarse_head.state_dict())
    features, images = _features(), _point_proposals()
    with EventStorage():
        losses = coarse_only.train()(features, images)
        full_losses = full.train()(features, images)
    assert set(losses) == {"loss_mask"}
    assert losses["loss_mask"].item() == full_losses["loss_mask"].item()


def test_ignored_and_out_of_box_points_do_not_matter(tiny_cfg) -> None:
    head = _make_head(_cfg(tiny_cfg))
    head.train()
    features, images = _features(), _point_proposals()
    with EventStorage():
        reference = head(features, images)
        for inst in images:
            inst.gt_point_labels[:, 0] = 1.0 - inst.gt_point_labels[:, 0]  # out of box: flip
            inst.gt_point_labels[:, 1] = -1.0
        flipped_outside = head(features, images)
        images[1].gt_point_labels[0, 2] = 1.0 - images[1].gt_point_labels[0, 2]
        flipped_inside = head(features, images)
    for name in ("loss_mask", "loss_mask_point"):
        assert flipped_outside[name].item() == reference[name].item()
        assert flipped_inside[name].item() != reference[name].item()


def test_mask_supervision_follows_point_rend_recipe(tiny_cfg) -> None:
    head = _make_head(_cfg(tiny_cfg, point_sup=False))
    head.train()
    features = _features()
    images = _point_proposals()
    g = torch.Generator().manual_seed(7)
    for inst in images:
        inst.gt_masks = BitMasks(torch.rand(len(inst), 128, 128, generator=g) > 0.6)
    torch.manual_seed(11)
    with EventStorage():
        losses = head(features, images)
        boxes = [inst.proposal_boxes for inst in images]
        coarse = head._coarse_logits(features, boxes)
        expected_mask = mask_rcnn_loss(coarse, images)
    torch.testing.assert_close(losses["loss_mask"], expected_mask)

    # Same random draws: importance-sampled points, labels read from the masks.
    classes = torch.cat([inst.gt_classes for inst in images])
    torch.manual_seed(11)
    coords = get_uncertain_point_coords_with_randomness(
        coarse.detach(), lambda x: calculate_uncertainty(select_class_logits(x, classes)), 49, 3, 0.75
    )
    cat_boxes = torch.cat([b.tensor for b in boxes])
    image_coords = get_point_coords_wrt_image(cat_boxes, coords)
    labels = torch.cat(
        [
            mask_labels_at_points(images[0].gt_masks, image_coords[:2], (128, 128)),
            mask_labels_at_points(images[1].gt_masks, image_coords[2:], (128, 128)),
        ]
    )
    logits = head._point_logits(coarse, features, boxes, coords)
    expected_point = point_bce_loss(select_class_logits(logits, classes).squeeze(1), labels)
    torch.testing.assert_close(losses["loss_mask_point"], expected_point)


def _reference_pair(tiny_cfg, point_sup: bool = False):
    """Our head and detectron2.projects.point_rend's PointRendMaskHead with the same weights."""
    reference_module = pytest.importorskip("detectron2.projects.point_rend.mask_head")
    cfg = _cfg(tiny_cfg, point_sup=point_sup)
    head = _make_head(cfg)
    reference = reference_module.PointRendMaskHead(cfg, INPUT_SHAPE)
    mapping = {
        "coarse_head.reduce_channel_dim_conv": "coarse_head.convs.0",
        "coarse_head.reduce_spatial_dim_conv": "coarse_head.convs.1",
        "coarse_head.fc1": "coarse_head.fcs.0",
        "coarse_head.fc2": "coarse_head.fcs.1",
        "point_head.fc1": "point_head.fcs.0",
        "point_head.fc2": "point_head.fcs.1",
        "point_head.fc3": "point_head.fcs.2",
    }
    torch.nn.init.normal_(reference.coarse_head.prediction.weight, std=0.3)
    torch.nn.init.normal_(reference.point_head.predictor.weight, std=0.3)
    state = {}
    for key, value in reference.state_dict().items():
        prefix, _, leaf = key.rpartition(".")
        state[f"{mapping.get(prefix, prefix)}.{leaf}"] = value
    head.load_state_dict(state)  # strict: same parameters, same shapes
    return head, reference


def test_reference_point_rend_equivalence(tiny_cfg) -> None:
    """With PointRend's weights copied over, coarse predictions, the mask-supervised coarse loss and
    subdivision inference equal detectron2.projects.point_rend's PointRendMaskHead."""
    head, reference = _reference_pair(tiny_cfg)
    features = _features(seed=3)
    boxes = [
        Boxes(torch.tensor([[8.3, 10.0, 70.5, 90.2], [60.0, 30.0, 120.0, 100.0]])),
        Boxes(torch.tensor([[0.0, 0.0, 127.0, 127.0]])),
    ]
    ours = head._coarse_logits(features, boxes)
    theirs = reference.coarse_head(reference._roi_pooler(features, boxes))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)

    head.eval()
    reference.eval()
    detections, detections_ref = [], []
    for b, classes in zip(boxes, ([2, 0], [1]), strict=True):
        for target in (detections, detections_ref):
            inst = Instances((128, 128))
            inst.pred_boxes = b
            inst.pred_classes = torch.tensor(classes)
            target.append(inst)
    with torch.no_grad():
        head(features, detections)
        reference(features, detections_ref)
    for ours_inst, ref_inst in zip(detections, detections_ref, strict=True):
        assert ours_inst.pred_masks.shape == ref_inst.pred_masks.shape == (len(ours_inst), 1, 28, 28)
        torch.testing.assert_close(ours_inst.pred_masks, ref_inst.pred_masks, rtol=1e-5, atol=1e-5)


def test_reference_point_rend_mask_supervised_losses(tiny_cfg) -> None:
    """Trained from masks (the M rows of Tables 3c and 5), both losses are PointRend's, point labels
    included: the same importance-sampled points, labelled by the bilinearly interpolated bit mask."""
    head, reference = _reference_pair(tiny_cfg)
    features = _features(seed=4)
    images = _point_proposals()
    g = torch.Generator().manual_seed(8)
    for inst in images:
        inst.gt_masks = BitMasks(torch.rand(len(inst), 128, 128, generator=g) > 0.6)
    losses = {}
    for name, module in (("ours", head), ("reference", reference)):
        module.train()
        torch.manual_seed(21)  # both draw their candidate and random points with the same torch.rand calls
        with EventStorage():
            losses[name] = module(features, images)
    assert set(losses["ours"]) == set(losses["reference"]) == {"loss_mask", "loss_mask_point"}
    for key in losses["ours"]:
        torch.testing.assert_close(losses["ours"][key], losses["reference"][key], rtol=1e-5, atol=1e-6)


def _detections(counts: tuple[int, ...]) -> list[Instances]:
    out = []
    for n in counts:
        inst = Instances((128, 128))
        inst.pred_boxes = Boxes(torch.tensor([[10.0, 12.0, 70.0, 90.0]]).repeat(n, 1))
        inst.pred_classes = torch.arange(n) % NUM_CLASSES
        out.append(inst)
    return out


def test_inference_output_shapes_with_and_without_detections(tiny_cfg) -> None:
    head = _make_head(_cfg(tiny_cfg)).eval()
    assert (head.subdivision.init_side, head.subdivision.steps) == (7, 2)  # 4 * 7² > 100 points
    with torch.no_grad():
        for counts in ((3, 0), (0, 0), (0, 2)):
            detections = head(_features(), _detections(counts))
            for inst, n in zip(detections, counts, strict=True):
                assert inst.pred_masks.shape == (n, 1, 28, 28)
                assert ((inst.pred_masks >= 0) & (inst.pred_masks <= 1)).all()

    coarse_only = _make_head(_cfg(tiny_cfg, point_head_on=False)).eval()
    assert coarse_only.point_head is None
    with torch.no_grad():
        detections = coarse_only(_features(), _detections((2, 0)))
    assert [tuple(i.pred_masks.shape) for i in detections] == [(2, 1, 7, 7), (0, 1, 7, 7)]


def test_point_head_predicted_class_rows_equal_all_classes_selected(tiny_cfg) -> None:
    head = _make_head(_cfg(tiny_cfg))
    g = torch.Generator().manual_seed(0)
    fine = torch.randn(4, head.point_head.fcs[0].in_channels - NUM_CLASSES, 11, generator=g)
    coarse = torch.randn(4, NUM_CLASSES, 11, generator=g)
    classes = torch.tensor([2, 0, 1, 2])
    with torch.no_grad():
        every_class = head.point_head(fine, coarse)
        selected = head.point_head(fine, coarse, classes)
    assert selected.shape == (4, 1, 11)
    torch.testing.assert_close(selected, select_class_logits(every_class, classes), rtol=1e-6, atol=1e-6)


def test_subdivision_inference_equals_the_straightforward_loop(tiny_cfg, monkeypatch) -> None:
    """Inference (chunks of boxes on CPU, the predicted class's predictor row only, channels-last
    sampling) gives the masks of the plain loop: _point_logits of every class on all boxes at each
    step, then the predicted class; the same up to float rounding (the row is a separate product)."""
    head = _make_head(_cfg(tiny_cfg)).eval()
    features = _features(seed=6)
    g = torch.Generator().manual_seed(7)
    detections = []
    for n in (3, 2):
        inst = Instances((128, 128))
        xy = torch.rand(n, 2, generator=g) * 60
        inst.pred_boxes = Boxes(torch.cat([xy, xy + 20 + torch.rand(n, 2, generator=g) * 40], dim=1))
        inst.pred_classes = torch.randint(NUM_CLASSES, (n,), generator=g)
        detections.append(inst)
    boxes = [inst.pred_boxes for inst in detections]
    classes = torch.cat([inst.pred_classes for inst in detections])
    # 7² points then 100 per box: chunks of 2 boxes, then of 1.
    monkeypatch.setattr(subdivision, "CPU_CHUNK_POINTS", 100)
    with torch.no_grad():
        coarse = head._coarse_logits(features, boxes)
        straightforward = subdivision.adaptive_subdivision(
            lambda coords: select_class_logits(head._point_logits(coarse, features, boxes, coords), classes),
            len(classes),
            head.subdivision.init_side,
            head.subdivision.steps,
            head.subdivision.num_points,
            "cpu",
        )
        head(features, detections)
    masks = torch.cat([inst.pred_masks for inst in detections])
    assert masks.shape == (5, 1, 28, 28)
    assert masks.max() - masks.min() > 0.3
    torch.testing.assert_close(masks, straightforward.sigmoid(), rtol=0, atol=1e-6)


def test_default_subdivision_skips_steps_like_point_rend(tiny_cfg) -> None:
    cfg = _cfg(tiny_cfg)
    cfg.MODEL.POINT_HEAD.SUBDIVISION_STEPS = 5
    cfg.MODEL.POINT_HEAD.SUBDIVISION_NUM_POINTS = 28 * 28
    head = ROI_MASK_HEAD_REGISTRY.get("PointSupPointRendMaskHead")(cfg, INPUT_SHAPE)
    # 7 -> 14 -> 28 re-predict every cell: start on the 28x28 grid, then 3 steps to 224x224.
    assert (head.subdivision.init_side, head.subdivision.steps) == (28, 3)


@pytest.mark.parametrize("point_sup", [True, False])
def test_zero_proposals_in_training_keep_the_graph(tiny_cfg, point_sup: bool) -> None:
    head = _make_head(_cfg(tiny_cfg, point_sup=point_sup)).train()
    empty = Instances((128, 128))
    empty.proposal_boxes = Boxes(torch.zeros(0, 4))
    empty.gt_classes = torch.zeros(0, dtype=torch.int64)
    with EventStorage():
        losses = head(_features(), [empty, empty])
    total = sum(losses.values())
    assert total.item() == 0.0
    total.backward()
    assert all(p.grad is not None for p in head.parameters())


def test_pooled_features_are_rejected(tiny_cfg) -> None:
    with pytest.raises(ValueError, match="POOLER_TYPE"):
        ROI_MASK_HEAD_REGISTRY.get("PointSupPointRendMaskHead")(
            _cfg(tiny_cfg), ShapeSpec(channels=40, height=14, width=14)
        )
    cfg = _cfg(tiny_cfg)
    cfg.MODEL.POINT_HEAD.IN_FEATURES = ("p1",)
    with pytest.raises(ValueError, match="p1"):
        ROI_MASK_HEAD_REGISTRY.get("PointSupPointRendMaskHead")(cfg, INPUT_SHAPE)


def test_training_step_in_generalized_rcnn(tiny_cfg, point_sup_inputs) -> None:
    cfg = _cfg(tiny_cfg)
    model = build_model(cfg)
    assert isinstance(model.roi_heads.mask_head, PointSupPointRendMaskHead)
    model.train()
    with EventStorage() as storage:
        losses = model(point_sup_inputs())
        sum(losses.values()).backward()
        logged = storage.latest()
    assert {"loss_mask", "loss_mask_point"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_mask"].item() > 0 and losses["loss_mask_point"].item() > 0
    assert "point_rend_point/accuracy" in logged and "point_rend_coarse/accuracy" in logged
    mask_head = model.roi_heads.mask_head
    assert mask_head.point_head.predictor.weight.grad.abs().sum() > 0
    assert mask_head.coarse_head.prediction.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        outputs = model([{"image": x["image"], "height": 96, "width": 96} for x in point_sup_inputs()])
    for out in outputs:
        assert out["instances"].pred_masks.shape[1:] == (96, 96)
