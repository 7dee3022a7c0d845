"""COCO-style AP computed by faster-coco-eval's C++ COCOeval, through Detectron2's evaluators.

Without Detectron2's C++ extension (``detectron2._C``, missing from the offline wheel, see
:mod:`point_sup.compat`), Detectron2's ``COCOEvaluator`` evaluates with pycocotools' pure-Python
COCOeval, the slow part of evaluating a COCO-sized set (``bench/bench_evaluation.py``). `faster-coco-eval <https://pypi.org/project/faster-coco-eval/>`_
(``pip install faster-coco-eval``, ``requirements-eval.txt``) implements the same COCOeval in C++.

* :class:`FasterCOCOEvaluator` is Detectron2's ``COCOEvaluator`` (same arguments, same ``process``,
  same files written, same results dict: ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl`` and
  ``AP-<class>`` per category, on a 0-100 scale, NaN where a metric cannot be computed) whose box and
  mask AP come from faster-coco-eval. Only :meth:`~FasterCOCOEvaluator._eval_predictions`, the step
  that runs COCOeval, is replaced; the results dict is still made by Detectron2's
  ``_derive_coco_results`` from the COCOeval object, whose ``stats`` and ``eval["precision"]`` are
  laid out as pycocotools'. Keypoint AP stays Detectron2's (see the class).
* :class:`FasterLVISEvaluator` is Detectron2's ``LVISEvaluator`` computing LVIS's federated AP
  with faster-coco-eval's ``lvis_style`` mode, after the per-image detection limit that the official
  ``lvis`` API applies before evaluation (faster-coco-eval limits per image *and category*).

Numbers: every summary statistic equals pycocotools' COCOeval (respectively the ``lvis`` API) run on
the same predictions up to float rounding (``tests/evaluation/test_fast_coco.py``): the matches and
recalls are identical; a precision differs by at most a couple of 1e-16, because pycocotools divides
by ``tp + fp + np.spacing(1)`` and the C++ code by ``tp + fp``.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence

from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation import LVISEvaluator as _DetectronLVISEvaluator
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

from .. import compat

__all__ = [
    "LVIS_METRICS",
    "FasterCOCOEvaluator",
    "FasterLVISEvaluator",
    "faster_coco_eval_available",
    "run_faster_cocoeval",
]

LVIS_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
"""What Detectron2's LVISEvaluator reports per task, in its order."""

# Names of faster-coco-eval's ``stats_as_dict`` (lvis_style) for LVIS_METRICS.
_LVIS_STAT_NAMES = ("AP_all", "AP_50", "AP_75", "AP_small", "AP_medium", "AP_large", "APr", "APc", "APf")


@functools.cache
def faster_coco_eval_available() -> bool:
    """Whether ``faster_coco_eval`` (with its compiled extension) imports here. Cached."""
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        return False
    return True


def run_faster_cocoeval(
    coco_gt,
    results: Sequence[dict],
    iou_type: str,
    *,
    max_dets: Sequence[int] = (1, 10, 100),
    img_ids: Iterable[int] | None = None,
    lvis_style: bool = False,
    print_function: Callable[[str], None] | None = None,
):
    """Evaluate ``results`` against ``coco_gt`` with faster-coco-eval's COCOeval; return it summarized.

    Args:
        coco_gt: a ``faster_coco_eval.COCO`` of the ground truth.
        results: detections in COCO's result format (``image_id``, ``category_id`` in the dataset's
            ids, ``score``, ``bbox`` XYWH and/or ``segmentation`` as compressed RLE); not modified.
            Non-empty.
        iou_type: ``"bbox"`` or ``"segm"``. For ``"segm"`` the results' ``bbox`` is ignored, so that
            the small/medium/large split uses the mask area, as in Detectron2's evaluators (with a
            box, COCO's ``loadRes`` would take the box area).
        max_dets: COCOeval's ``params.maxDets``; AP uses the last one (Detectron2's convention for
            ``max_dets_per_image``).
        img_ids: evaluate these images only (default: all images of ``coco_gt``).
        lvis_style: LVIS's federated rules (negative / not-exhaustive categories, APr/APc/APf).
        print_function: where COCOeval's progress and summary lines go (default: discarded).

    Returns:
        The ``faster_coco_eval.COCOeval_faster`` after ``evaluate``/``accumulate``/``summarize``:
        ``stats`` (12 numbers for bbox/segm, pycocotools' order), ``eval["precision"]``
        ``[iou, recall, category, area, max_dets]`` and, with ``lvis_style``, ``stats_as_dict``.
    """
    from faster_coco_eval import COCOeval_faster

    # loadRes adds ``id``, ``area`` and ``iscrowd`` (and COCOeval an RLE) to each result: copies
    # keep the caller's dicts as they were, so that another task can be evaluated from them.
    if iou_type == "segm":
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    else:
        results = [r.copy() for r in results]
    coco_dt = coco_gt.loadRes(results)
    coco_eval = COCOeval_faster(
        coco_gt,
        coco_dt,
        iou_type,
        lvis_style=lvis_style,
        print_function=print_function or (lambda *args, **kwargs: None),
    )
    coco_eval.params.maxDets = list(max_dets)
    if img_ids is not None:
        coco_eval.params.imgIds = list(img_ids)
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval


def _load_faster_coco(json_file: str):
    """A ``faster_coco_eval.COCO`` of its own, read from the file: COCOeval writes into the
    ground-truth annotation dicts (``ignore``, an RLE), which must not be Detectron2's ones."""
    from faster_coco_eval import COCO

    return COCO(PathManager.get_local_path(json_file))


def _limit_per_image(results: Sequence[dict], max_dets: int) -> list[dict]:
    """At most ``max_dets`` highest-scoring results per image, in the order that lvis's
    ``LVISResults`` leaves them (images in order of first appearance; an image over the limit sorted
    by decreasing score, ties in input order): the order decides among equal scores, later."""
    per_image: dict[int, list[dict]] = {}
    for r in results:
        per_image.setdefault(r["image_id"], []).append(r)
    kept = []
    for anns in per_image.values():
        if len(anns) > max_dets:
            anns = sorted(anns, key=lambda r: r["score"], reverse=True)[:max_dets]
        kept += anns
    return kept


def _save_json(output_dir: str | None, file_name: str, results: list[dict], logger: logging.Logger) -> None:
    if not output_dir:
        return
    path = os.path.join(output_dir, file_name)
    logger.info(f"Saving results to {path}")
    with PathManager.open(path, "w") as f:
        f.write(json.dumps(results))


class FasterCOCOEvaluator(COCOEvaluator):
    """Detectron2's ``COCOEvaluator`` with box and mask AP from faster-coco-eval's C++ COCOeval.

    Arguments and results are ``COCOEvaluator``'s (without ``use_fast_impl``): see the module
    docstring. Predictions are kept and written exactly as Detectron2 does
    (``instances_predictions.pth``, ``coco_instances_results.json`` in ``output_dir``), except that
    the category ids are mapped back to the dataset's on copies: the collected predictions are left
    as the model made them.

    Keypoints: where the predictions carry keypoints, the whole evaluation (boxes included) is
    Detectron2's, with its C++ COCOeval where that is built and pycocotools' otherwise;
    faster-coco-eval's keypoint OKS is not covered by point_sup's equality tests.
    """

    def __init__(
        self,
        dataset_name: str,
        tasks: Sequence[str] | None = None,
        distributed: bool = True,
        output_dir: str | None = None,
        *,
        max_dets_per_image: int | None = None,
        kpt_oks_sigmas: Sequence[float] = (),
        allow_cached_coco: bool = True,
    ) -> None:
        super().__init__(
            dataset_name,
            tasks,
            distributed,
            output_dir,
            max_dets_per_image=max_dets_per_image,
            # Only the keypoint fallback evaluates with Detectron2's COCOeval: its fast one where built.
            use_fast_impl=compat.coco_eval_fast_impl_available(),
            kpt_oks_sigmas=kpt_oks_sigmas,
            allow_cached_coco=allow_cached_coco,
        )
        self._faster_coco_gt = None  # read on first evaluation

    def _faster_gt(self):
        if self._faster_coco_gt is None:
            self._faster_coco_gt = _load_faster_coco(self._metadata.json_file)
        return self._faster_coco_gt

    def _dataset_category_ids(self, results: list[dict]) -> list[dict]:
        """Copies of ``results`` with the model's contiguous class ids mapped to the dataset's ids."""
        id_map = self._metadata.get("thing_dataset_id_to_contiguous_id")
        if id_map is None:
            return results
        to_dataset = {contiguous: dataset_id for dataset_id, contiguous in id_map.items()}
        mapped = []
        for r in results:
            if r["category_id"] not in to_dataset:
                raise ValueError(
                    f"A prediction has class {r['category_id']}, but the dataset only has "
                    f"{len(to_dataset)} classes (contiguous ids 0..{len(to_dataset) - 1})."
                )
            mapped.append({**r, "category_id": to_dataset[r["category_id"]]})
        return mapped

    def _eval_predictions(self, predictions: list[dict], img_ids: Iterable[int] | None = None) -> None:
        """Fill ``self._results[task]`` for each task, as ``COCOEvaluator._eval_predictions`` does."""
        results = list(itertools.chain.from_iterable(p["instances"] for p in predictions))
        tasks = self._tasks or self._tasks_from_predictions(results)
        if "keypoints" in tasks:
            self._logger.info("Keypoint predictions: evaluating with Detectron2's COCOeval.")
            super()._eval_predictions(predictions, img_ids=img_ids)
            return
        results = self._dataset_category_ids(results)
        _save_json(self._output_dir, "coco_instances_results.json", results, self._logger)
        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return
        self._logger.info("Evaluating predictions with faster-coco-eval's COCOeval ...")
        for task in sorted(tasks):
            if task not in ("bbox", "segm"):
                raise ValueError(f"FasterCOCOEvaluator: unknown task {task!r}")
            coco_eval = None  # Detectron2's "no predictions" (NaN metrics)
            if results:
                coco_eval = run_faster_cocoeval(
                    self._faster_gt(),
                    results,
                    task,
                    max_dets=self._max_dets_per_image,
                    img_ids=img_ids,
                    print_function=self._logger.info,
                )
            self._results[task] = self._derive_coco_results(
                coco_eval, task, class_names=self._metadata.get("thing_classes")
            )


class FasterLVISEvaluator(_DetectronLVISEvaluator):
    """Detectron2's ``LVISEvaluator`` with LVIS's federated AP from faster-coco-eval's C++ COCOeval.

    Same arguments and results as Detectron2's (per task: :data:`LVIS_METRICS`, 0-100, NaN without
    predictions); needs ``lvis`` installed like it (Detectron2 reads the dataset with it). The
    detections of an image beyond ``max_dets_per_image`` (default 300) are dropped by score before
    evaluation, as the official ``LVISResults`` does; the rest of LVIS's rules (an image's
    negative and not-exhaustively-annotated categories, the r/c/f frequency groups) are
    faster-coco-eval's ``lvis_style``, which gives the official API's numbers (tests). Not chosen
    by :func:`~point_sup.evaluation.build_evaluator` unless ``POINT_SUP_COCO_EVAL=faster``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._faster_coco_gt = None  # read on first evaluation

    def _eval_predictions(self, predictions: list[dict]) -> None:
        """Fill ``self._results[task]`` for each task, as ``LVISEvaluator._eval_predictions`` does."""
        results = list(itertools.chain.from_iterable(p["instances"] for p in predictions))
        tasks = self._tasks or self._tasks_from_predictions(results)
        id_map = self._metadata.get("thing_dataset_id_to_contiguous_id")
        if id_map is not None:  # COCO categories evaluated the LVIS way
            to_dataset = {contiguous: dataset_id for dataset_id, contiguous in id_map.items()}
            results = [{**r, "category_id": to_dataset[r["category_id"]]} for r in results]
        else:  # LVIS category ids are the contiguous ones plus one
            results = [{**r, "category_id": r["category_id"] + 1} for r in results]
        _save_json(self._output_dir, "lvis_instances_results.json", results, self._logger)
        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return
        max_dets = 300 if self._max_dets_per_image is None else self._max_dets_per_image
        self._logger.info(f"Evaluating with faster-coco-eval, LVIS rules, {max_dets} detections per image")
        results = _limit_per_image(results, max_dets)
        for task in sorted(tasks):
            if not results:
                self._logger.warning("No predictions from the model!")
                self._results[task] = {metric: float("nan") for metric in LVIS_METRICS}
                continue
            if self._faster_coco_gt is None:
                self._faster_coco_gt = _load_faster_coco(self._metadata.json_file)
            coco_eval = run_faster_cocoeval(
                self._faster_coco_gt,
                results,
                task,
                max_dets=(max_dets,),
                lvis_style=True,
                print_function=self._logger.info,
            )
            stats = coco_eval.stats_as_dict
            res = {m: float(stats[s] * 100) for m, s in zip(LVIS_METRICS, _LVIS_STAT_NAMES, strict=True)}
            self._logger.info(f"Evaluation results for {task}: \n" + create_small_table(res))
            self._results[task] = res
