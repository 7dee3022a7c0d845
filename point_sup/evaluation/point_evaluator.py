"""Point-level evaluation, for validation sets that have P_N point labels but no masks.

Users who label their own data with points have no masks to compute mask AP against. This
evaluator scores predicted masks at the labelled points of each ground-truth object instead:

* each ground-truth instance is matched one-to-one to a prediction of the same class whose box
  IoU with it is at least ``iou_threshold``, greedily in order of decreasing prediction score
  (the matching rule of COCO, with boxes);
* the matched prediction's mask is read at the pixel containing each labelled point; an unmatched
  instance predicts background at all its points.

Reported (all in percent):
    ``point_acc``: fraction of labelled points whose predicted label is correct (micro average).
    ``point_mIoU``: mean over instances of the IoU between the sets of points labelled object and
        predicted object (1 when both are empty).
    ``box_recall``: fraction of instances with a matched prediction.
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import Boxes, BoxMode, pairwise_iou
from detectron2.utils import comm

__all__ = ["PointSupEvaluator", "score_points"]

logger = logging.getLogger(__name__)


def score_points(
    pred_masks: np.ndarray,
    pred_boxes: np.ndarray,
    pred_scores: np.ndarray,
    pred_classes: np.ndarray,
    gt_boxes: np.ndarray,
    gt_classes: np.ndarray,
    gt_point_coords: list[np.ndarray],
    gt_point_labels: list[np.ndarray],
    iou_threshold: float = 0.5,
) -> list[tuple[int, int, float, bool]]:
    """Per ground-truth instance: (points, correct points, point IoU, matched).

    Args:
        pred_masks: (D, H, W) bool masks in image pixels.
        pred_boxes: (D, 4) XYXY; pred_scores: (D,); pred_classes: (D,) contiguous class ids.
        gt_boxes: (G, 4) XYXY; gt_classes: (G,) contiguous class ids.
        gt_point_coords: G arrays (P_g, 2) of continuous image coordinates (x, y) (pixel centres
            are at +0.5, as the point_sup loaders produce).
        gt_point_labels: G arrays (P_g,) in {0, 1}.
        iou_threshold: minimum box IoU for a match.
    """
    num_gt = len(gt_boxes)
    matched_pred = np.full(num_gt, -1, dtype=np.int64)
    if len(pred_boxes) and num_gt:
        ious = pairwise_iou(Boxes(torch.as_tensor(pred_boxes)), Boxes(torch.as_tensor(gt_boxes))).numpy()
        taken = np.zeros(num_gt, dtype=bool)
        for d in np.argsort(-pred_scores, kind="stable"):
            candidates = (~taken) & (gt_classes == pred_classes[d]) & (ious[d] >= iou_threshold)
            if candidates.any():
                g = int(np.argmax(np.where(candidates, ious[d], -1.0)))
                taken[g] = True
                matched_pred[g] = d
    results = []
    for g in range(num_gt):
        coords, labels = gt_point_coords[g], gt_point_labels[g].astype(bool)
        if matched_pred[g] >= 0:
            mask = pred_masks[matched_pred[g]]
            h, w = mask.shape
            cols = np.clip(np.floor(coords[:, 0]).astype(np.int64), 0, w - 1)
            rows = np.clip(np.floor(coords[:, 1]).astype(np.int64), 0, h - 1)
            predicted = mask[rows, cols].astype(bool)
        else:
            predicted = np.zeros(len(labels), dtype=bool)
        union = int((predicted | labels).sum())
        iou = 1.0 if union == 0 else int((predicted & labels).sum()) / union
        results.append((len(labels), int((predicted == labels).sum()), iou, bool(matched_pred[g] >= 0)))
    return results


class PointSupEvaluator(DatasetEvaluator):
    """Scores predicted masks at the labelled points of a point-annotated dataset.

    The dataset's dicts (from ``DatasetCatalog``) must carry ``point_coords`` and ``point_labels``
    per annotation, as produced by :func:`point_sup.register_coco_instances_with_points`.
    """

    def __init__(self, dataset_name: str, distributed: bool = True, iou_threshold: float = 0.5):
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._iou_threshold = iou_threshold
        self._gt = {}
        for record in DatasetCatalog.get(dataset_name):
            anns = [a for a in record.get("annotations", []) if a.get("iscrowd", 0) == 0]
            missing = [a for a in anns if "point_coords" not in a or "point_labels" not in a]
            if missing:
                raise ValueError(
                    f"PointSupEvaluator: dataset '{dataset_name}', image {record.get('image_id')}: "
                    "annotations lack 'point_coords'/'point_labels'; point-level evaluation needs P_N labels"
                )
            self._gt[record["image_id"]] = anns
        self._metadata = MetadataCatalog.get(dataset_name)
        self._results: list[tuple[int, int, float, bool]] = []

    def reset(self) -> None:
        self._results = []

    def process(self, inputs, outputs) -> None:
        for inp, out in zip(inputs, outputs, strict=True):
            anns = self._gt.get(inp["image_id"], [])
            if not anns:
                continue
            instances = out["instances"].to("cpu")
            gt_boxes = np.array(
                [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns], dtype=np.float32
            ).reshape(-1, 4)
            has_masks = instances.has("pred_masks") and len(instances) > 0
            self._results += score_points(
                instances.pred_masks.numpy().astype(bool) if has_masks else np.zeros((0, 1, 1), bool),
                instances.pred_boxes.tensor.numpy() if len(instances) else np.zeros((0, 4), np.float32),
                instances.scores.numpy() if len(instances) else np.zeros(0, np.float32),
                instances.pred_classes.numpy() if len(instances) else np.zeros(0, np.int64),
                gt_boxes,
                np.array([a["category_id"] for a in anns], dtype=np.int64),
                [np.asarray(a["point_coords"], dtype=np.float64).reshape(-1, 2) for a in anns],
                [np.asarray(a["point_labels"], dtype=np.int64).reshape(-1) for a in anns],
                self._iou_threshold,
            )

    def evaluate(self):
        results = self._results
        if self._distributed:
            comm.synchronize()
            gathered = comm.gather(results, dst=0)
            if not comm.is_main_process():
                return {}
            results = list(itertools.chain(*gathered))
        if not results:
            logger.warning(f"PointSupEvaluator: no labelled instance was evaluated on {self._dataset_name}")
            return {}
        points = sum(r[0] for r in results)
        correct = sum(r[1] for r in results)
        metrics = {
            "point_acc": 100.0 * correct / max(points, 1),
            "point_mIoU": 100.0 * float(np.mean([r[2] for r in results])),
            "box_recall": 100.0 * float(np.mean([r[3] for r in results])),
            "num_instances": len(results),
        }
        logger.info(f"Point-level evaluation on {self._dataset_name}: {metrics}")
        return OrderedDict(points=metrics)
