"""Mixed supervision on the data side: each annotation's kind, the mapper carrying masks and points of
one image through the same transforms (pixel-exact against Detectron2's own mapper), and the
start-up checks reporting the mix."""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data import transforms as T
from pycocotools.coco import COCO

import point_sup
from point_sup import add_point_sup_config
from point_sup.data import check_point_supervision
from point_sup.data.dataset_mapper import PointSupDatasetMapper
from point_sup.data.datasets import load_coco_json_with_points
from point_sup.data.mixed_supervision import Supervision, annotation_supervision, count_supervision
from point_sup.data.nuclei import build_nuclei_coco
from point_sup.point_labels import PADDING_LABEL

M, P, B = Supervision.MASK, Supervision.POINTS, Supervision.BOX
# Annotation i gets, by i % 4: a mask only, points only, both, neither (box only).
PATTERN = ("mask", "points", "both", "box")


def _mixed_json(src, dst, num_points: int = 8, seed: int = 0):
    """The nuclei JSON with masks and simulated P_N points (pixels uniform in the box, labelled from
    the mask) kept or dropped per annotation as PATTERN says; also the same file with every mask and
    every point kept (the reference for Detectron2's mapper)."""
    coco = COCO(str(src))
    data = json.loads(src.read_text())
    rng = np.random.default_rng(seed)
    for ann in data["annotations"]:
        mask = coco.annToMask(ann)
        x, y, w, h = (int(v) for v in ann["bbox"])
        xs, ys = rng.integers(x, x + max(w, 1), num_points), rng.integers(y, y + max(h, 1), num_points)
        ann["point_coords"] = [[int(a), int(b)] for a, b in zip(xs, ys, strict=True)]
        ann["point_labels"] = [int(v) for v in mask[ys, xs]]
    full = dst.with_name("full.json")
    full.write_text(json.dumps(data))
    for i, ann in enumerate(data["annotations"]):
        kind = PATTERN[i % 4]
        if kind in ("points", "box"):
            del ann["segmentation"]
        if kind in ("mask", "box"):
            del ann["point_coords"], ann["point_labels"]
    dst.write_text(json.dumps(data))
    return dst, full


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("nuclei")
    paths = build_nuclei_coco(root)
    mixed, full = _mixed_json(paths["train"], root / "annotations" / "mixed.json")
    return {
        "mixed": load_coco_json_with_points(mixed, paths["image_root"]),
        "full": load_coco_json_with_points(full, paths["image_root"]),
        "json": mixed,
        "image_root": paths["image_root"],
    }


def _mapper(augs, *, mixed=True, point_sup=False, sample_points=0, recompute_boxes=False, both="mask"):
    return PointSupDatasetMapper(
        True,
        augmentations=augs,
        image_format="BGR",
        use_instance_mask=True,
        instance_mask_format="bitmask",
        recompute_boxes=recompute_boxes,
        point_supervision=point_sup,
        sample_points=sample_points,
        mixed_supervision=mixed,
        mixed_both=both,
    )


def _detectron2_mapper(augs, recompute_boxes=False):
    return DatasetMapper(
        True,
        augmentations=augs,
        image_format="BGR",
        use_instance_mask=True,
        instance_mask_format="bitmask",
        recompute_boxes=recompute_boxes,
    )


def test_annotation_kinds_and_counts(records):
    annos = [a for r in records["mixed"] for a in r["annotations"]]
    kinds = [annotation_supervision(a) for a in annos]
    assert kinds == [{"mask": M, "points": P, "both": M, "box": B}[PATTERN[i % 4]] for i in range(len(annos))]
    assert annotation_supervision(annos[2], both="points") == P
    assert annotation_supervision({"bbox": [0, 0, 1, 1], "point_coords": [], "point_labels": []}) == B
    assert annotation_supervision({"segmentation": [], "point_coords": [[1, 1]], "point_labels": [0]}) == P
    counts = count_supervision(records["mixed"])
    n = len(annos)
    assert counts == {
        "mask": len(range(0, n, 4)) + len(range(2, n, 4)),
        "points": len(range(1, n, 4)),
        "box": len(range(3, n, 4)),
        "mask and points": len(range(2, n, 4)),
    }


@pytest.mark.parametrize(
    "augs",
    [
        [],
        # Upscales by 5/3 and 2 (there a nearest-neighbour mask resize puts every pixel where its
        # continuous coordinates go; see tests/data/test_dataset_mapper.py).
        [T.ResizeShortestEdge(320, 1333), T.RandomFlip(1.0)],
        [T.RandomRotation([90, 90], expand=True, sample_style="choice"), T.Resize((512, 384))],
    ],
    ids=["identity", "resize+flip", "rotate+resize"],
)
@pytest.mark.parametrize("both", ["mask", "points"])
def test_masks_and_points_go_through_the_same_transforms(records, augs, both):
    """Against Detectron2's own mapper on the same image with every mask: mask objects get exactly
    its masks and boxes, point objects' labels are its transformed mask at their transformed points,
    box-only objects have no points, every object keeps its box and class."""
    mixed_mapper, reference = _mapper(augs, both=both), _detectron2_mapper(augs)
    checked = 0
    for mixed_record, full_record in zip(records["mixed"], records["full"], strict=True):
        out = mixed_mapper(copy.deepcopy(mixed_record))
        ref = reference(copy.deepcopy(full_record))["instances"]
        inst = out["instances"]
        assert len(inst) == len(ref) == len(mixed_record["annotations"])  # no object dropped
        expected = torch.tensor(
            [int(annotation_supervision(a, both)) for a in mixed_record["annotations"]], dtype=torch.int64
        )
        assert torch.equal(inst.gt_supervision, expected)
        assert torch.equal(inst.gt_boxes.tensor, ref.gt_boxes.tensor)
        assert torch.equal(inst.gt_classes, ref.gt_classes)
        is_mask = expected == M
        assert torch.equal(inst.gt_masks.tensor[is_mask], ref.gt_masks.tensor[is_mask])
        labels, coords = inst.gt_point_labels, inst.gt_point_coords
        assert (labels[expected != P] == PADDING_LABEL).all()
        r, p = torch.nonzero(labels >= 0, as_tuple=True)
        assert (expected[r] == P).all()
        x, y = coords[r, p, 0].floor().long(), coords[r, p, 1].floor().long()
        assert torch.equal(labels[r, p], ref.gt_masks.tensor[r, y, x].float())
        checked += len(r)
    assert checked > 100


def test_all_mask_data_gives_detectron2_mapper_output(records):
    augs = [T.CropTransform(20, 10, 150, 120), T.RandomFlip(1.0)]
    masks_only = []
    for record in records["full"]:
        record = copy.deepcopy(record)
        for a in record["annotations"]:
            del a["point_coords"], a["point_labels"]
        masks_only.append(record)
    for recompute in (False, True):
        for record in masks_only:
            ours = _mapper(augs, recompute_boxes=recompute)(copy.deepcopy(record))["instances"]
            theirs = _detectron2_mapper(augs, recompute)(copy.deepcopy(record))["instances"]
            assert (ours.gt_supervision == M).all()
            assert ours.gt_point_labels.shape == (len(ours), 0)
            assert torch.equal(ours.gt_boxes.tensor, theirs.gt_boxes.tensor)
            assert torch.equal(ours.gt_classes, theirs.gt_classes)
            assert torch.equal(ours.gt_masks.tensor, theirs.gt_masks.tensor)


def test_all_point_data_gives_the_point_mapper_output(records):
    augs = [T.CropTransform(20, 10, 150, 120), T.RandomFlip(1.0), T.Resize((240, 300))]
    for record in records["full"]:
        record = copy.deepcopy(record)
        for a in record["annotations"]:
            del a["segmentation"]
        ours = _mapper(augs)(copy.deepcopy(record))["instances"]
        theirs = _mapper(augs, mixed=False, point_sup=True)(copy.deepcopy(record))["instances"]
        assert (ours.gt_supervision == P).all() and not ours.has("gt_masks")
        for field in ("gt_boxes", "gt_classes", "gt_point_coords", "gt_point_labels"):
            a, b = ours.get(field), theirs.get(field)
            assert torch.equal(getattr(a, "tensor", a), getattr(b, "tensor", b)), field


def test_crop_recomputes_boxes_of_mask_objects_only(records):
    augs = [T.CropTransform(30, 25, 100, 90)]
    for record in records["mixed"]:
        inst = _mapper(augs, recompute_boxes=True)(copy.deepcopy(record))["instances"]
        plain = _mapper(augs, recompute_boxes=False)(copy.deepcopy(record))["instances"]
        is_mask = inst.gt_supervision == M
        assert torch.equal(inst.gt_boxes.tensor[is_mask], inst.gt_masks[is_mask].get_bounding_boxes().tensor)
        # Objects whose box is the annotation keep their clipped box (those the crop keeps).
        assert len(plain) >= len(inst)
        for box in inst.gt_boxes.tensor[~is_mask]:
            assert (plain.gt_boxes.tensor == box).all(dim=1).any()


def test_point_augmentation_applies_to_point_objects_only(records):
    mapper = _mapper([], sample_points=3, both="points")
    for record in records["mixed"]:
        inst = mapper(copy.deepcopy(record))["instances"]
        valid = (inst.gt_point_labels >= 0).sum(dim=1)
        is_points = inst.gt_supervision == P
        assert (valid[is_points] == 3).all() and (valid[~is_points] == 0).all()


def test_empty_records_have_the_field(records):
    record = copy.deepcopy(records["mixed"][0])
    record["annotations"] = []
    inst = _mapper([])(record)["instances"]
    assert len(inst) == 0 and inst.gt_supervision.shape == (0,)
    del record["annotations"]
    assert _mapper([])(record)["instances"].gt_supervision.shape == (0,)


# ---------------------------------------------------------------------------------- start-up checks
@pytest.fixture(scope="module")
def mixed_dataset(records, tmp_path_factory):
    data = json.loads(records["json"].read_text())
    for a in data["annotations"]:
        a.pop("segmentation", None)
        a.pop("point_coords", None)
        a.pop("point_labels", None)
    boxes = tmp_path_factory.mktemp("boxes") / "boxes.json"
    boxes.write_text(json.dumps(data))
    point_sup.register_coco_instances_with_points("mixed_test", {}, records["json"], records["image_root"])
    point_sup.register_coco_instances_with_points("mixed_test_boxes", {}, boxes, records["image_root"])
    yield {"mixed": "mixed_test", "boxes": "mixed_test_boxes"}
    for name in ("mixed_test", "mixed_test_boxes"):
        DatasetCatalog.pop(name)
        MetadataCatalog.pop(name)


def _cfg(dataset):
    cfg = add_point_sup_config(get_cfg())
    cfg.DATASETS.TRAIN = (dataset,)
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.MIXED_SUP.ENABLED = True
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1
    cfg.MODEL.ROI_MASK_HEAD.NAME = "PointSupMaskRCNNConvUpsampleHead"
    return cfg


def test_checks_report_the_mix(mixed_dataset, caplog):
    with caplog.at_level(logging.INFO, logger="point_sup.data.checks"):
        check_point_supervision(_cfg(mixed_dataset["mixed"]))
    assert "dataset 'mixed_test', mixed supervision:" in caplog.text
    assert "objects with a mask" in caplog.text and "box only" in caplog.text


def test_checks_fail_on_data_with_nothing_to_train_masks_from(mixed_dataset):
    with pytest.raises(ValueError, match=r"dataset 'mixed_test_boxes': none of its \d+ objects has a mask"):
        check_point_supervision(_cfg(mixed_dataset["boxes"]))


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("INPUT.POINT_SUP", True, "MODEL.MIXED_SUP.ENABLED and INPUT.POINT_SUP are both on"),
        ("MODEL.MASK_ON", False, "needs MODEL.MASK_ON"),
        ("MODEL.MIXED_SUP.BOTH", "either", "MODEL.MIXED_SUP.BOTH must be one of"),
        ("MODEL.MIXED_SUP.WEIGHTING", "mean", "MODEL.MIXED_SUP.WEIGHTING must be one of"),
    ],
)
def test_checks_reject_bad_settings(mixed_dataset, key, value, message):
    cfg = _cfg(mixed_dataset["mixed"])
    cfg.merge_from_list([key, value])
    with pytest.raises(ValueError, match=message):
        check_point_supervision(cfg)
