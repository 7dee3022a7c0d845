"""PointSupDatasetMapper on the real nuclei tiles: every point's label equals the transformed mask at the
transformed point, through resize, flip, crop, rotation and their random combinations."""

import json

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T
from detectron2.data.build import worker_init_reset_seed
from detectron2.utils.env import seed_all_rng
from pycocotools.coco import COCO
from torch.utils.data import DataLoader

from point_sup import add_point_sup_config
from point_sup.data.dataset_mapper import (
    PointSupDatasetMapper,
    pad_point_annotations,
    transform_point_annotations,
)
from point_sup.data.datasets import load_coco_json_with_points
from point_sup.data.nuclei import build_nuclei_coco
from point_sup.data.point_augmentation import subsample_points
from point_sup.point_labels import IGNORE_LABEL, PADDING_LABEL


def _add_points(src, dst, num_points, seed, keep_masks=True):
    """Simulated P_N: integer pixels drawn uniformly inside each box, labelled from the real mask.

    ``num_points`` is an int or a function of the annotation index (different counts per instance).
    """
    coco = COCO(str(src))
    data = json.loads(src.read_text())
    rng = np.random.default_rng(seed)
    for i, ann in enumerate(data["annotations"]):
        n = num_points(i) if callable(num_points) else num_points
        mask = coco.annToMask(ann)
        x, y, w, h = ann["bbox"]
        xs, ys = rng.integers(x, x + w, n), rng.integers(y, y + h, n)
        ann["point_coords"] = [[int(a), int(b)] for a, b in zip(xs, ys, strict=True)]
        ann["point_labels"] = [int(v) for v in mask[ys, xs]]
        if not keep_masks:
            del ann["segmentation"]
    dst.write_text(json.dumps(data))
    return dst


@pytest.fixture(scope="module")
def nuclei(tmp_path_factory):
    root = tmp_path_factory.mktemp("nuclei")
    paths = build_nuclei_coco(root)
    image_root = paths["image_root"]
    ann = root / "annotations"
    out = {}
    for key, n, keep in (("p10", 10, True), ("pvar", lambda i: i % 7, True), ("p10_nomask", 10, False)):
        json_file = _add_points(paths["train"], ann / f"train_{key}.json", n, seed=len(key), keep_masks=keep)
        out[key] = load_coco_json_with_points(json_file, image_root)
    return out


def _mapper(augmentations, *, mask_on=True, point_sup=True, sample_points=0, recompute_boxes=False):
    return PointSupDatasetMapper(
        True,
        augmentations=augmentations,
        image_format="BGR",
        use_instance_mask=mask_on,
        instance_mask_format="bitmask",
        recompute_boxes=recompute_boxes,
        point_supervision=point_sup,
        sample_points=sample_points,
    )


def _assert_labels_match_masks(instances):
    """Every non-ignored point lies in the image and carries the transformed mask's value at its pixel.

    Returns the number of points checked."""
    coords, labels = instances.gt_point_coords, instances.gt_point_labels
    masks = instances.gt_masks.tensor
    H, W = instances.image_size
    assert coords.dtype == labels.dtype == torch.float32
    assert coords.shape[:2] == labels.shape and masks.shape[1:] == (H, W)
    r, p = torch.nonzero(labels >= 0, as_tuple=True)
    x, y = coords[r, p, 0], coords[r, p, 1]
    assert ((x >= 0) & (x < W) & (y >= 0) & (y < H)).all()
    expected = masks[r, y.floor().long(), x.floor().long()].float()
    assert torch.equal(labels[r, p], expected)
    return len(r)


def _points_in_window(records, x0, y0, w, h):
    total = 0
    for rec in records:
        for ann in rec["annotations"]:
            c = ann["point_coords"]
            total += int(((c[:, 0] >= x0) & (c[:, 0] < x0 + w) & (c[:, 1] >= y0) & (c[:, 1] < y0 + h)).sum())
    return total


@pytest.mark.parametrize(
    "name, augs",
    [
        ("identity", []),
        ("upscale x2", [T.Resize((384, 512))]),
        ("upscale x5/3 shortest edge", [T.ResizeShortestEdge(320, 1333)]),
        ("upscale x1.5 x1.25 anisotropic", [T.Resize((288, 320))]),
        ("hflip", [T.RandomFlip(1.0)]),
        ("vflip", [T.RandomFlip(1.0, horizontal=False, vertical=True)]),
        ("rotate 90 expand", [T.RandomRotation([90, 90], expand=True, sample_style="choice")]),
        ("crop", [T.CropTransform(37, 21, 150, 100)]),
        ("crop+flip+resize", [T.CropTransform(60, 50, 120, 90), T.RandomFlip(1.0), T.Resize((225, 300))]),
    ],
)
def test_labels_equal_transformed_masks(nuclei, name, augs):
    mapper = _mapper(augs)
    checked = 0
    for record in nuclei["p10"]:
        out = mapper(record)
        inst = out["instances"]
        assert inst.gt_point_coords.shape == (len(inst), 10, 2)
        assert tuple(out["image"].shape[-2:]) == inst.image_size
        checked += _assert_labels_match_masks(inst)
    total = sum(len(a["point_labels"]) for r in nuclei["p10"] for a in r["annotations"])
    if name.startswith("crop"):
        # Exactly the points inside the crop window survive; the others are ignore.
        x0, y0, w, h = (augs[0].x0, augs[0].y0, augs[0].w, augs[0].h)
        assert checked == _points_in_window(nuclei["p10"], x0, y0, w, h) < total
    else:
        assert checked == total


def test_flip_and_crop_coordinates_are_exact(nuclei):
    record = nuclei["pvar"][0]
    W = record["width"]
    orig = [(a["point_coords"], a["point_labels"]) for a in record["annotations"]]
    flipped = _mapper([T.RandomFlip(1.0)], mask_on=False)(record)["instances"]
    cropped = _mapper([T.CropTransform(10, 20, 100, 80)], mask_on=False)(record)["instances"]
    assert len(flipped) == len(orig)  # no instance is lost by a flip, so rows follow the annotations
    for r, (c, lab) in enumerate(orig):
        n = len(lab)
        assert torch.equal(flipped.gt_point_coords[r, :n, 0], torch.as_tensor(W - c[:, 0]))
        assert torch.equal(flipped.gt_point_coords[r, :n, 1], torch.as_tensor(c[:, 1]))
        assert torch.equal(flipped.gt_point_labels[r, :n], torch.as_tensor(lab, dtype=torch.float32))
        assert (flipped.gt_point_labels[r, n:] == PADDING_LABEL).all()
    # Pixel centres stay pixel centres: flip maps index i to W - 1 - i.
    assert (flipped.gt_point_coords.frac()[flipped.gt_point_labels != PADDING_LABEL] == 0.5).all()
    coords, labels = transform_point_annotations(
        orig[0][0], orig[0][1], [T.CropTransform(10, 20, 100, 80)], (80, 100)
    )
    np.testing.assert_array_equal(coords, orig[0][0] - np.array([10, 20], dtype=np.float32))
    inside = (coords[:, 0] >= 0) & (coords[:, 0] < 100) & (coords[:, 1] >= 0) & (coords[:, 1] < 80)
    np.testing.assert_array_equal(labels, np.where(inside, orig[0][1], -1))
    assert cropped.gt_point_coords.shape[1] == max(len(lab) for _, lab in orig)


def test_random_augmentations_many_draws(nuclei):
    """Detectron2's training augmentations with random parameters, crop included, over many draws."""
    mapper = _mapper(
        [
            T.RandomCrop("relative_range", (0.4, 0.6)),
            T.ResizeShortestEdge((200, 240, 300, 400), 1333, "choice"),
            T.RandomFlip(0.5),
            T.RandomFlip(0.5, horizontal=False, vertical=True),
        ],
        recompute_boxes=True,
    )
    seed_all_rng(3)
    checked = ignored = 0
    for _ in range(6):
        for record in nuclei["pvar"]:
            inst = mapper(record)["instances"]
            checked += _assert_labels_match_masks(inst)
            ignored += int((inst.gt_point_labels == IGNORE_LABEL).sum())
            # Recomputed boxes are tight around the transformed masks.
            assert torch.equal(inst.gt_boxes.tensor, inst.gt_masks.get_bounding_boxes().tensor)
    assert checked > 500 and ignored > 100


def test_downscale_keeps_points_at_their_pixel(nuclei):
    """Halving the image merges 2x2 pixels; PIL's nearest keeps the odd pixel of each pair, so points at
    odd indices still match the downscaled mask exactly, and every point's pixel maps back to its own."""
    mapper = _mapper([T.Resize((96, 128))])
    for record in nuclei["p10"]:
        inst = mapper(record)["instances"]
        c = inst.gt_point_coords
        back = (c * 2).floor()  # exact for pixel centres: (i + 0.5) / 2 * 2 = i + 0.5
        valid = inst.gt_point_labels >= 0
        assert (back.frac() == 0).all() and valid.all()
        odd = valid & (back.remainder(2) == 1).all(dim=-1)
        r, p = torch.nonzero(odd, as_tuple=True)
        masks = inst.gt_masks.tensor
        assert len(r) > 0
        assert torch.equal(inst.gt_point_labels[r, p], masks[r, c[r, p, 1].long(), c[r, p, 0].long()].float())


def test_points_only_with_crop(nuclei):
    """No masks at all (a "without masks" file) with MASK_ON and crop: boxes are clipped, not recomputed."""
    mapper = _mapper([T.CropTransform(40, 30, 150, 120)], recompute_boxes=True)
    ref = _mapper([T.CropTransform(40, 30, 150, 120)], recompute_boxes=True)
    total = 0
    for record, with_masks in zip(nuclei["p10_nomask"], nuclei["p10"], strict=True):
        inst = mapper(record)["instances"]
        assert not inst.has("gt_masks")
        boxes = inst.gt_boxes.tensor
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 150).all() and (boxes[:, 3] <= 120).all()
        total += int((inst.gt_point_labels >= 0).sum())
        # Same points as when masks are there; here labels are checked against the cropped masks.
        _assert_labels_match_masks(ref(with_masks)["instances"])
    assert total == _points_in_window(nuclei["p10_nomask"], 40, 30, 150, 120)


def test_different_point_counts_are_padded(nuclei):
    record = nuclei["pvar"][1]
    counts = [len(a["point_labels"]) for a in record["annotations"]]
    assert len(set(counts)) > 1 and 0 in counts
    inst = _mapper([], mask_on=False)(record)["instances"]
    assert inst.gt_point_labels.shape == (len(counts), max(counts))
    for r, n in enumerate(counts):
        assert (inst.gt_point_labels[r, :n] >= 0).all()
        assert (inst.gt_point_labels[r, n:] == PADDING_LABEL).all()
        assert (inst.gt_point_coords[r, n:] == 0).all()
    coords, labels = pad_point_annotations([], [])
    assert coords.shape == (0, 0, 2) and labels.shape == (0, 0)


@pytest.mark.parametrize("case", ["empty list", "no key", "crowd only"])
def test_images_without_annotations(nuclei, case):
    record = dict(nuclei["p10"][0])
    if case == "empty list":
        record["annotations"] = []
    elif case == "no key":
        del record["annotations"]
    else:
        record["annotations"] = [dict(a, iscrowd=1) for a in record["annotations"]]
    for augs in ([], [T.RandomCrop("absolute", (100, 100)), T.RandomFlip(1.0)]):
        for sample_points in (0, 5):
            out = _mapper(augs, sample_points=sample_points)(record)
            inst = out["instances"]
            assert len(inst) == 0
            assert inst.gt_boxes.tensor.shape == (0, 4) and inst.gt_classes.shape == (0,)
            assert inst.gt_point_coords.shape == (0, 0, 2) and inst.gt_point_labels.shape == (0, 0)
            assert inst.image_size == tuple(out["image"].shape[-2:])


def test_without_point_sup_matches_detectron2(nuclei):
    augs = [T.ResizeShortestEdge(300, 1333), T.RandomFlip(1.0)]
    ours = _mapper(augs, point_sup=False)
    theirs = DatasetMapper(
        True, augmentations=augs, image_format="BGR", use_instance_mask=True, instance_mask_format="bitmask"
    )
    for record in nuclei["p10"]:
        a, b = ours(record)["instances"], theirs(record)["instances"]
        assert set(a.get_fields()) == set(b.get_fields()) == {"gt_boxes", "gt_classes", "gt_masks"}
        assert torch.equal(a.gt_boxes.tensor, b.gt_boxes.tensor)
        assert torch.equal(a.gt_masks.tensor, b.gt_masks.tensor)


def test_missing_points_fail_naming_the_image(nuclei):
    record = dict(nuclei["p10"][0])
    record["annotations"] = [dict(a) for a in record["annotations"]]
    del record["annotations"][2]["point_labels"]
    ann_id = record["annotations"][2]["id"]
    with pytest.raises(ValueError, match=rf"annotation id {ann_id} of image .*train_0.png.*'point_labels'"):
        _mapper([])(record)
    del record["annotations"][2]["id"]  # Detectron2's loaders keep no annotation id
    with pytest.raises(
        ValueError, match=r"annotation #2 \(of the non-crowd ones\) of image .*'point_labels'"
    ):
        _mapper([])(record)


def test_sample_points_subsets(nuclei):
    record = nuclei["p10"][0]
    full = _mapper([T.CropTransform(0, 0, 128, 192)], mask_on=False)(record)["instances"]
    sampled_mapper = _mapper([T.CropTransform(0, 0, 128, 192)], mask_on=False, sample_points=5)
    torch.manual_seed(0)
    a = sampled_mapper(record)["instances"]
    b = sampled_mapper(record)["instances"]
    torch.manual_seed(0)
    a_again = sampled_mapper(record)["instances"]
    assert torch.equal(a.gt_point_coords, a_again.gt_point_coords)  # reproducible under a seed
    assert not torch.equal(a.gt_point_coords, b.gt_point_coords)  # but new points at every call
    valid_full = full.gt_point_labels >= 0
    for r in range(len(full)):
        n_valid = int(valid_full[r].sum())
        kept = a.gt_point_labels[r] >= 0
        assert int(kept.sum()) == min(5, n_valid)  # only points inside the crop are candidates
        pool = {tuple(p) for p in full.gt_point_coords[r][valid_full[r]].tolist()}
        for p, lab in zip(
            a.gt_point_coords[r][kept].tolist(), a.gt_point_labels[r][kept].tolist(), strict=True
        ):
            assert tuple(p) in pool
            i = full.gt_point_coords[r].tolist().index(p)
            assert full.gt_point_labels[r, i] == lab


def test_subsample_points_is_uniform_without_replacement():
    labels = np.array([1, 0, -1, 1, 1, 0, 0, -1, 1, 0, 1, 1], dtype=np.float32)
    valid = np.flatnonzero(labels != -1)
    gen = torch.Generator().manual_seed(0)
    counts = np.zeros(len(labels), dtype=int)
    draws = 4000
    for _ in range(draws):
        idx = subsample_points(labels, 5, gen)
        assert len(idx) == len(set(idx.tolist())) == 5 and np.all(np.diff(idx) > 0)
        counts[idx] += 1
    assert counts[labels == -1].sum() == 0
    # Each of the 10 valid points is kept with probability 1/2: 2000 ± 5 sigma (sigma = 31.6).
    assert np.all(np.abs(counts[valid] - draws / 2) < 5 * np.sqrt(draws / 4)), counts
    np.testing.assert_array_equal(subsample_points(labels, 20), valid)
    with pytest.raises(ValueError, match="positive"):
        subsample_points(labels, 0)


class _Repeat(torch.utils.data.Dataset):
    def __init__(self, record, mapper, n):
        self.record, self.mapper, self.n = record, mapper, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        info = torch.utils.data.get_worker_info()
        return info.id, self.mapper(self.record)["instances"].gt_point_coords


def _draws_by_worker(record, mapper, seed):
    seed_all_rng(seed)
    loader = DataLoader(
        _Repeat(record, mapper, 4),
        batch_size=None,
        num_workers=2,
        worker_init_fn=worker_init_reset_seed,
        multiprocessing_context="fork",
    )
    out = {}
    for worker, coords in loader:
        out.setdefault(worker, []).append(coords)
    return out


def test_sample_points_in_dataloader_workers(nuclei):
    """Workers draw different points (the default torch generator is seeded per worker) and a run
    repeats under the same seed, as with Detectron2's seed_all_rng / worker_init_reset_seed."""
    mapper = _mapper([], mask_on=False, sample_points=3)
    record = nuclei["p10"][0]
    run1, run2 = _draws_by_worker(record, mapper, 7), _draws_by_worker(record, mapper, 7)
    assert set(run1) == {0, 1}
    assert not torch.equal(run1[0][0], run1[1][0])
    for worker in (0, 1):
        for x, y in zip(run1[worker], run2[worker], strict=True):
            assert torch.equal(x, y)
    run3 = _draws_by_worker(record, mapper, 8)
    assert not torch.equal(run1[0][0], run3[0][0])


def test_from_config_reads_point_keys():
    cfg = add_point_sup_config(get_cfg())
    cfg.INPUT.POINT_SUP = True
    cfg.INPUT.SAMPLE_POINTS = 5
    cfg.INPUT.CROP.ENABLED = True
    cfg.MODEL.MASK_ON = True
    mapper = PointSupDatasetMapper(cfg, is_train=True)
    assert mapper.point_supervision and mapper.sample_points == 5
    assert isinstance(mapper.augmentations.augs[0], T.RandomCrop) and mapper.recompute_boxes
    cfg.INPUT.SAMPLE_POINTS = -1
    with pytest.raises(ValueError, match="SAMPLE_POINTS"):
        PointSupDatasetMapper(cfg, is_train=True)


@pytest.mark.slow
def test_mapper_output_trains_every_point_supervised_head(nuclei):
    """Contract with point_sup.modeling: a batch of real mapper outputs (crop, subsampling, different
    point counts, an image without annotations) gives finite losses with every registered PointSup head."""
    from detectron2.modeling import build_model
    from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY
    from detectron2.utils.events import EventStorage

    heads = [name for name, _ in ROI_MASK_HEAD_REGISTRY if name.startswith("PointSup")]
    assert heads
    records = [nuclei["pvar"][0], dict(nuclei["pvar"][1], annotations=[])]
    for head in heads:
        cfg = add_point_sup_config(get_cfg())
        cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS, cfg.MODEL.MASK_ON = "cpu", "", True
        cfg.MODEL.BACKBONE.FREEZE_AT = 0
        cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
        cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS, cfg.MODEL.RESNETS.NORM = 18, 64, "GN"
        cfg.MODEL.RESNETS.OUT_FEATURES = cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
        cfg.MODEL.FPN.OUT_CHANNELS = 32
        cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8], [16], [32], [64], [128]]
        cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
        cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
        cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
        cfg.MODEL.ROI_BOX_HEAD.NAME, cfg.MODEL.ROI_BOX_HEAD.NUM_FC, cfg.MODEL.ROI_BOX_HEAD.FC_DIM = (
            "FastRCNNConvFCHead",
            1,
            64,
        )
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = cfg.MODEL.POINT_HEAD.NUM_CLASSES = 1
        cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
        cfg.MODEL.ROI_MASK_HEAD.NAME, cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = head, 32
        if "PointRend" in head:
            cfg.MODEL.ROI_MASK_HEAD.POOLER_TYPE = ""  # PointRend heads sample features themselves
        cfg.INPUT.POINT_SUP, cfg.INPUT.SAMPLE_POINTS, cfg.INPUT.MASK_FORMAT = True, 3, "bitmask"
        cfg.INPUT.CROP.ENABLED, cfg.INPUT.CROP.SIZE = True, [0.6, 0.6]
        cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (192,), 256
        torch.manual_seed(0)
        model = build_model(cfg).train()
        mapper = PointSupDatasetMapper(cfg, is_train=True)
        with EventStorage(0):
            losses = model([mapper(r) for r in records])
        assert any(k.startswith("loss_mask") for k in losses), (head, losses)
        assert all(torch.isfinite(v) for v in losses.values()), (head, losses)
