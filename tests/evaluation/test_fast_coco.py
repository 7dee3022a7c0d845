"""faster-coco-eval's COCOeval, through point_sup's evaluators, gives pycocotools' (and lvis's) numbers.

Every summary statistic is compared with the official implementation run directly on the same
inputs, to 1e-6. The only difference there is, by construction, is float rounding in the
precision: pycocotools computes ``tp / (tp + fp + eps)`` with ``eps = np.spacing(1)``, the C++ code
``tp / (tp + fp)``, so precisions differ by at most a couple of 1e-16 and never decide a match.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.data.datasets import register_coco_instances
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, inference_on_dataset
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from point_sup.engine.experiment import load_config
from point_sup.evaluation import FasterCOCOEvaluator, FasterLVISEvaluator
from point_sup.evaluation.fast_coco import run_faster_cocoeval

faster_coco_eval = pytest.importorskip("faster_coco_eval")

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-6
PRECISION_ROUNDING = 1e-15  # see the module docstring: eps in pycocotools' precision only
STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


# ----------------------------------------------------------------------------------------------
# A synthetic COCO-format set that exercises COCOeval's rules


def _polygon(rng: np.random.Generator, cx: float, cy: float, r: float, h: int, w: int) -> list[float]:
    """A star-shaped 12-gon around (cx, cy) of radius up to ``r``, clipped to the image."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, 12))
    radii = r * rng.uniform(0.6, 1.0, 12)
    xy = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
    return np.clip(xy, 0, [w - 1, h - 1]).ravel().tolist()


def _uncompressed_rle(rle: dict) -> dict:
    """The same mask as COCO stores crowd regions: counts as a list of run lengths."""
    flat = mask_util.decode(rle).ravel(order="F")
    changes = np.flatnonzero(np.diff(np.r_[0, flat, 1 - flat[-1]]))
    return {"size": list(rle["size"]), "counts": np.diff(np.r_[0, changes]).tolist()}


def synthetic_coco(
    num_images: int = 80, num_categories: int = 6, max_dets: int = 100, seed: int = 0
) -> tuple[dict, list[dict]]:
    """A COCO ground truth and COCO-format results (``bbox`` and compressed-RLE ``segmentation``).

    Non-contiguous category ids; the last category has detections but no ground truth; polygons
    and a few uncompressed-RLE crowd regions; objects from 2 px to half the image (all three area
    ranges); about 10 % images without objects and 10 % without detections; up to ``max_dets``
    detections per image, most near an object (some with the wrong class), the rest anywhere;
    scores rounded to 1e-3, so that ties between detections are common.
    """
    rng = np.random.default_rng(seed)
    categories = [{"id": 3 * k + 2, "name": f"class{k}"} for k in range(num_categories)]
    gt_categories = [c["id"] for c in categories[:-1]]
    all_categories = [c["id"] for c in categories]
    images, annotations, results = [], [], []
    for i in range(num_images):
        h, w = int(rng.integers(60, 400)), int(rng.integers(60, 400))
        image_id = 100 + 7 * i
        images.append({"id": image_id, "height": h, "width": w, "file_name": f"{i}.png"})
        objects = []
        for _ in range(0 if rng.random() < 0.1 else int(rng.integers(1, 25))):
            r = float(rng.uniform(2, min(h, w) / 2.5))
            poly = _polygon(rng, rng.uniform(0, w), rng.uniform(0, h), r, h, w)
            rle = mask_util.merge(mask_util.frPyObjects([poly], h, w))
            area = float(mask_util.area(rle))
            if area < 1:
                continue
            crowd = bool(rng.random() < 0.05)
            category = int(rng.choice(gt_categories))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "segmentation": _uncompressed_rle(rle) if crowd else [poly],
                    "area": area,
                    "bbox": mask_util.toBbox(rle).tolist(),
                    "iscrowd": int(crowd),
                }
            )
            objects.append((poly, category))
        if rng.random() < 0.1:
            continue  # an image without detections
        for _ in range(int(rng.integers(0, max_dets + 1))):
            if objects and rng.random() < 0.7:
                poly, category = objects[int(rng.integers(len(objects)))]
                xy = np.array(poly).reshape(-1, 2)
                xy = xy + rng.normal(0, 1.0, xy.shape) + rng.normal(0, 1.5, 2)
                if rng.random() < 0.15:
                    category = int(rng.choice(all_categories))
                poly = np.clip(xy, 0, [w - 1, h - 1]).ravel().tolist()
            else:
                r = float(rng.uniform(2, min(h, w) / 3))
                poly = _polygon(rng, rng.uniform(0, w), rng.uniform(0, h), r, h, w)
                category = int(rng.choice(all_categories))
            rle = mask_util.merge(mask_util.frPyObjects([poly], h, w))
            if mask_util.area(rle) < 1:
                continue
            results.append(
                {
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": mask_util.toBbox(rle).tolist(),
                    "score": round(float(rng.uniform(0.01, 1.0)), 3),
                    "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")},
                }
            )
    return {"images": images, "annotations": annotations, "categories": categories}, results


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """The synthetic set, its ground truth as a file, and pycocotools' COCO of it."""
    gt, results = synthetic_coco()
    path = tmp_path_factory.mktemp("synthetic_coco") / "instances.json"
    path.write_text(json.dumps(gt))
    return gt, results, path


def _pycocotools_eval(gt: dict, results: list[dict], iou_type: str, max_dets=(1, 10, 100)) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), iou_type)
        coco_eval.params.maxDets = list(max_dets)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


def _mask_only(results: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "bbox"} for r in results]


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_all_twelve_stats_equal_pycocotools(synthetic, iou_type):
    gt, results, path = synthetic
    # For masks, run_faster_cocoeval drops the boxes itself (mask area for small/medium/large, as
    # Detectron2's evaluators do); pycocotools gets them dropped.
    official = _pycocotools_eval(gt, _mask_only(results) if iou_type == "segm" else results, iou_type)
    ours = run_faster_cocoeval(faster_coco_eval.COCO(str(path)), results, iou_type)

    assert len(ours.stats) == 12
    for name, a, b in zip(STAT_NAMES, official.stats, ours.stats, strict=True):
        assert abs(a - b) <= TOL, f"{iou_type} {name}: pycocotools {a}, faster-coco-eval {b}"
    assert 0.1 < official.stats[0] < 0.9 and official.stats[3] > 0 and official.stats[5] > 0  # non-trivial
    # Stronger than the summary: the same matches (recall exactly), precision up to the eps rounding.
    np.testing.assert_array_equal(ours.eval["recall"], official.eval["recall"])
    assert np.abs(ours.eval["precision"] - official.eval["precision"]).max() <= PRECISION_ROUNDING
    assert (ours.eval["precision"] == -1).sum() == (official.eval["precision"] == -1).sum() > 0


# ----------------------------------------------------------------------------------------------
# The evaluators: full results dicts, Detectron2's COCOEvaluator vs FasterCOCOEvaluator


def _instances(gt: dict, results: list[dict], contiguous: dict[int, int]) -> tuple[list, list]:
    """Model inputs/outputs that Detectron2's ``instances_to_coco_json`` turns back into ``results``."""
    per_image = defaultdict(list)
    for r in results:
        per_image[r["image_id"]].append(r)
    inputs, outputs = [], []
    for image in gt["images"]:
        dets = per_image[image["id"]]
        inst = Instances((image["height"], image["width"]))
        boxes = [[x, y, x + bw, y + bh] for x, y, bw, bh in (d["bbox"] for d in dets)]
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.scores = torch.tensor([d["score"] for d in dets], dtype=torch.float32)
        inst.pred_classes = torch.tensor([contiguous[d["category_id"]] for d in dets], dtype=torch.int64)
        masks = [mask_util.decode(d["segmentation"]).astype(bool) for d in dets]
        inst.pred_masks = torch.from_numpy(
            np.stack(masks) if masks else np.zeros((0, image["height"], image["width"]), bool)
        )
        inputs.append({"image_id": image["id"]})
        outputs.append({"instances": inst})
    return inputs, outputs


def _evaluate(evaluator: DatasetEvaluator, inputs: list, outputs: list, **kwargs) -> dict:
    evaluator.reset()
    for i, o in zip(inputs, outputs, strict=True):
        evaluator.process([i], [o])
    with contextlib.redirect_stdout(io.StringIO()):
        return evaluator.evaluate(**kwargs)


def assert_same_results(expected: dict, actual: dict) -> None:
    """Same tasks and keys; each value equal to TOL, or NaN in both."""
    assert list(actual) == list(expected)
    for task in expected:
        assert list(actual[task]) == list(expected[task]), task
        for key, a in expected[task].items():
            b = actual[task][key]
            if math.isnan(a):
                assert math.isnan(b), f"{task} {key}: {a} vs {b}"
            else:
                assert abs(a - b) <= TOL, f"{task} {key}: Detectron2 {a}, faster {b}"


@pytest.fixture(scope="module")
def synthetic_dataset(synthetic):
    gt, _, path = synthetic
    name = "test_fast_coco_synthetic"
    register_coco_instances(name, {}, str(path), str(path.parent))
    MetadataCatalog.get(name).thing_classes = [c["name"] for c in gt["categories"]]
    MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id = {
        c["id"]: i for i, c in enumerate(gt["categories"])
    }
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


@pytest.mark.parametrize(
    "max_dets, subset", [(None, False), (20, True)], ids=["defaults", "max_dets_20_img_ids"]
)
def test_evaluator_results_equal_detectron2s(synthetic, synthetic_dataset, tmp_path, max_dets, subset):
    gt, results, _ = synthetic
    id_map = MetadataCatalog.get(synthetic_dataset).thing_dataset_id_to_contiguous_id
    inputs, outputs = _instances(gt, results, id_map)
    kwargs = {"img_ids": [im["id"] for im in gt["images"][::3]]} if subset else {}

    reference = COCOEvaluator(
        synthetic_dataset, output_dir=str(tmp_path / "d2"), max_dets_per_image=max_dets, use_fast_impl=False
    )
    expected = _evaluate(reference, inputs, outputs, **kwargs)
    faster = FasterCOCOEvaluator(
        synthetic_dataset, output_dir=str(tmp_path / "faster"), max_dets_per_image=max_dets
    )
    actual = _evaluate(faster, inputs, outputs, **kwargs)

    assert_same_results(expected, actual)
    assert {f"AP-{c['name']}" for c in gt["categories"]} <= set(actual["segm"])
    assert math.isnan(actual["segm"]["AP-" + gt["categories"][-1]["name"]])  # no ground truth
    assert 10 < actual["segm"]["AP"] < 90
    # The same results file, in the dataset's category ids.
    written = json.loads((tmp_path / "faster" / "coco_instances_results.json").read_text())
    assert written == json.loads((tmp_path / "d2" / "coco_instances_results.json").read_text())
    # Unlike Detectron2's, a second evaluate() of the same predictions gives the same numbers
    # (the category ids are mapped on copies, not in the collected predictions).
    with contextlib.redirect_stdout(io.StringIO()):
        assert_same_results(expected, faster.evaluate(**kwargs))


def test_no_detections_gives_detectron2s_nan(synthetic_dataset, tmp_path, no_detections):
    image = DatasetCatalog.get(synthetic_dataset)[0]
    empty = no_detections(image["height"], image["width"])
    args = ([{"image_id": image["image_id"]}], [{"instances": empty}])
    expected = _evaluate(COCOEvaluator(synthetic_dataset, tasks=("bbox", "segm"), use_fast_impl=False), *args)
    actual = _evaluate(FasterCOCOEvaluator(synthetic_dataset, tasks=("bbox", "segm")), *args)
    assert_same_results(expected, actual)
    assert all(math.isnan(v) for v in actual["segm"].values())


def test_keypoint_predictions_are_left_to_detectron2(synthetic_dataset, monkeypatch):
    calls = []
    monkeypatch.setattr(COCOEvaluator, "_eval_predictions", lambda self, p, img_ids=None: calls.append(p))
    evaluator = FasterCOCOEvaluator(synthetic_dataset)
    keypoint_result = {"image_id": 100, "category_id": 0, "bbox": [0, 0, 4, 4], "score": 0.5,
                       "keypoints": [1.0, 1.0, 2.0] * 17}  # fmt: skip
    predictions = [{"image_id": 100, "instances": [keypoint_result]}]
    evaluator._eval_predictions(predictions)
    assert calls == [predictions]


# ----------------------------------------------------------------------------------------------
# Real model outputs: Mask R-CNN (nuclei miniature) on the nuclei validation tiles


class _Both(DatasetEvaluator):
    """Feeds the same model outputs to two evaluators (``DatasetEvaluators`` refuses equal keys)."""

    def __init__(self, **evaluators: DatasetEvaluator):
        self.evaluators = evaluators

    def reset(self):
        for e in self.evaluators.values():
            e.reset()

    def process(self, inputs, outputs):
        for e in self.evaluators.values():
            e.process(inputs, outputs)

    def evaluate(self):
        with contextlib.redirect_stdout(io.StringIO()):
            return {name: e.evaluate() for name, e in self.evaluators.items()}


def test_real_mask_rcnn_predictions(nuclei_datasets, tiny_overrides, tmp_path):
    """Untrained (seeded) weights: real boxes, scores and pasted masks of the network, 100 per tile.

    Training to a useful AP takes minutes on CPU, too long here, so the AP is tiny (a few boxes on
    nuclei, masks still noise): this checks Detectron2's real output path (float32 boxes, softmax
    scores, pasted masks) end to end; the synthetic sets above check the numbers at a useful AP."""
    cfg = load_config(
        str(ROOT / "configs/nuclei/mask_rcnn_R_18_FPN_M.yaml"),
        [*tiny_overrides, "OUTPUT_DIR", str(tmp_path), "TEST.DETECTIONS_PER_IMAGE", 100,
         "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, "MODEL.RPN.POST_NMS_TOPK_TEST", 200],
    )  # fmt: skip
    cfg.freeze()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    name = "nuclei_val"
    both = _Both(
        detectron2=COCOEvaluator(name, output_dir=str(tmp_path / "d2"), use_fast_impl=False),
        faster=FasterCOCOEvaluator(name, output_dir=str(tmp_path / "faster")),
    )
    results = inference_on_dataset(model, build_detection_test_loader(cfg, name), both)

    assert_same_results(results["detectron2"], results["faster"])
    assert set(results["faster"]) == {"bbox", "segm"}
    assert results["faster"]["bbox"]["AP50"] > 0  # some detections matched


# ----------------------------------------------------------------------------------------------
# LVIS: faster-coco-eval's lvis_style vs the official lvis API


def synthetic_lvis(seed: int = 1) -> tuple[dict, list[dict]]:
    """The synthetic COCO set in LVIS v1's format: categories 1..K with frequency groups r/c/f,
    no crowd, and per image ``neg_category_ids`` (some absent categories) and
    ``not_exhaustive_category_ids`` (some present ones); up to 120 detections per image."""
    gt, results = synthetic_coco(num_images=50, num_categories=7, max_dets=120, seed=seed)
    rng = np.random.default_rng(seed)
    new_id = {c["id"]: k + 1 for k, c in enumerate(gt["categories"])}
    for k, c in enumerate(gt["categories"]):
        c["id"] = new_id[c["id"]]
        c["frequency"] = "rcf"[k % 3]
    gt["annotations"] = [a for a in gt["annotations"] if not a.pop("iscrowd")]
    present = defaultdict(set)
    for a in gt["annotations"]:
        a["category_id"] = new_id[a["category_id"]]
        present[a["image_id"]].add(a["category_id"])
    for r in results:
        r["category_id"] = new_id[r["category_id"]]
    for image in gt["images"]:
        absent = [c for c in new_id.values() if c not in present[image["id"]]]
        image["neg_category_ids"] = [c for c in absent if rng.random() < 0.4]
        image["not_exhaustive_category_ids"] = sorted(c for c in present[image["id"]] if rng.random() < 0.3)
    return gt, results


@pytest.fixture(scope="module")
def lvis_synthetic(tmp_path_factory):
    pytest.importorskip("lvis")
    gt, results = synthetic_lvis()
    path = tmp_path_factory.mktemp("synthetic_lvis") / "lvis.json"
    path.write_text(json.dumps(gt))
    return gt, results, path


def _official_lvis(path, results: list[dict], iou_type: str, max_dets: int):
    import lvis.eval
    from lvis import LVIS, LVISEval, LVISResults

    from point_sup.evaluation.numpy_compat import numpy_with_old_names

    logging.getLogger("lvis").setLevel(logging.ERROR)
    lvis_gt = LVIS(str(path))
    lvis_dt = LVISResults(lvis_gt, copy.deepcopy(results), max_dets=max_dets)
    lvis_eval = LVISEval(lvis_gt, lvis_dt, iou_type)
    with numpy_with_old_names(lvis.eval, "float"):
        lvis_eval.run()
    return lvis_eval, lvis_dt


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("max_dets", [300, 20])
def test_lvis_style_equals_lvis_api(lvis_synthetic, iou_type, max_dets):
    """All 13 LVIS statistics (AP, AP50, AP75, APs/m/l, APr/c/f, AR and ARs/m/l at 300), once the
    detections are limited per image as ``LVISResults`` does (here: taken from it)."""
    _, results, path = lvis_synthetic
    if iou_type == "segm":
        results = _mask_only(results)
    official, lvis_dt = _official_lvis(path, results, iou_type, max_dets)
    given = set(results[0])  # without what LVISResults adds (id, area, a bbox for masks)
    capped = [{k: v for k, v in a.items() if k in given} for a in lvis_dt.dataset["annotations"]]
    if max_dets == 20:
        assert len(capped) < len(results)  # the limit is exercised
    ours = run_faster_cocoeval(
        faster_coco_eval.COCO(str(path)), capped, iou_type, max_dets=(max_dets,), lvis_style=True
    ).stats_as_dict
    names = {"AP": "AP_all", "AP50": "AP_50", "AP75": "AP_75", "APs": "AP_small", "APm": "AP_medium",
             "APl": "AP_large", "APr": "APr", "APc": "APc", "APf": "APf", "AR@300": "AR_all",
             "ARs@300": "AR_small", "ARm@300": "AR_medium", "ARl@300": "AR_large"}  # fmt: skip
    expected = official.get_results()
    assert set(expected) == set(names)
    for key, theirs in expected.items():
        assert abs(theirs - ours[names[key]]) <= TOL, (
            f"{iou_type} {key}: lvis {theirs}, ours {ours[names[key]]}"
        )
    assert 0.05 < expected["AP"] < 0.95 and min(expected["APr"], expected["APc"], expected["APf"]) > 0


@pytest.fixture(scope="module")
def lvis_dataset(lvis_synthetic):
    gt, _, path = lvis_synthetic
    name = "test_fast_coco_synthetic_lvis"
    DatasetCatalog.register(name, lambda: [])  # the evaluators read the json file only
    MetadataCatalog.get(name).set(
        json_file=str(path), evaluator_type="lvis", thing_classes=[c["name"] for c in gt["categories"]]
    )
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


@pytest.mark.parametrize("max_dets", [None, 20])
def test_lvis_evaluator_results_equal_point_sups(lvis_synthetic, lvis_dataset, tmp_path, max_dets):
    from point_sup.evaluation.lvis import LVISEvaluator

    gt, results, _ = lvis_synthetic
    inputs, outputs = _instances(gt, results, {c["id"]: c["id"] - 1 for c in gt["categories"]})
    logging.getLogger("lvis").setLevel(logging.ERROR)
    expected = _evaluate(
        LVISEvaluator(lvis_dataset, output_dir=str(tmp_path / "lvis"), max_dets_per_image=max_dets),
        inputs,
        outputs,
    )
    actual = _evaluate(
        FasterLVISEvaluator(lvis_dataset, output_dir=str(tmp_path / "faster"), max_dets_per_image=max_dets),
        inputs,
        outputs,
    )
    assert_same_results(expected, actual)
    assert 5 < actual["segm"]["AP"] < 95
    written = json.loads((tmp_path / "faster" / "lvis_instances_results.json").read_text())
    assert written == json.loads((tmp_path / "lvis" / "lvis_instances_results.json").read_text())
