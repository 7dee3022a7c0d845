#!/usr/bin/env python
"""COCO box and mask AP: faster-coco-eval's C++ COCOeval against pycocotools' on a COCO-val-sized set.

    python bench/bench_evaluation.py                          # 5,000 images x 100 detections, 80 classes
    python bench/bench_evaluation.py --images 200 --dets 20   # smoke test (seconds)

Where Detectron2 has no C++ extension (the offline wheel), its ``COCOEvaluator`` evaluates with
pycocotools' pure-Python COCOeval; point_sup's ``build_evaluator`` then picks
:class:`point_sup.evaluation.FasterCOCOEvaluator` (faster-coco-eval's C++ COCOeval) when installed.
This builds a synthetic COCO-val-like set (COCO image sizes, about 7 objects per image with COCO's
small/medium/large mix as polygons, 1 % crowd regions as uncompressed RLE, 80 classes with COCO's
non-contiguous ids; per image ``--dets`` detections as compressed RLE masks with boxes: jittered
copies of the objects, some with a wrong class, and false positives), writes the ground truth
and the results as JSON files, then times in the same run, on the same files:

* the COCOeval itself, per task (segm, bbox): ``evaluate() + accumulate() + summarize()`` of
  pycocotools' ``COCOeval`` (the baseline) and of ``faster_coco_eval.COCOeval_faster``; loading the
  ground truth and ``loadRes`` of the results are timed apart;
* the whole evaluator call as a user experiences it at the end of a test run:
  ``COCOEvaluator(use_fast_impl=False).evaluate()`` against ``FasterCOCOEvaluator.evaluate()``,
  both tasks, from the same collected predictions (what ``process()`` collects is set directly:
  producing it from model outputs is the same code in both evaluators and is not timed).

The 12 summary statistics of each task (and, for the evaluators, every entry of the results dict,
per-category AP included) must agree to 1e-6, otherwise the script fails. Printed: wall-clock and
CPU seconds (CPU counts every thread: faster-coco-eval computes mask IoUs on up to 8 threads, one
per core here), and the speed ratios pycocotools / faster-coco-eval, the whole-evaluator one last.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from point_sup import compat  # point_sup first, as every entry point: detectron2 without its extension

COCO_SIZES = [(480, 640), (427, 640), (640, 480), (640, 427), (424, 640), (512, 640), (640, 640), (360, 640)]
# COCO's 80 thing category ids (1..90 without the 10 unused ones).
COCO_IDS = [i for i in range(1, 91) if i not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}]
STATS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
TOL = 1e-6


def _polygons(rng: np.random.Generator, centres: np.ndarray, radii: np.ndarray, h: int, w: int) -> list:
    """Star-shaped 16-gons (one per row of ``centres``/``radii``), clipped to the image, as COCO
    polygon lists."""
    n = len(centres)
    angles = np.sort(rng.uniform(0, 2 * np.pi, (n, 16)), axis=1)
    r = radii[:, None] * rng.uniform(0.55, 1.0, (n, 16))
    xy = np.stack([centres[:, :1] + r * np.cos(angles), centres[:, 1:] + r * np.sin(angles)], axis=2)
    xy = np.clip(xy, 0, [w - 1, h - 1])
    return [[p.ravel().tolist()] for p in xy]


def _uncompressed(rle: dict) -> dict:
    from pycocotools import mask as mask_util

    flat = mask_util.decode(rle).ravel(order="F")
    changes = np.flatnonzero(np.diff(np.r_[0, flat, 1 - flat[-1]]))
    return {"size": list(rle["size"]), "counts": np.diff(np.r_[0, changes]).tolist()}


def build_set(num_images: int, dets: int, num_categories: int, seed: int = 0) -> tuple[dict, list[dict]]:
    """The synthetic ground truth (COCO dict) and results (COCO result list), see the docstring."""
    from pycocotools import mask as mask_util

    rng = np.random.default_rng(seed)
    cat_ids = COCO_IDS[:num_categories]
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        h, w = COCO_SIZES[rng.integers(len(COCO_SIZES))]
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "height": h, "width": w})
        n_obj = int(rng.integers(1, 14))
        # COCO: about 41 % small (< 32^2), 34 % medium, 25 % large; radius from the area of a disc.
        kind = rng.choice(3, n_obj, p=[0.41, 0.34, 0.25])
        lo, hi = np.array([30, 32**2, 96**2])[kind], np.array([32**2, 96**2, 0.4 * h * w])[kind]
        areas = np.exp(rng.uniform(np.log(lo), np.log(hi)))
        radii = np.sqrt(areas / np.pi) * 1.25
        centres = rng.uniform([0, 0], [w, h], (n_obj, 2))
        polys = _polygons(rng, centres, radii, h, w)
        classes = rng.choice(cat_ids, n_obj)
        for poly, category in zip(polys, classes, strict=True):
            rle = mask_util.merge(mask_util.frPyObjects(poly, h, w))
            area = float(mask_util.area(rle))
            if area < 1:
                continue
            crowd = rng.random() < 0.01
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": int(category),
                "segmentation": _uncompressed(rle) if crowd else poly, "area": area,
                "bbox": mask_util.toBbox(rle).tolist(), "iscrowd": int(crowd),
            })  # fmt: skip
        # Detections: about 3 jittered copies per object (then false positives), scores to 1e-3.
        n_true = min(dets, 3 * n_obj)
        src = rng.integers(n_obj, size=n_true)
        jitter = rng.normal(0, 0.08, (n_true, 2)) * radii[src, None]
        det_centres = np.concatenate([centres[src] + jitter, rng.uniform([0, 0], [w, h], (dets - n_true, 2))])
        det_radii = np.concatenate([
            radii[src] * rng.uniform(0.8, 1.2, n_true),
            np.sqrt(np.exp(rng.uniform(np.log(30), np.log(0.2 * h * w), dets - n_true)) / np.pi),
        ])  # fmt: skip
        det_classes = np.concatenate([classes[src], rng.choice(cat_ids, dets - n_true)])
        wrong = rng.random(n_true) < 0.1
        det_classes[:n_true][wrong] = rng.choice(cat_ids, int(wrong.sum()))
        scores = np.round(
            np.concatenate([rng.uniform(0.3, 1.0, n_true), rng.uniform(0.01, 0.6, dets - n_true)]), 3
        )
        polys = _polygons(rng, det_centres, det_radii, h, w)
        rles = [mask_util.merge(mask_util.frPyObjects(p, h, w)) for p in polys]
        boxes = mask_util.toBbox(rles).tolist()
        for rle, box, category, score in zip(rles, boxes, det_classes, scores, strict=True):
            if box[2] * box[3] <= 0:
                continue
            results.append({
                "image_id": image_id, "category_id": int(category), "bbox": box, "score": float(score),
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
            })  # fmt: skip
    categories = [{"id": c, "name": f"class_{c}", "supercategory": "thing"} for c in cat_ids]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def timed(fn: Callable[[], object]) -> tuple[object, float, float]:
    """``fn()``, its wall-clock seconds and its CPU seconds (all threads of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def run_cocoeval(name: str, gt_json: Path, res_json: Path, iou_type: str) -> dict:
    """Load, then ``evaluate + accumulate + summarize`` with pycocotools or faster-coco-eval."""
    if name == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval as Eval

        kwargs = {}
    else:
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as Eval

        kwargs = {"print_function": lambda *a, **k: None}

    def load():
        gt = COCO(str(gt_json))
        return gt, gt.loadRes(str(res_json))

    def evaluate(gt, dt):
        coco_eval = Eval(gt, dt, iou_type, **kwargs)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
        return coco_eval

    with contextlib.redirect_stdout(io.StringIO()):
        (gt, dt), load_wall, _ = timed(load)
        coco_eval, wall, cpu = timed(lambda: evaluate(gt, dt))
    return {"stats": [float(s) for s in coco_eval.stats[:12]], "load": load_wall, "wall": wall, "cpu": cpu}


def run_evaluator(name: str, dataset: str, predictions: list[dict]) -> dict:
    """``evaluate()`` of Detectron2's COCOEvaluator (pycocotools) or point_sup's FasterCOCOEvaluator."""
    from detectron2.evaluation import COCOEvaluator

    from point_sup.evaluation import FasterCOCOEvaluator

    tasks = ("bbox", "segm")
    if name == "pycocotools":
        evaluator = COCOEvaluator(dataset, tasks=tasks, distributed=False, use_fast_impl=False)
    else:
        evaluator = FasterCOCOEvaluator(dataset, tasks=tasks, distributed=False)
    evaluator.reset()
    # What process() would have collected from the model (Detectron2 attribute): see the docstring.
    evaluator._predictions = predictions
    with contextlib.redirect_stdout(io.StringIO()):
        results, wall, cpu = timed(evaluator.evaluate)
    return {"results": results, "wall": wall, "cpu": cpu}


def collected_predictions(results: list[dict], id_map: dict[int, int]) -> list[dict]:
    """``results`` as COCOEvaluator.process() collects them: per image, contiguous class ids."""
    per_image: dict[int, list[dict]] = {}
    for r in results:
        per_image.setdefault(r["image_id"], []).append({**r, "category_id": id_map[r["category_id"]]})
    return [{"image_id": i, "instances": dets} for i, dets in per_image.items()]


def differences(a: dict, b: dict) -> list[str]:
    """Entries of two results dicts that differ by more than TOL (NaN equals NaN)."""
    out = []
    for task in sorted(set(a) | set(b)):
        ta, tb = a.get(task, {}), b.get(task, {})
        for key in sorted(set(ta) | set(tb)):
            x, y = ta.get(key, float("inf")), tb.get(key, float("-inf"))
            if not (math.isnan(x) and math.isnan(y)) and not abs(x - y) <= TOL:
                out.append(f"{task}/{key}: {x} vs {y}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=100, help="detections per image")
    parser.add_argument("--categories", type=int, default=80, choices=range(1, 81), metavar="1..80")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # Detectron2's and the evaluators' INFO logs
    from point_sup.evaluation import faster_coco_eval_available

    if not faster_coco_eval_available():
        print("faster-coco-eval is not installed (see requirements-eval.txt): pip install faster-coco-eval")
        return 1

    from detectron2.data import MetadataCatalog

    t0 = time.perf_counter()
    gt, results = build_set(args.images, args.dets, args.categories, args.seed)
    print(
        f"synthetic set: {len(gt['images']):,} images, {len(gt['annotations']):,} objects, "
        f"{len(results):,} detections, {args.categories} classes ({time.perf_counter() - t0:.1f} s to build)"
    )
    print(f"detectron2 C++ COCOeval built: {compat.coco_eval_fast_impl_available()}")
    failed = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        gt_json, bbox_json, segm_json = tmp / "gt.json", tmp / "results.json", tmp / "results_segm.json"
        gt_json.write_text(json.dumps(gt))
        bbox_json.write_text(json.dumps(results))
        # Mask AP bins objects by mask area: without the box (Detectron2's evaluators do the same).
        segm_json.write_text(json.dumps([{k: v for k, v in r.items() if k != "bbox"} for r in results]))

        eval_times = {}
        print(f"\n{'COCOeval (evaluate+accumulate+summarize)':<44}{'wall s':>9}{'CPU s':>9}{'load s':>9}")
        for task, res_json in (("segm", segm_json), ("bbox", bbox_json)):
            base = run_cocoeval("pycocotools", gt_json, res_json, task)
            fast = run_cocoeval("faster", gt_json, res_json, task)
            eval_times[task] = (base, fast)
            for label, r in (("pycocotools", base), ("faster-coco-eval", fast)):
                print(f"  {task} {label:<39}{r['wall']:>9.2f}{r['cpu']:>9.2f}{r['load']:>9.2f}")
            diff = max(abs(a - b) for a, b in zip(base["stats"], fast["stats"], strict=True))
            print(f"  {task} 12 stats: max |difference| {diff:.1e}; AP {100 * base['stats'][0]:.2f}")
            if not diff <= TOL:
                failed.append(f"{task} stats: " + ", ".join(
                    f"{n} {a} vs {b}" for n, a, b in zip(STATS, base["stats"], fast["stats"], strict=True)
                    if not abs(a - b) <= TOL
                ))  # fmt: skip

        dataset = "bench_evaluation_synthetic"
        if dataset in MetadataCatalog.list():
            MetadataCatalog.remove(dataset)
        MetadataCatalog.get(dataset).set(
            json_file=str(gt_json),
            evaluator_type="coco",
            thing_classes=[c["name"] for c in gt["categories"]],
            thing_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(gt["categories"])},
        )
        id_map = MetadataCatalog.get(dataset).thing_dataset_id_to_contiguous_id
        # Detectron2's evaluator maps the class ids in place: each evaluator gets its own copy.
        base_preds = collected_predictions(results, id_map)
        fast_preds = copy.deepcopy(base_preds)
        del results
        base = run_evaluator("pycocotools", dataset, base_preds)
        fast = run_evaluator("faster", dataset, fast_preds)
        print(f"\n{'whole evaluator.evaluate(), bbox + segm':<44}{'wall s':>9}{'CPU s':>9}")
        print(f"  {'COCOEvaluator(use_fast_impl=False)':<42}{base['wall']:>9.2f}{base['cpu']:>9.2f}")
        print(f"  {'FasterCOCOEvaluator':<42}{fast['wall']:>9.2f}{fast['cpu']:>9.2f}")
        diffs = differences(base["results"], fast["results"])
        n_keys = sum(len(v) for v in base["results"].values())
        print(f"  results dicts: {n_keys} entries, {len(diffs)} differing by more than {TOL:g}")
        if diffs:
            failed.append("evaluator results: " + "; ".join(diffs[:10]))

    if failed:
        print("\nFAILED, the numbers differ:\n  " + "\n  ".join(failed))
        return 1
    (sb, sf), (bb, bf) = eval_times["segm"], eval_times["bbox"]
    print(
        f"\nspeed ratio pycocotools / faster-coco-eval, COCOeval evaluate+accumulate+summarize: "
        f"segm {sb['wall'] / sf['wall']:.1f}x (CPU {sb['cpu'] / sf['cpu']:.1f}x), "
        f"bbox {bb['wall'] / bf['wall']:.1f}x (CPU {bb['cpu'] / bf['cpu']:.1f}x)"
    )
    print(
        f"speed ratio, whole evaluator call (bbox + segm) as a user experiences it: "
        f"{base['wall'] / fast['wall']:.1f}x (CPU {base['cpu'] / fast['cpu']:.1f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
