"""build_evaluator: the AP it reports equals pycocotools' COCOeval run directly on the same predictions;
which COCOeval it uses (Detectron2's C++, faster-coco-eval's, pycocotools'), and POINT_SUP_COCO_EVAL."""

import contextlib
import io

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators
from detectron2.structures import Boxes, Instances
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from point_sup import compat
from point_sup.data.nuclei import build_nuclei_coco
from point_sup.evaluation import (
    COCO_EVAL_ENV,
    FasterCOCOEvaluator,
    FasterLVISEvaluator,
    PointSupEvaluator,
    build_evaluator,
    coco_eval_implementation,
    fast_coco,
)


@pytest.fixture(autouse=True)
def _no_forced_coco_eval(monkeypatch):
    """The default choice in every test here, whatever the environment that runs them sets."""
    monkeypatch.delenv(COCO_EVAL_ENV, raising=False)


@pytest.fixture(scope="module")
def nuclei_val(tmp_path_factory):
    root = tmp_path_factory.mktemp("nuclei")
    paths = build_nuclei_coco(root)
    name = "test_eval_nuclei_val"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, str(paths["val"]), str(paths["image_root"]))
    yield name, paths["val"]
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _fake_predictions(coco: COCO, rng: np.random.Generator):
    """Imperfect predictions of real masks: shifted/dilated GT masks, some misses, false positives."""
    per_image = {}
    for img_id in coco.getImgIds():
        info = coco.loadImgs(img_id)[0]
        h, w = info["height"], info["width"]
        masks, scores = [], []
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id)):
            if rng.random() < 0.15:
                continue  # a missed object
            m = coco.annToMask(ann).astype(bool)
            m = np.roll(m, shift=(int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1))
            if rng.random() < 0.5:
                m = m | np.roll(m, 1, axis=1)
            masks.append(m)
            scores.append(float(rng.uniform(0.05, 1.0)))
        for _ in range(3):  # false positives
            m = np.zeros((h, w), bool)
            y, x = int(rng.integers(0, h - 10)), int(rng.integers(0, w - 10))
            m[y : y + 8, x : x + 8] = True
            masks.append(m)
            scores.append(float(rng.uniform(0.05, 1.0)))
        per_image[img_id] = (np.stack(masks), np.array(scores, np.float32))
    return per_image


def test_mask_ap_equals_pycocotools(nuclei_val, tmp_path):
    name, json_path = nuclei_val
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    evaluator = build_evaluator(cfg, name)
    assert isinstance(evaluator, COCOEvaluator)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(json_path))
    preds = _fake_predictions(gt, np.random.default_rng(0))

    evaluator.reset()
    results = []
    for img_id, (masks, scores) in preds.items():
        h, w = masks.shape[1:]
        inst = Instances((h, w))
        boxes = []
        for m in masks:
            ys, xs = np.nonzero(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.scores = torch.from_numpy(scores)
        inst.pred_classes = torch.zeros(len(scores), dtype=torch.int64)
        inst.pred_masks = torch.from_numpy(masks)
        evaluator.process([{"image_id": img_id}], [{"instances": inst}])
        for m, s in zip(masks, scores, strict=True):
            rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            results.append({"image_id": img_id, "category_id": 1, "segmentation": rle, "score": float(s)})
    ours = evaluator.evaluate()["segm"]["AP"]

    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = COCOeval(gt, gt.loadRes(results), "segm")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    direct = 100.0 * coco_eval.stats[0]
    assert 5.0 < direct < 95.0  # a non-trivial AP, so the comparison means something
    assert ours == pytest.approx(direct, abs=1e-9)


@pytest.fixture
def points_only_dataset():
    name = "test_eval_points_only"
    records = [
        {
            "file_name": "x.png",
            "image_id": 1,
            "height": 10,
            "width": 10,
            "annotations": [
                {"bbox": [1, 1, 5, 5], "bbox_mode": 1, "category_id": 0, "iscrowd": 0,
                 "point_coords": [[2.5, 2.5]], "point_labels": [1]}
            ],
        }
    ]  # fmt: skip
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(thing_classes=["a"], evaluator_type="coco")
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _cfg(tmp_path):
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    return cfg


def test_point_only_dataset_gets_point_evaluator(points_only_dataset, tmp_path):
    evaluator = build_evaluator(_cfg(tmp_path), points_only_dataset)
    assert isinstance(evaluator, DatasetEvaluators)
    box_evaluator, point_evaluator = evaluator._evaluators
    assert isinstance(box_evaluator, COCOEvaluator) and type(point_evaluator) is PointSupEvaluator
    assert box_evaluator._tasks == ("bbox",)


@pytest.mark.parametrize("implementation", ["faster", "pycocotools"])
@pytest.mark.parametrize("meta_architecture", ["GeneralizedRCNN", "PointSupCondInst"])
def test_mask_model_without_detections_reports_nan_mask_metrics(
    monkeypatch, nuclei_val, tmp_path, implementation, meta_architecture, no_detections
):
    """A mask model that detects nothing (here: empty Instances on every image) still gets a segm
    row, of NaNs: inferred from its (empty) predictions, the tasks would be bbox only."""
    if implementation == "faster" and not fast_coco.faster_coco_eval_available():
        pytest.skip("faster_coco_eval is not installed")
    monkeypatch.setenv(COCO_EVAL_ENV, implementation)
    name, json_path = nuclei_val
    cfg = _cfg(tmp_path)
    cfg.MODEL.META_ARCHITECTURE = meta_architecture
    cfg.MODEL.MASK_ON = meta_architecture == "GeneralizedRCNN"
    evaluator = build_evaluator(cfg, name)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(json_path))
    evaluator.reset()
    for img_id in gt.getImgIds():
        info = gt.loadImgs(img_id)[0]
        empty = no_detections(info["height"], info["width"])
        evaluator.process([{"image_id": img_id}], [{"instances": empty}])
    results = evaluator.evaluate()
    assert set(results) == {"bbox", "segm"}
    assert np.isnan(results["segm"]["AP"]) and np.isnan(results["bbox"]["AP50"])

    cfg.MODEL.MASK_ON = False
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    assert build_evaluator(cfg, name)._tasks is None  # a box model: inferred, as Detectron2 does


# ----------------------------------------------------------------------------------------------
# Which COCOeval: POINT_SUP_COCO_EVAL=auto|faster|pycocotools|detectron2


def _pretend(monkeypatch, *, detectron2_ext: bool, faster: bool) -> None:
    """Whether Detectron2's C++ COCOeval and faster_coco_eval are usable, as build.py asks it."""
    monkeypatch.setattr(compat, "coco_eval_fast_impl_available", lambda: detectron2_ext)
    monkeypatch.setattr(fast_coco, "faster_coco_eval_available", lambda: faster)


@pytest.mark.parametrize(
    "detectron2_ext, faster, expected",
    [
        (True, True, "detectron2"),
        (True, False, "detectron2"),
        (False, True, "faster"),
        (False, False, "pycocotools"),
    ],
)
def test_auto_choice(monkeypatch, detectron2_ext, faster, expected):
    _pretend(monkeypatch, detectron2_ext=detectron2_ext, faster=faster)
    assert coco_eval_implementation() == expected
    monkeypatch.setenv(COCO_EVAL_ENV, "auto")
    assert coco_eval_implementation() == expected
    assert coco_eval_implementation("lvis") == "lvis"  # the official API unless forced


def test_auto_without_the_extension_builds_faster_evaluator(nuclei_val, points_only_dataset, tmp_path):
    if compat.coco_eval_fast_impl_available() or not fast_coco.faster_coco_eval_available():
        pytest.skip("needs a detectron2 without its C++ extension and faster_coco_eval installed")
    assert type(build_evaluator(_cfg(tmp_path), nuclei_val[0])) is FasterCOCOEvaluator
    box_evaluator, _ = build_evaluator(_cfg(tmp_path), points_only_dataset)._evaluators
    assert type(box_evaluator) is FasterCOCOEvaluator and box_evaluator._tasks == ("bbox",)


def test_without_faster_coco_eval_falls_back_to_pycocotools(monkeypatch, nuclei_val, tmp_path):
    _pretend(monkeypatch, detectron2_ext=False, faster=False)
    evaluator = build_evaluator(_cfg(tmp_path), nuclei_val[0])
    assert type(evaluator) is COCOEvaluator and not evaluator._use_fast_impl


def test_with_the_extension_detectron2s_own(monkeypatch, nuclei_val, tmp_path):
    _pretend(monkeypatch, detectron2_ext=True, faster=True)
    # COCOEvaluator(use_fast_impl=True) itself falls back where the extension is really missing.
    assert type(build_evaluator(_cfg(tmp_path), nuclei_val[0])) is COCOEvaluator


@pytest.mark.parametrize("value", ["faster", "FASTER", " faster "])
def test_forced_faster(monkeypatch, nuclei_val, tmp_path, value):
    _pretend(monkeypatch, detectron2_ext=True, faster=True)
    monkeypatch.setenv(COCO_EVAL_ENV, value)
    assert coco_eval_implementation() == "faster" and coco_eval_implementation("lvis") == "faster"
    # (Building it imports no faster_coco_eval yet: evaluating does.)
    assert type(build_evaluator(_cfg(tmp_path), nuclei_val[0])) is FasterCOCOEvaluator


def test_forced_pycocotools(monkeypatch, nuclei_val, tmp_path):
    _pretend(monkeypatch, detectron2_ext=True, faster=True)
    monkeypatch.setenv(COCO_EVAL_ENV, "pycocotools")
    evaluator = build_evaluator(_cfg(tmp_path), nuclei_val[0])
    assert type(evaluator) is COCOEvaluator and not evaluator._use_fast_impl
    assert coco_eval_implementation("lvis") == "lvis"


def test_forced_detectron2(monkeypatch):
    monkeypatch.setenv(COCO_EVAL_ENV, "detectron2")
    _pretend(monkeypatch, detectron2_ext=True, faster=True)
    assert coco_eval_implementation() == "detectron2"
    assert coco_eval_implementation("lvis") == "lvis"  # Detectron2's LVISEvaluator: the lvis API
    _pretend(monkeypatch, detectron2_ext=False, faster=True)
    with pytest.raises(RuntimeError, match="C\\+\\+ COCOeval is not built"):
        coco_eval_implementation()


def test_forced_faster_without_the_package(monkeypatch):
    _pretend(monkeypatch, detectron2_ext=False, faster=False)
    monkeypatch.setenv(COCO_EVAL_ENV, "faster")
    for evaluator_type in ("coco", "lvis"):
        with pytest.raises(ImportError, match="pip install faster-coco-eval"):
            coco_eval_implementation(evaluator_type)


@pytest.mark.parametrize("value", ["fast", "1", "lvis"])
def test_bad_value_is_an_error(monkeypatch, nuclei_val, tmp_path, value):
    monkeypatch.setenv(COCO_EVAL_ENV, value)
    with pytest.raises(ValueError, match=f"POINT_SUP_COCO_EVAL='{value}' is not one of auto, faster"):
        build_evaluator(_cfg(tmp_path), nuclei_val[0])


def test_lvis_forced_faster_builds_faster_lvis_evaluator(monkeypatch, tmp_path):
    pytest.importorskip("lvis")
    import json

    path = tmp_path / "lvis.json"
    path.write_text(json.dumps({
        "images": [{"id": 1, "height": 4, "width": 4,
                    "neg_category_ids": [], "not_exhaustive_category_ids": []}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2], "area": 4.0,
                         "segmentation": [[0, 0, 0, 2, 2, 2, 2, 0]]}],
        "categories": [{"id": 1, "name": "a", "frequency": "f"}],
    }))  # fmt: skip
    name = "test_eval_lvis_forced"
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(json_file=str(path), evaluator_type="lvis", thing_classes=["a"])
    try:
        _pretend(monkeypatch, detectron2_ext=False, faster=True)
        monkeypatch.setenv(COCO_EVAL_ENV, "faster")
        assert type(build_evaluator(_cfg(tmp_path), name)) is FasterLVISEvaluator
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
