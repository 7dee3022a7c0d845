"""PointSupEvaluator / score_points: matching and point metrics on hand-computed cases."""

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances

from point_sup.evaluation import PointSupEvaluator, score_points


def _square_mask(h, w, x0, y0, x1, y1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_score_points_matching_and_metrics():
    h = w = 20
    pred_masks = np.stack([_square_mask(h, w, 2, 2, 8, 8), _square_mask(h, w, 10, 10, 18, 18)])
    pred_boxes = np.array([[2, 2, 8, 8], [10, 10, 18, 18]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    pred_classes = np.array([0, 1])
    gt_boxes = np.array([[2, 2, 8, 8], [10, 10, 18, 18], [0, 12, 6, 18]], np.float32)
    gt_classes = np.array([0, 0, 0])  # the second GT has the wrong class for prediction 1
    coords = [
        np.array([[3.5, 3.5], [7.5, 7.5], [8.5, 8.5], [1.5, 1.5]]),  # in, in, out, out of pred 0
        np.array([[12.5, 12.5], [19.5, 19.5]]),
        np.array([[1.5, 14.5]]),
    ]
    labels = [np.array([1, 0, 0, 0]), np.array([1, 0]), np.array([0])]
    res = score_points(pred_masks, pred_boxes, scores, pred_classes, gt_boxes, gt_classes, coords, labels)
    # GT 0 matched to pred 0: predicted (1, 1, 0, 0) vs (1, 0, 0, 0) -> 3 correct, IoU 1/2.
    assert res[0] == (4, 3, 0.5, True)
    # GT 1: prediction 1 has another class -> unmatched, all background: 1 correct of 2, IoU 0.
    assert res[1] == (2, 1, 0.0, False)
    # GT 2: unmatched, its only point is background: correct, IoU of two empty sets = 1.
    assert res[2] == (1, 1, 1.0, False)


def test_one_prediction_matches_one_gt_only():
    m = _square_mask(10, 10, 0, 0, 10, 10)
    res = score_points(
        m[None], np.array([[0, 0, 10, 10]], np.float32), np.array([1.0]), np.array([0]),
        np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32), np.array([0, 0]),
        [np.array([[5.5, 5.5]]), np.array([[5.5, 5.5]])], [np.array([1]), np.array([1])],
    )  # fmt: skip
    assert [r[3] for r in res] == [True, False]


def test_evaluator_end_to_end():
    name = "test_point_evaluator_ds"
    records = [
        {
            "file_name": "a.png", "image_id": 7, "height": 20, "width": 20,
            "annotations": [{"bbox": [2, 2, 6, 6], "bbox_mode": 1, "category_id": 0, "iscrowd": 0,
                             "point_coords": [[3.5, 3.5], [9.5, 9.5]], "point_labels": [1, 0]}],
        }
    ]  # fmt: skip
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(thing_classes=["a"])
    try:
        ev = PointSupEvaluator(name, distributed=False)
        ev.reset()
        inst = Instances((20, 20))
        inst.pred_boxes = Boxes(torch.tensor([[2.0, 2.0, 8.0, 8.0]]))
        inst.scores = torch.tensor([0.7])
        inst.pred_classes = torch.tensor([0])
        inst.pred_masks = torch.from_numpy(_square_mask(20, 20, 2, 2, 12, 12))[None]
        ev.process([{"image_id": 7}], [{"instances": inst}])
        metrics = ev.evaluate()["points"]
        assert metrics["point_acc"] == pytest.approx(50.0)  # (3.5,3.5) right, (9.5,9.5) wrong
        assert metrics["point_mIoU"] == pytest.approx(50.0)
        assert metrics["box_recall"] == pytest.approx(100.0)
        # No detections at all: every point predicted background.
        ev.reset()
        empty = Instances((20, 20))
        empty.pred_boxes = Boxes(torch.zeros((0, 4)))
        empty.scores = torch.zeros(0)
        empty.pred_classes = torch.zeros(0, dtype=torch.int64)
        ev.process([{"image_id": 7}], [{"instances": empty}])
        metrics = ev.evaluate()["points"]
        assert metrics["point_acc"] == pytest.approx(50.0)
        assert metrics["box_recall"] == 0.0
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_dataset_without_points_is_rejected():
    name = "test_point_evaluator_nopoints"
    DatasetCatalog.register(
        name, lambda: [{"file_name": "a", "image_id": 3, "height": 5, "width": 5,
                        "annotations": [{"bbox": [0, 0, 1, 1], "bbox_mode": 1, "category_id": 0}]}]
    )  # fmt: skip
    try:
        with pytest.raises(ValueError, match="test_point_evaluator_nopoints.*image 3.*point_coords"):
            PointSupEvaluator(name)
    finally:
        DatasetCatalog.remove(name)
