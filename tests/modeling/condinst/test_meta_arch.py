"""The CondInst / BoxInst model (point_sup.modeling.condinst) against independent computations."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage

from point_sup import add_point_sup_config
from point_sup.data.mixed_supervision import Supervision
from point_sup.modeling.condinst import MaskInstances, PointSupCondInst
from point_sup.modeling.condinst.boxinst import image_cells, removed_bottom_rows
from point_sup.modeling.condinst.losses import (
    box_cells_at_stride,
    dice_loss,
    mask_logits_to_image,
)
from point_sup.modeling.condinst.meta_arch import topk_per_object
from point_sup.modeling.condinst.supervision import MaskLossInputs
from point_sup.utils.host_syncs import count_host_syncs

ROOT = Path(__file__).resolve().parents[3]


# ------------------------------------------------------------------------------------------------
# The model
def tiny_condinst_cfg(config: str = "configs/nuclei/condinst_R_18_FPN_M.yaml", *opts):
    cfg = add_point_sup_config(get_cfg())
    cfg.merge_from_file(str(ROOT / config))
    cfg.merge_from_list(
        [
            "MODEL.FPN.OUT_CHANNELS", 64,  # GroupNorm(32): 2 channels per group, so 1x1 maps normalise
            "MODEL.FCOS.NUM_CONVS", 1,
            "MODEL.CONDINST.MASK_BRANCH.CHANNELS", 32,
            "MODEL.CONDINST.MASK_BRANCH.NUM_CONVS", 1,
            "INPUT.MIN_SIZE_TEST", 64,
            "INPUT.MAX_SIZE_TEST", 96,
            *opts,
        ]
    )  # fmt: skip
    return cfg


def _model(*opts, config="configs/nuclei/condinst_R_18_FPN_M.yaml") -> PointSupCondInst:
    torch.manual_seed(0)
    model = build_model(tiny_condinst_cfg(config, *opts))
    assert isinstance(model, PointSupCondInst)
    return model


def _loss_inputs(model, gt_instances, images=None, original_heights=None) -> MaskLossInputs:
    """The mask losses' inputs for ``gt_instances`` (images of zeros of their sizes by default)."""
    if images is None:
        sizes = [gt.image_size for gt in gt_instances]
        images = ImageList(torch.zeros(len(sizes), 3, *sizes[0]), sizes)
    return MaskLossInputs(
        gt_instances, images, model.mask_out_stride, model.pixel_mean, model.pixel_std, original_heights
    )


def _gt(image_size, boxes, masks=None, points=None):
    inst = Instances(image_size)
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.zeros(len(inst.gt_boxes), dtype=torch.int64)
    if masks is not None:
        inst.gt_masks = BitMasks(masks)
    if points is not None:
        inst.gt_point_coords, inst.gt_point_labels = points
    return inst


def test_point_loss_reads_each_points_own_pixel_and_ignores_points_outside_the_gt_box():
    model = _model(config="configs/nuclei/condinst_R_18_FPN_P10.yaml")
    assert model.mask_loss.name == "points" and model.infer_crop_to_box
    h, w = 32, 48
    coords = torch.tensor([[[5.5, 6.5], [20.5, 9.5], [40.5, 30.5], [9.0, 13.0]]])
    labels = torch.tensor([[1.0, 0.0, 1.0, -2.0]])  # the last is padding
    gt = _gt((h, w), [[2, 2, 30, 20]], points=(coords, labels))  # point 3 is outside the box
    logits = torch.randn(2, 1, h // 4, w // 4, requires_grad=True)
    inst = MaskInstances(
        image_index=torch.tensor([0, 0]),
        params=torch.zeros(2, 1),
        locations=torch.zeros(2, 2),
        sizes_of_interest=torch.ones(2),
        gt_index=torch.tensor([0, 0]),
    )
    loss = model.mask_loss(logits, inst, _loss_inputs(model, [gt]))["loss_mask"]
    # independent: BCE at cells (floor(y/4), floor(x/4)) of both instances' maps, divided by all
    # labelled points (the out-of-box one included: Detectron2's "all_points" normalisation)
    cells = [(1, 1, 1.0), (2, 5, 0.0)]
    total = sum(
        F.binary_cross_entropy_with_logits(logits[r, 0, y, x], torch.tensor(t), reduction="sum")
        for r in range(2)
        for y, x, t in cells
    )
    torch.testing.assert_close(loss, total / 6)
    loss.backward()
    supervised = torch.zeros_like(logits, dtype=torch.bool)
    for y, x, _ in cells:
        supervised[:, 0, y, x] = True
    assert (logits.grad[supervised] != 0).all() and (logits.grad[~supervised] == 0).all()


def test_the_bilinear_option_supervises_each_point_in_the_upsampled_mask():
    model = _model(
        "MODEL.CONDINST.POINT_LOGITS", "bilinear", config="configs/nuclei/condinst_R_18_FPN_P10.yaml"
    )
    assert model.mask_loss.point_logits == "bilinear"
    h, w = 32, 48
    coords = torch.tensor([[[5.5, 6.5], [20.5, 9.5], [40.5, 30.5], [9.0, 13.0]]])
    labels = torch.tensor([[1.0, 0.0, 1.0, -2.0]])  # the last is padding; the third is outside the box
    gt = _gt((h, w), [[2, 2, 30, 20]], points=(coords, labels))
    logits = torch.randn(1, 1, h // 4, w // 4, requires_grad=True)
    inst = MaskInstances(
        image_index=torch.tensor([0]),
        params=torch.zeros(1, 1),
        locations=torch.zeros(1, 2),
        sizes_of_interest=torch.ones(1),
        gt_index=torch.tensor([0]),
    )
    loss = model.mask_loss(logits, inst, _loss_inputs(model, [gt]))["loss_mask"]
    # independent: the inference mask (bilinear to input pixels) at the two in-box points' pixels
    upsampled = mask_logits_to_image(logits, 4, (h, w))[0, 0]
    total = F.binary_cross_entropy_with_logits(
        upsampled[[6, 9], [5, 20]], torch.tensor([1.0, 0.0]), reduction="sum"
    )
    torch.testing.assert_close(loss, total / 3)  # Detectron2's all_points: 3 labelled points
    loss.backward()
    assert (logits.grad != 0).sum() > 2  # each point reaches its neighbouring cells
    with pytest.raises(ValueError, match="MODEL.CONDINST.POINT_LOGITS"):
        _model("MODEL.CONDINST.POINT_LOGITS", "nearest")


def test_dice_loss_of_the_model_uses_each_instances_own_ground_truth():
    model = _model()
    h, w = 16, 16
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    masks[0, :8, :8] = True
    masks[1, 8:, 8:] = True
    gt = _gt((h, w), [[0, 0, 8, 8], [8, 8, 16, 16]], masks=masks)
    logits = torch.randn(3, 1, 4, 4)
    inst = MaskInstances(
        image_index=torch.tensor([0, 0, 0]),
        params=torch.zeros(3, 1),
        locations=torch.zeros(3, 2),
        sizes_of_interest=torch.ones(3),
        gt_index=torch.tensor([1, 0, 1]),
    )
    images = ImageList(torch.zeros(1, 3, h, w), [(h, w)])
    got = model.mask_loss(logits, inst, _loss_inputs(model, [gt], images))["loss_mask"]
    targets = masks[:, 2::4, 2::4].float()
    expected = dice_loss(logits.sigmoid()[:, 0], targets[[1, 0, 1]]).mean()
    torch.testing.assert_close(got, expected)


def _batch(image_size=(64, 96), instances=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 255, (3, *image_size), generator=g).to(torch.uint8)
    out = {"image": image, "height": image_size[0], "width": image_size[1]}
    if instances is not None:
        out["instances"] = instances
    return out


def _full_gt(image_size, boxes):
    h, w = image_size
    masks = torch.zeros(len(boxes), h, w, dtype=torch.bool)
    coords, labels = [], []
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        masks[i, int(y0) : int(y1), int(x0) : int(x1)] = True
        coords.append([[x0 + 0.5, y0 + 0.5], [(x0 + x1) / 2, (y0 + y1) / 2]])
        labels.append([0.0, 1.0])
    points = (torch.tensor(coords).reshape(-1, 2, 2), torch.tensor(labels).reshape(-1, 2))
    return _gt(image_size, boxes, masks=masks, points=points)


@pytest.mark.parametrize(
    "config",
    [
        "configs/nuclei/condinst_R_18_FPN_M.yaml",
        "configs/nuclei/condinst_R_18_FPN_P10.yaml",
        "configs/nuclei/boxinst_R_18_FPN_B.yaml",
        "configs/nuclei/condinst_R_18_FPN_P10_box_prior.yaml",
    ],
)
def test_trains_on_empty_images_zero_instances_and_degenerate_boxes_and_gradients_reach_the_heads(config):
    model = _model(config=config)
    model.train()
    size = (64, 96)
    batch = [
        _batch(size, _full_gt(size, [[10, 10, 40, 30], [50, 20, 51, 20], [60, 5, 90, 60]]), seed=1),
        _batch(size, _full_gt(size, []), seed=2),  # an empty image
    ]
    with EventStorage(0):
        losses = model(batch)
        mask_keys = {"loss_mask"} if model.mask_loss.name != "boxes" else {"loss_prj", "loss_pairwise"}
        assert mask_keys <= set(losses) and {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"} <= set(losses)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        sum(losses[k] for k in mask_keys).backward()
    assert model.head.controller.weight.grad.abs().sum() > 0
    assert model.mask_branch.out.weight.grad.abs().sum() > 0
    # only empty images: every loss finite, and the graph kept for every parameter (DDP)
    model.zero_grad()
    with EventStorage(0):
        # two images: a GroupNorm of 32 channels in 32 groups cannot normalise P7's 1x1 map of one
        losses = model([_batch(size, _full_gt(size, []), seed=3), _batch(size, _full_gt(size, []), seed=4)])
        assert all(torch.isfinite(v) for v in losses.values()), losses
        sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def _pairwise_after_warmup(model, batch):
    model.train()
    with EventStorage(10**9):  # past the pairwise term's warm-up
        return model(batch)["loss_pairwise"]


def test_boxinst_ignores_the_scaled_bottom_rows_of_the_original_image_in_the_pairwise_term():
    boxinst = "configs/nuclei/boxinst_R_18_FPN_B.yaml"
    removing = _model("MODEL.BOXINST.BOTTOM_PIXELS_REMOVED", 10, config=boxinst)
    keeping = _model(config=boxinst)  # the nuclei config: 0
    assert keeping.mask_loss.bottom_pixels_removed == 0 and removing.mask_loss.bottom_pixels_removed == 10
    assert add_point_sup_config(get_cfg()).MODEL.BOXINST.BOTTOM_PIXELS_REMOVED == 10  # AdelaiDet's
    size = (64, 96)
    # an input shown at twice its original height: 10 original rows are 20 input rows (5 cells)
    images = ImageList(torch.zeros(2, 3, *size), [size, (60, 96)])
    assert removed_bottom_rows(10, [32, 60], images.image_sizes) == [20, 10]
    assert removed_bottom_rows(0, [32, 60], images.image_sizes) == [0, 0]
    assert removed_bottom_rows(10, [64, 60], images.image_sizes) == [10, 10]  # at the input's own height

    similarity = removing.mask_loss.color_similarity(
        _loss_inputs(removing, [], images, original_heights=[32, 60]), (16, 24)
    )
    offsets = removing.mask_loss.offsets
    valid = image_cells([size, (60, 96)], (16, 24), 4, [20, 10])
    assert valid[0, :11].all() and not valid[0, 11:].any()  # rows 4r + 2 < 44
    for k, (dy, _) in enumerate(offsets):
        for r in (9, 10, 11, 12):
            neighbour_in = 0 <= r + dy < 11
            assert bool((similarity[0, k, r, 2:-2] > 0).all()) == (r < 11 and neighbour_in), (k, r)

    def batch(box):
        gt = _gt(size, [box])
        return [{**_batch(size, seed=5), "height": 32, "width": 48, "instances": gt}]

    # a box that reaches the removed rows: their pairs drop out of the average
    low = batch([20, 30, 60, 64])
    assert not torch.equal(_pairwise_after_warmup(removing, low), _pairwise_after_warmup(keeping, low))
    # a box whose cells and their neighbours (2 cells away) stay above them: the same loss
    high = batch([20, 4, 60, 24])
    torch.testing.assert_close(_pairwise_after_warmup(removing, high), _pairwise_after_warmup(keeping, high))


def test_inference_gives_full_image_boolean_masks_and_crops_to_the_box_when_asked():
    model = _model(
        "MODEL.FCOS.INFERENCE_TH_TEST",
        0.0,
        "TEST.DETECTIONS_PER_IMAGE",
        7,
        config="configs/nuclei/condinst_R_18_FPN_P10.yaml",
    )
    model.eval()
    with torch.no_grad():
        inputs = [{**_batch((64, 96), seed=4), "height": 128, "width": 192}, _batch((32, 32), seed=5)]
        outputs = model(inputs)
    first, second = outputs[0]["instances"], outputs[1]["instances"]
    assert 0 < len(first) <= 7 and first.image_size == (128, 192)  # NMS removes some
    assert first.pred_masks.dtype == torch.bool and first.pred_masks.shape == (len(first), 128, 192)
    assert not first.has("pred_mask_logits")
    for mask, box in zip(first.pred_masks, first.pred_boxes.tensor, strict=True):
        ys, xs = mask.nonzero(as_tuple=True)
        if len(xs):
            assert (xs + 0.5 >= box[0]).all() and (xs + 0.5 <= box[2]).all()
            assert (ys + 0.5 >= box[1]).all() and (ys + 0.5 <= box[3]).all()
    assert second.pred_masks.shape[1:] == (32, 32)
    # an image where nothing scores: zero detections, masks of shape (0, H, W)
    model.test_score_thresh = 2.0
    with torch.no_grad():
        empty = model([_batch((40, 40), seed=6)])[0]["instances"]
    assert len(empty) == 0 and empty.pred_masks.shape == (0, 40, 40)


def test_inference_masks_are_the_dynamic_heads_output_upsampled():
    """The mask of each detection is its own generated head on the mask features, upsampled to the
    input by the stride and thresholded at 0.5: recomputed here from the model's parts."""
    model = _model("MODEL.FCOS.INFERENCE_TH_TEST", 0.0, "TEST.DETECTIONS_PER_IMAGE", 3)
    model.eval()
    inputs = [_batch((64, 96), seed=7)]
    with torch.no_grad():
        out = model(inputs)[0]["instances"]
        images = model.preprocess_image(inputs)
        feats = model.backbone(images.tensor)
        feats = [feats[f] for f in model.head_in_features]
        det = model.forward_inference(images, feats, model.head(feats))[0]
    keep = det.pred_boxes.nonempty()  # detector_postprocess drops empty boxes, masks with them
    assert keep.any()
    logits = det.pred_mask_logits[keep]
    up = F.interpolate(logits, scale_factor=model.mask_out_stride, mode="bilinear", align_corners=False)
    expected = up[:, 0, :64, :96] > 0
    torch.testing.assert_close(out.pred_masks, expected)
    torch.testing.assert_close(out.pred_boxes.tensor, det.pred_boxes.tensor[keep])


# ------------------------------------------------------------------------------ mixed supervision
MIXED_BOXES = [[10, 10, 40, 30], [60, 5, 90, 60], [20, 35, 55, 62], [45, 40, 70, 58]]


def _mixed_batch(kinds: list[int]):
    """One 64x96 image with the four MIXED_BOXES objects of ``kinds`` (gt_supervision) plus an empty
    image: every object has a mask and points (the mapper would give the others placeholders)."""
    size = (64, 96)
    gt = _full_gt(size, MIXED_BOXES)
    gt.gt_supervision = torch.tensor(kinds)
    empty = _full_gt(size, [])
    empty.gt_supervision = torch.zeros(0, dtype=torch.int64)
    return [_batch(size, gt, seed=1), _batch(size, empty, seed=2)]


def _kinds(model) -> list[Supervision]:
    """The kinds of a mixed model's mask loss that have a loss."""
    return [kind for kind, _ in model.mask_loss.kinds]


def _condinst_losses(model, batch, seed=0):
    torch.manual_seed(seed)
    model.train()
    with EventStorage(0):
        return model(batch)


@pytest.mark.parametrize(
    "config, kind",
    [
        ("configs/nuclei/condinst_R_18_FPN_M.yaml", 2),
        ("configs/nuclei/condinst_R_18_FPN_P10.yaml", 1),
        ("configs/nuclei/boxinst_R_18_FPN_B.yaml", 0),
    ],
)
def test_mixed_supervision_of_one_kind_gives_todays_losses_exactly(config, kind):
    """All-mask, all-point and (BoxInst) all-box batches: the mixed model's losses are bit-identical
    to the pure model's (same weights, same seed)."""
    pure = _model(config=config)
    opts = ["INPUT.POINT_SUP", False, "MODEL.MIXED_SUP.ENABLED", True]
    mixed = _model(*opts, config=config)
    assert mixed.mask_loss.name == "mixed" and (Supervision.BOX in _kinds(mixed)) == (kind == 0)
    mixed.load_state_dict(pure.state_dict())
    batch = _mixed_batch([kind] * 4)
    a, b = _condinst_losses(pure, batch), _condinst_losses(mixed, batch)
    assert set(a) == set(b) if kind else set(a) <= set(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_mixed_condinst_reaches_each_object_only_through_its_own_kind():
    """Mask, points, box-only and (with BoxInst) box objects in one image: the mask loss is the
    documented weighted sum, and changing what an object carries beyond its kind changes nothing."""
    model = _model("MODEL.MIXED_SUP.ENABLED", True, "MODEL.BOXINST.ENABLED", True)
    kinds = [2, 1, 0, 1]
    batch = _mixed_batch(kinds)
    losses = _condinst_losses(model, batch)
    assert {"loss_mask", "loss_prj", "loss_pairwise"} <= set(losses)
    gt = batch[0]["instances"]
    changed = copy.deepcopy(batch)
    cgt = changed[0]["instances"]
    masks = cgt.gt_masks.tensor.clone()
    masks[1:] = ~masks[1:]  # every object but the mask-supervised one
    cgt.gt_masks = BitMasks(masks)
    cgt.gt_point_labels[[0, 2]] = 1.0 - cgt.gt_point_labels[[0, 2]]  # the non-point objects
    again = _condinst_losses(model, changed)
    for name in ("loss_mask", "loss_prj", "loss_pairwise"):  # FCOS's own change: its normaliser is an EMA
        assert torch.equal(losses[name], again[name]), name
    # Per kind, from the model's own per-kind functions on the instances of that kind.
    torch.manual_seed(0)
    with EventStorage(0):
        images = model.preprocess_image(batch)
        features = [model.backbone(images.tensor)[f] for f in model.head_in_features]
        predictions = model.head(features)
        gt_instances = [x["instances"] for x in batch]
        logits, _, ctrness, params = model.dense_predictions(predictions)
        anchors = model.anchor_generator(features)
        gt_labels, _, gt_index = model.match(anchors, gt_instances)
        inst = model.positive_instances(anchors, gt_labels, gt_index, logits, ctrness, params)
        mask_logits = model.mask_logits(model.mask_features(features), inst)
        kind = torch.tensor(kinds)[inst.gt_index]
        counts = [int((kind == k).sum()) for k in (2, 1, 0)]
        assert min(counts) > 0
        w = [c / sum(counts) for c in counts]
        rows = [kind == k for k in (2, 1, 0)]
        inputs = _loss_inputs(model, gt_instances, images)
        (_, dice_loss_of), (_, point_loss_of), (_, box_losses_of) = model.mask_loss.kinds
        dice = dice_loss_of(mask_logits[rows[0]], inst.select(rows[0]), inputs)["loss_mask"]
        point = point_loss_of(mask_logits[rows[1]], inst.select(rows[1]), inputs)["loss_mask"]
        prj = box_losses_of(mask_logits[rows[2]], inst.select(rows[2]), inputs)["loss_prj"]
    torch.testing.assert_close(losses["loss_mask"], w[0] * dice + w[1] * point, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["loss_prj"], w[2] * prj, rtol=1e-5, atol=1e-6)
    assert gt.gt_supervision.tolist() == kinds


def test_mixed_condinst_without_boxinst_gives_box_only_objects_no_mask_loss():
    model = _model("MODEL.MIXED_SUP.ENABLED", True)
    assert Supervision.BOX not in _kinds(model)
    losses = _condinst_losses(model, _mixed_batch([0, 0, 0, 0]))
    assert "loss_prj" not in losses and float(losses["loss_mask"]) == 0.0
    model.zero_grad()
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert torch.count_nonzero(model.mask_branch.out.weight.grad) == 0


def test_bfloat16_autocast_gives_finite_losses_and_gradients_close_to_float32(autocast_check):
    """SOLVER.AMP.ENABLED with CondInst trained from points (the check of test_amp.py)."""
    model = _model(config="configs/nuclei/condinst_R_18_FPN_P10.yaml")
    size = (64, 96)
    batch = [_batch(size, _full_gt(size, [[10, 10, 40, 30], [60, 5, 90, 60]]), seed=s) for s in (1, 2)]
    autocast_check(model, "mask_branch", batch)


# ------------------------------------------------------------------------------------------------
# The training step on a GPU (issue 23): no per-object loop, one read from the device, float16
def _nuclei_batch(nuclei_datasets, kinds=None, crop=(64, 96), num_points=5, seed=0):
    """The first two real nuclei training tiles cropped to ``crop``, as the dataset mapper gives them:
    BGR image, boxes from the masks (nuclei cut below 16 pixels dropped), the bit masks, ``num_points``
    points per object drawn uniformly in its box and labelled by its mask's pixel (how P_N points are
    simulated), and with ``kinds`` the objects' ``gt_supervision`` in turn."""
    from replicas import nuclei_tiles

    g = torch.Generator().manual_seed(seed)
    h, w = crop
    batch = []
    for tile in nuclei_tiles(nuclei_datasets)["train"][:2]:
        masks = torch.from_numpy(tile.masks[:, :h, :w].copy())
        masks = masks[masks.flatten(1).sum(dim=1) >= 16]
        inst = Instances((h, w))
        inst.gt_masks = BitMasks(masks)
        inst.gt_boxes = inst.gt_masks.get_bounding_boxes()
        inst.gt_classes = torch.zeros(len(masks), dtype=torch.int64)
        boxes = inst.gt_boxes.tensor
        coords = boxes[:, None, :2] + torch.rand(len(masks), num_points, 2, generator=g) * (
            boxes[:, None, 2:] - boxes[:, None, :2]
        )
        cols = coords[..., 0].long().clamp(max=w - 1)
        rows = coords[..., 1].long().clamp(max=h - 1)
        inst.gt_point_coords = coords
        inst.gt_point_labels = masks[torch.arange(len(masks))[:, None], rows, cols].float()
        if kinds is not None:
            inst.gt_supervision = torch.tensor([kinds[i % len(kinds)] for i in range(len(masks))])
        image = torch.from_numpy(tile.image[:h, :w, ::-1].copy()).permute(2, 0, 1)
        batch.append({"image": image, "instances": inst, "height": h, "width": w})
    assert all(len(x["instances"]) >= 3 for x in batch)
    return batch


BOXINST = "configs/nuclei/boxinst_R_18_FPN_B.yaml"
MIXED_KINDS = [int(Supervision.MASK), int(Supervision.POINTS), int(Supervision.BOX)]
# Each CondInst supervision: (config, extra options, gt_supervision kinds or None). The pairwise
# term's warm-up is off, so that it counts from the first step.
SUPERVISIONS = {
    "M": ("configs/nuclei/condinst_R_18_FPN_M.yaml", [], None),
    "P10": ("configs/nuclei/condinst_R_18_FPN_P10.yaml", [], None),
    "B": (BOXINST, ["MODEL.BOXINST.PAIRWISE.WARMUP_ITERS", 0], None),
    "mixed": (
        BOXINST,
        ["MODEL.BOXINST.PAIRWISE.WARMUP_ITERS", 0, "MODEL.MIXED_SUP.ENABLED", True],
        MIXED_KINDS,
    ),
}


def _topk_per_object_loop(positive, gt_index, score, k):
    """topk_per_object before issue 23 (a loop per image and per object), the
    reference: per image, each object's ``max(k // #objects, 1)`` best positive locations by
    ``topk``."""
    kept = torch.zeros_like(positive)
    for i in range(positive.shape[0]):
        objects = gt_index[i][positive[i]].unique()
        if len(objects) == 0:
            continue
        per_object = max(k // len(objects), 1)
        for obj in objects:
            where = (positive[i] & (gt_index[i] == obj)).nonzero(as_tuple=True)[0]
            best = score[i, where].topk(min(per_object, len(where))).indices
            kept[i, where[best]] = True
    return kept


def test_topk_per_object_keeps_what_the_per_object_loop_kept_without_reading_the_device():
    g = torch.Generator().manual_seed(0)

    def draw(high: int) -> int:
        return int(torch.randint(high, (1,), generator=g))

    # (images, locations per image, objects, k)
    cases = [
        (2, 50, 0, 64),  # no object at all
        (1, 30, 1, 64),  # one object, fewer locations than k
        (3, 200, 1, 5),
        (2, 300, 70, 64),  # more objects than k: one location each
        (2, 400, 9, 64),
        (4, 120, 5, 1),
        (1, 1, 1, 64),
    ]
    cases += [(1 + draw(3), 150, draw(30), (1, 16, 64)[draw(3)]) for _ in range(12)]
    for case, (num_images, locations, objects, k) in enumerate(cases):
        # Distinct scores (the loop's topk order is unspecified for ties; see the next test).
        score = torch.randperm(num_images * locations, generator=g).float().reshape(num_images, locations)
        gt_index = torch.randint(0, max(objects, 1), (num_images, locations), generator=g)
        positive = (torch.rand(num_images, locations, generator=g) < 0.4) & (objects > 0)
        if num_images > 1 and case % 3 == 0:
            positive[-1] = False  # an image without objects next to others
        # Where not positive, _match gives -1; the top-k must not read it at all.
        garbage = torch.where(positive, gt_index, torch.randint(-1, 1000, gt_index.shape, generator=g))
        with count_host_syncs() as syncs:
            kept = topk_per_object(positive, garbage, score, k)
        assert not syncs, syncs
        expected = _topk_per_object_loop(positive, gt_index, score, k)
        assert torch.equal(kept, expected), (case, num_images, objects, k)


def test_topk_per_object_ranks_equal_scores_by_location_index():
    positive = torch.tensor([[True] * 9 + [False]])
    gt_index = torch.tensor([[0, 1, 0, 1, 0, 1, 0, 2, 0, 1]])
    score = torch.tensor([[0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.9, 0.1, 0.5, 0.9]])
    # 3 objects, k = 6: 2 per object; object 0: 0.9 at 6, then the lowest index of its 0.5s (0);
    # object 1: its three 0.5s at 1, 3, 5 (9 is not positive): 1 and 3; object 2: 7 alone.
    kept = topk_per_object(positive, gt_index, score, 6)
    assert kept[0].nonzero()[:, 0].tolist() == [0, 1, 3, 6, 7]


def test_per_instance_rows_come_from_each_instances_own_image():
    per_image = [torch.tensor([10, 11]), torch.zeros(0, dtype=torch.int64), torch.tensor([20, 21, 22])]
    inst = SimpleNamespace(image_index=torch.tensor([2, 0, 2, 0, 2]), gt_index=torch.tensor([2, 1, 0, 0, 1]))
    with count_host_syncs() as syncs:
        rows = MaskInstances.per_instance(inst, per_image)
    assert not syncs, syncs
    assert rows.tolist() == [22, 11, 20, 10, 21]


@pytest.mark.parametrize("supervision", list(SUPERVISIONS))
def test_the_training_step_reads_the_device_once_to_size_the_mask_heads_batch(nuclei_datasets, supervision):
    """Counted on CPU, as a GPU would wait: the head, the mask branch, the mask losses, their targets
    and BoxInst's top-k (forward and backward) read one count from the device (the positive
    locations' ``nonzero``); Detectron2's FCOS losses, which read their own, are left out. The point
    loss logs its statistics with one copy (point_sup.modeling.common.point_loss)."""
    config, opts, kinds = SUPERVISIONS[supervision]
    model = _model(*opts, config=config)
    model.train()
    batch = _nuclei_batch(nuclei_datasets, kinds)
    with EventStorage(0):
        with torch.no_grad():  # Detectron2's ImageList reads the sizes; the backbone is not counted
            images = model.preprocess_image(batch)
            features = model.backbone(images.tensor)
        features = [features[f].requires_grad_() for f in model.head_in_features]
        gt = [x["instances"] for x in batch]
        with mock.patch.object(model, "losses", return_value={}), count_host_syncs() as syncs:
            heights = [x["height"] for x in batch]
            losses = model.forward_training(images, features, model.head(features), gt, heights)
            sum(losses.values()).backward()
    assert syncs.pop("nonzero") == 1
    if model.mask_loss.name in ("points", "mixed"):
        assert syncs.pop("to host", 0) <= 1
    assert not syncs, syncs


# float16 on CPU (CUDA's AMP dtype; autocast runs it on CPU too): tolerances. Measured on the real
# nuclei batch below (2 crops of 64 x 96, 4 and 7 nuclei): losses within 3.4e-4 relative of float32's,
# mask-branch gradients at cosine 0.9964-0.9994 (M, P10) and 0.984-0.986 (B, mixed) and within 5 %
# in norm. BoxInst's projection term is lower: it back-propagates through one maximum per row and
# column, and float16's rounding of a randomly initialised head's nearly equal logits moves it
# (its pairwise term alone gives 0.9998). An overflow gives inf / NaN, an underflow a far lower cosine.
FLOAT16_LOSS_RTOL = 0.005
FLOAT16_MIN_COSINE = {"M": 0.99, "P10": 0.99, "B": 0.96, "mixed": 0.96}
FLOAT16_NORM_RTOL = 0.1


@pytest.mark.parametrize("supervision", list(SUPERVISIONS))
def test_float16_autocast_training_step_is_finite_and_close_to_float32(
    nuclei_datasets, autocast_check, supervision
):
    config, opts, kinds = SUPERVISIONS[supervision]
    model = _model(*opts, config=config)
    autocast_check(
        model,
        "mask_branch",
        _nuclei_batch(nuclei_datasets, kinds),
        dtype=torch.float16,
        loss_rtol=FLOAT16_LOSS_RTOL,
        min_cosine=FLOAT16_MIN_COSINE[supervision],
        norm_rtol=FLOAT16_NORM_RTOL,
    )


# Measured: mask logits within 0.0023 of float32's (of values up to 0.8), 0.2 % of mask pixels differ.
FLOAT16_MASK_LOGIT_ATOL = 0.02
FLOAT16_MASK_PIXELS_DIFFERING = 0.01


def test_float16_inference_gives_finite_outputs_and_masks_close_to_float32(nuclei_datasets):
    model = _model("MODEL.FCOS.INFERENCE_TH_TEST", 0.0, "TEST.DETECTIONS_PER_IMAGE", 10)
    model.eval()
    inputs = [{k: x[k] for k in ("image", "height", "width")} for x in _nuclei_batch(nuclei_datasets)]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        outputs = model(inputs)
    for out in outputs:
        det = out["instances"]
        assert len(det) > 0 and det.scores.dtype == det.pred_boxes.tensor.dtype == torch.float32
        assert torch.isfinite(det.scores).all() and torch.isfinite(det.pred_boxes.tensor).all()
        assert det.pred_masks.dtype == torch.bool and det.pred_masks.shape == (len(det), 64, 96)

    def mask_logits(amp: bool) -> torch.Tensor:
        """The masks of the same locations (every 37th anchor point, both images), each precision
        computing its own features and generated heads (a detection's location depends on scores
        that a randomly initialised head makes nearly equal)."""
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16, enabled=amp):
            _, features, predictions = model.predict(inputs)
            params = model.dense_predictions(predictions)[3]
            centers, soi = model.level_tensors(model.anchor_generator(features))
            flat = torch.arange(0, len(centers), 37).repeat(2)
            image_index = torch.arange(2).repeat_interleave(len(flat) // 2)
            inst = MaskInstances(
                image_index, torch.cat(params, dim=1)[image_index, flat], centers[flat], soi[flat]
            )
            return model.mask_logits(model.mask_features(features), inst)

    full, half = mask_logits(False), mask_logits(True)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert (half - full).abs().max() <= FLOAT16_MASK_LOGIT_ATOL
    # Random weights give nearly one-valued masks: threshold both at float32's median logit.
    threshold = full.median()
    full_masks = mask_logits_to_image(full, model.mask_out_stride, (64, 96)) > threshold
    half_masks = mask_logits_to_image(half, model.mask_out_stride, (64, 96)) > threshold
    assert 0.2 < full_masks.float().mean() < 0.8
    assert (full_masks != half_masks).float().mean() <= FLOAT16_MASK_PIXELS_DIFFERING


def test_the_deprecated_inference_argument_for_given_boxes_gives_the_engines_masks():
    """``model.inference(detected_instances=...)`` warns and returns what
    point_sup.engine.given_boxes computes: one mask per given box, inside it."""
    from point_sup.engine.given_boxes import inference_with_given_boxes

    model = _model(config="configs/nuclei/condinst_R_18_FPN_P10.yaml").eval()
    inputs = [_batch((64, 96), seed=4)]
    given = Instances((64, 96))
    given.pred_boxes = Boxes(torch.tensor([[10.0, 10.0, 40.0, 30.0], [50.0, 20.0, 90.0, 60.0]]))
    given.pred_classes = torch.zeros(2, dtype=torch.int64)
    with torch.no_grad():
        ours = inference_with_given_boxes(model, inputs, [given])[0]["instances"]
        with pytest.warns(DeprecationWarning, match="given_boxes"):
            old = model.inference(inputs, detected_instances=[given])[0]["instances"]
    assert ours.pred_masks.shape == (2, 64, 96)
    assert torch.equal(ours.pred_masks, old.pred_masks)
    outside = ~box_cells_at_stride(given.pred_boxes.tensor, (64, 96), 1)
    assert not (ours.pred_masks & outside).any()


BOX_PRIOR_P10 = "configs/nuclei/condinst_R_18_FPN_P10_box_prior.yaml"


def test_points_with_the_box_prior_are_the_point_loss_plus_the_weighted_box_terms():
    """``MODEL.BOX_PRIOR``: today's P10 losses unchanged, plus BoxInst's two terms on the same
    instances, each scaled by its weight; box-only objects of a mixed set get the terms too."""
    no_warmup = ["MODEL.BOXINST.PAIRWISE.WARMUP_ITERS", 0]
    p10 = _model(config="configs/nuclei/condinst_R_18_FPN_P10.yaml")
    unit = _model(*no_warmup, config=BOX_PRIOR_P10)
    weighted = _model(
        *no_warmup,
        "MODEL.BOX_PRIOR.PROJECTION_WEIGHT",
        2.0,
        "MODEL.BOX_PRIOR.PAIRWISE_WEIGHT",
        0.5,
        config=BOX_PRIOR_P10,
    )
    unit.load_state_dict(p10.state_dict())
    weighted.load_state_dict(p10.state_dict())
    size = (64, 96)
    batch = [_batch(size, _full_gt(size, MIXED_BOXES), seed=1), _batch(size, _full_gt(size, []), seed=2)]
    a, b, c = (_condinst_losses(m, batch) for m in (p10, unit, weighted))
    assert set(b) == set(c) == set(a) | {"loss_prj", "loss_pairwise"}
    for name in a:
        assert torch.equal(a[name], b[name]) and torch.equal(a[name], c[name]), name
    assert b["loss_prj"] > 0 and b["loss_pairwise"] > 0
    torch.testing.assert_close(c["loss_prj"], 2.0 * b["loss_prj"])
    torch.testing.assert_close(c["loss_pairwise"], 0.5 * b["loss_pairwise"])
    mixed = _model("INPUT.POINT_SUP", False, "MODEL.MIXED_SUP.ENABLED", True, config=BOX_PRIOR_P10)
    assert _kinds(mixed) == [Supervision.MASK, Supervision.POINTS, Supervision.BOX]
