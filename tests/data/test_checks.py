"""Start-up checks: each misuse fails with the dataset and the missing field named."""

import copy
import json
import logging

import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

import point_sup
from point_sup import add_point_sup_config
from point_sup.data import check_point_supervision, register_nuclei
from point_sup.data.checks import uses_point_head


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """``nuclei_train`` (masks) and ``checks_nuclei_p2`` (the same instances, two points each, no masks)."""
    root = tmp_path_factory.mktemp("nuclei")
    paths = register_nuclei(root)
    data = json.loads(paths["train"].read_text())
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        a["point_coords"], a["point_labels"] = [[x, y], [x + w // 2, y + h // 2]], [0, 1]
        del a["segmentation"]
    p2 = root / "p2.json"
    p2.write_text(json.dumps(data))
    point_sup.register_coco_instances_with_points("checks_nuclei_p2", {}, p2, paths["image_root"])
    yield {"masks": "nuclei_train", "points": "checks_nuclei_p2"}
    DatasetCatalog.pop("checks_nuclei_p2")
    MetadataCatalog.pop("checks_nuclei_p2")


def _cfg(dataset, point_sup_on=True, mask_on=True, mask_head="PointSupMaskRCNNConvUpsampleHead"):
    cfg = add_point_sup_config(get_cfg())
    cfg.DATASETS.TRAIN = (dataset,)
    cfg.INPUT.POINT_SUP = point_sup_on
    cfg.MODEL.MASK_ON = mask_on
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1
    cfg.MODEL.POINT_HEAD.NUM_CLASSES = 1
    cfg.MODEL.ROI_MASK_HEAD.NAME = mask_head
    return cfg


@pytest.mark.parametrize(
    "kind, point_sup_on, mask_on", [("points", True, True), ("masks", False, True), ("points", False, False)]
)
def test_consistent_configs_pass(datasets, kind, point_sup_on, mask_on):
    check_point_supervision(_cfg(datasets[kind], point_sup_on, mask_on))


def test_point_sup_on_a_dataset_without_points(datasets):
    with pytest.raises(
        ValueError,
        match=r"dataset 'nuclei_train': annotation #0 of image .*train_0.png has no 'point_coords', which "
        r"INPUT.POINT_SUP needs; register its P_N annotation file with "
        r"point_sup.register_coco_instances_with_points",
    ):
        check_point_supervision(_cfg(datasets["masks"]))


def test_mask_head_given_only_points(datasets):
    with pytest.raises(
        ValueError,
        match=r"dataset 'checks_nuclei_p2': annotation id 1 of image .* has no 'segmentation', which the "
        r"mask head \(MODEL.MASK_ON\) needs; it has only point annotations: set INPUT.POINT_SUP True",
    ):
        check_point_supervision(_cfg(datasets["points"], point_sup_on=False))


def test_missing_field_in_a_later_record_is_found(datasets):
    dicts = copy.deepcopy(DatasetCatalog.get(datasets["points"]))
    for anno in dicts[-1]["annotations"]:
        del anno["point_labels"]
    with pytest.raises(ValueError, match=r"image .*train_3.png has no 'point_labels'"):
        check_point_supervision(_cfg("checks_nuclei_p2"), dataset_dicts={"checks_nuclei_p2": dicts})


@pytest.mark.parametrize("mask_head", ["PointSupPointRendMaskHead", "PointSupImplicitPointRendMaskHead"])
def test_point_head_class_count(datasets, mask_head):
    cfg = _cfg(datasets["points"], mask_head=mask_head)
    assert uses_point_head(cfg)
    check_point_supervision(cfg)
    cfg.MODEL.POINT_HEAD.NUM_CLASSES = 80
    with pytest.raises(
        ValueError,
        match=rf"MODEL.POINT_HEAD.NUM_CLASSES \(80\) of the point head of {mask_head} differs from "
        r"MODEL.ROI_HEADS.NUM_CLASSES \(1\)",
    ):
        check_point_supervision(cfg)
    cfg.MODEL.MASK_ON = False  # no mask head is built
    check_point_supervision(cfg)


def test_standard_heads_have_no_point_head():
    cfg = _cfg("x", mask_head="MaskRCNNConvUpsampleHead")
    cfg.MODEL.POINT_HEAD.NUM_CLASSES = 80
    assert not uses_point_head(cfg)
    cfg.MODEL.ROI_MASK_HEAD.POINT_HEAD_ON = True  # Detectron2's older PointRend switch
    assert uses_point_head(cfg)


def test_dataset_class_count(datasets):
    cfg = _cfg(datasets["points"])
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = cfg.MODEL.POINT_HEAD.NUM_CLASSES = 80
    with pytest.raises(
        ValueError,
        match=r"dataset 'checks_nuclei_p2' has 1 thing_classes but MODEL.ROI_HEADS.NUM_CLASSES is 80",
    ):
        check_point_supervision(cfg)


def test_dataset_without_instances(datasets):
    dicts = [dict(r, annotations=[]) for r in DatasetCatalog.get(datasets["points"])]
    with pytest.raises(ValueError, match="dataset 'checks_nuclei_p2' has no annotated instance"):
        check_point_supervision(
            _cfg("checks_nuclei_p2"), "checks_nuclei_p2", dataset_dicts={"checks_nuclei_p2": dicts}
        )


def test_sample_points_setting(datasets, caplog):
    cfg = _cfg(datasets["masks"], point_sup_on=False)
    cfg.INPUT.SAMPLE_POINTS = 5
    with caplog.at_level(logging.WARNING, logger="point_sup.data.checks"):
        check_point_supervision(cfg)
    assert "INPUT.SAMPLE_POINTS has no effect without INPUT.POINT_SUP" in caplog.text
    cfg.INPUT.SAMPLE_POINTS = -2
    with pytest.raises(ValueError, match=r"INPUT.SAMPLE_POINTS must be >= 0"):
        check_point_supervision(cfg)


def _condinst_cfg(dataset, point_sup_on=False, box_only=False):
    cfg = add_point_sup_config(get_cfg())
    cfg.MODEL.META_ARCHITECTURE = "PointSupCondInst"
    cfg.DATASETS.TRAIN = (dataset,)
    cfg.INPUT.POINT_SUP = point_sup_on
    cfg.MODEL.BOXINST.ENABLED = box_only
    cfg.MODEL.FCOS.NUM_CLASSES = 1
    return cfg


def test_condinst_configs_pass_on_their_own_kind_of_data(datasets):
    check_point_supervision(_condinst_cfg(datasets["masks"]))
    check_point_supervision(_condinst_cfg(datasets["points"], point_sup_on=True))
    check_point_supervision(_condinst_cfg("nuclei_train_boxes", box_only=True))


def test_box_only_config_given_masks_or_points_names_the_dataset_and_field(datasets):
    with pytest.raises(
        ValueError,
        match=r"dataset 'nuclei_train': annotation (id \d+|#0) of image .*train_0.png has 'segmentation'"
        r".*'nuclei_train_boxes'",
    ):
        check_point_supervision(_condinst_cfg(datasets["masks"], box_only=True))
    with pytest.raises(ValueError, match=r"dataset 'checks_nuclei_p2'.* has 'point_coords'"):
        check_point_supervision(_condinst_cfg(datasets["points"], box_only=True))
    with pytest.raises(ValueError, match="both on"):
        check_point_supervision(_condinst_cfg(datasets["points"], point_sup_on=True, box_only=True))


def test_condinst_point_and_mask_configs_on_the_wrong_data(datasets):
    with pytest.raises(ValueError, match=r"dataset 'nuclei_train'.* has no 'point_coords'.*INPUT.POINT_SUP"):
        check_point_supervision(_condinst_cfg(datasets["masks"], point_sup_on=True))
    with pytest.raises(ValueError, match=r"dataset 'nuclei_train_boxes'.* has no 'segmentation'"):
        check_point_supervision(_condinst_cfg("nuclei_train_boxes"))


def test_condinst_class_count_is_fcos_num_classes(datasets):
    cfg = _condinst_cfg(datasets["masks"])
    cfg.MODEL.FCOS.NUM_CLASSES = 80
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1
    with pytest.raises(ValueError, match="1 thing_classes but MODEL.FCOS.NUM_CLASSES is 80"):
        check_point_supervision(cfg)


def test_box_only_view_keeps_boxes_and_drops_masks_and_points(datasets):
    full = DatasetCatalog.get("nuclei_train")
    boxes = DatasetCatalog.get("nuclei_train_boxes")
    assert len(full) == len(boxes) and MetadataCatalog.get("nuclei_train_boxes").thing_classes == ["nucleus"]
    for a, b in zip(full, boxes, strict=True):
        assert len(a["annotations"]) == len(b["annotations"]) > 0
        for x, y in zip(a["annotations"], b["annotations"], strict=True):
            assert "segmentation" in x and "segmentation" not in y
            assert {k: v for k, v in x.items() if k != "segmentation"} == y
