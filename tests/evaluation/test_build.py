"""build_evaluator: the AP it reports equals pycocotools' COCOeval run directly on the same predictions."""

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

from point_sup.data.nuclei import build_nuclei_coco
from point_sup.evaluation import PointSupEvaluator, build_evaluator


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


def test_point_only_dataset_gets_point_evaluator(tmp_path):
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
    try:
        from detectron2.config import get_cfg

        cfg = get_cfg()
        cfg.OUTPUT_DIR = str(tmp_path)
        evaluator = build_evaluator(cfg, name)
        assert isinstance(evaluator, DatasetEvaluators)
        kinds = [type(e) for e in evaluator._evaluators]
        assert kinds == [COCOEvaluator, PointSupEvaluator]
        assert evaluator._evaluators[0]._tasks == ("bbox",)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
