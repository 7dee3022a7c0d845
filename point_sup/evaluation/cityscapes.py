"""Cityscapes instance segmentation AP with the public cityscapesscripts (Detectron2 HEAD cannot).

Detectron2 HEAD (since December 2024) imports cityscapesscripts in its ``CityscapesInstanceEvaluator``
from a Meta-internal path (``deeplearning.projects.cityscapesApi``), so it fails with ``No module
named 'deeplearning'``; and cityscapesscripts 2.3.0's evaluation driver, which Detectron2's evaluator
of any version calls, fails with numpy >= 2.4. :class:`CityscapesInstanceEvaluator` here follows the
same protocol with the public package and runs with either numpy;
:func:`point_sup.evaluation.build_evaluator` uses it only where Detectron2's is unusable
(:func:`point_sup.compat.detectron2_cityscapes_usable`, :func:`cityscapesscripts_evaluation_runs_unaided`).
"""

from __future__ import annotations

import copy
import glob
import importlib
import os
from collections import OrderedDict

import numpy as np
from detectron2.evaluation.cityscapes_evaluation import CityscapesEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from PIL import Image

from .numpy_compat import numpy_with_old_names

__all__ = ["CityscapesInstanceEvaluator", "cityscapesscripts_evaluation_runs_unaided"]


def _import_cityscapes_evaluation():
    try:
        cityscapes_eval = importlib.import_module(
            "cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling"
        )
        from cityscapesscripts.helpers.labels import name2label
    except ImportError as e:
        raise ImportError(
            f"Cityscapes evaluation needs the cityscapesscripts package ({e}): pip install cityscapesscripts"
        ) from e
    return cityscapes_eval, name2label


def cityscapesscripts_evaluation_runs_unaided() -> bool:
    """Whether cityscapesscripts' ``evaluateImgLists`` (what Detectron2's evaluator calls) runs with
    this numpy.

    It does not with numpy >= 2.4, which removed the ``np.in1d`` it calls (:mod:`.numpy_compat`),
    nor where ``np.count_nonzero`` returns a numpy integer (numpy 2.4 here), which its
    ``writeDict2JSON`` cannot serialize when it dumps ``matches.json`` into the working directory.
    :class:`CityscapesInstanceEvaluator` runs either way.
    """
    return hasattr(np, "in1d") and isinstance(np.count_nonzero(np.zeros(1, dtype=bool)), int)


class CityscapesInstanceEvaluator(CityscapesEvaluator):
    """Mask AP on a Cityscapes split with cityscapesscripts' ``evalInstanceLevelSemanticLabeling``.

    The metric of the Cityscapes benchmark (and of the paper's Cityscapes numbers): AP averaged over
    the IoU thresholds 0.5:0.05:0.95 and the 8 instance classes, ground truth taken from the split's
    ``*_gtFine_instanceIds.png`` (metadata ``gt_dir``), crowd (``<class>group``) regions and
    instances under 100 pixels ignored. Returns the same ``{"segm": {"AP", "AP50"}}`` (percent) as
    Detectron2's evaluator of the same name, through the same files: :meth:`process` writes, per
    image ``<city>_<seq>_<frame>_leftImg8bit.png``, one ``..._leftImg8bit_<i>_<class>.png`` per
    predicted instance (its binary mask, 0/255, at the image's size) and a
    ``..._leftImg8bit_pred.txt`` listing ``<png> <Cityscapes label id> <score>`` per line, into a
    temporary folder shared by the processes of the machine (see ``CityscapesEvaluator.reset``).

    Unlike Detectron2's, it runs with numpy >= 2.4 (:mod:`.numpy_compat`), leaves
    cityscapesscripts' module-level ``args`` as they are (it works on a copy), writes nothing into the
    working directory (``evaluateImgLists`` would write ``matches.json`` there), turns
    cityscapesscripts' ``sys.exit`` on a problem into a RuntimeError, and removes the temporary folder
    also when the evaluation fails.

    Note:
        * Single machine only (one or several processes); it synchronizes, so call it on every rank.
        * Only the main process evaluates; the others return None.
        * The predictions must have ``pred_masks`` (R, H, W) at the input image's size, which
          Detectron2's models return at inference.
    """

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        """Write each image's predicted masks and their list (see the class docstring).

        Args:
            inputs: model inputs, each with the image's ``file_name``.
            outputs: model outputs, each with ``instances`` (``pred_classes`` (R,) contiguous ids
                into the metadata's ``thing_classes``, ``scores`` (R,), ``pred_masks`` (R, H, W)).
        """
        _, name2label = _import_cityscapes_evaluation()
        for input, output in zip(inputs, outputs, strict=True):
            stem = os.path.splitext(os.path.basename(input["file_name"]))[0]
            lines = []
            # cityscapesscripts needs a list for every ground-truth image, so one without
            # predictions gets an empty one.
            if "instances" in output:
                instances = output["instances"].to(self._cpu_device)
                masks = instances.pred_masks.numpy()  # (R, H, W) bool
                for i, (class_index, score) in enumerate(
                    zip(instances.pred_classes.tolist(), instances.scores.tolist(), strict=True)
                ):
                    class_name = self._metadata.thing_classes[class_index]
                    png = f"{stem}_{i}_{class_name}.png"
                    Image.fromarray(masks[i].astype(np.uint8) * 255).save(os.path.join(self._temp_dir, png))
                    lines.append(f"{png} {name2label[class_name].id} {score}\n")
            with open(os.path.join(self._temp_dir, f"{stem}_pred.txt"), "w") as f:
                f.writelines(lines)

    def evaluate(self) -> OrderedDict | None:
        """Returns ``{"segm": {"AP": ..., "AP50": ...}}`` in percent on the main process, else None."""
        comm.synchronize()
        if comm.get_rank() > 0:
            return None
        try:
            return self._evaluate()
        finally:
            self._working_dir.cleanup()

    def _evaluate(self) -> OrderedDict:
        cityscapes_eval, _ = _import_cityscapes_evaluation()
        self._logger.info(f"Evaluating Cityscapes instance predictions in {self._temp_dir} ...")
        gt_dir = PathManager.get_local_path(self._metadata.gt_dir)
        gt_files = glob.glob(os.path.join(gt_dir, "*", "*_gtFine_instanceIds.png"))
        if not gt_files:
            raise FileNotFoundError(f"No Cityscapes ground truth {gt_dir}/<city>/*_gtFine_instanceIds.png")

        # The module-level `args` hold the benchmark's settings (IoU thresholds, minimum region
        # sizes, ...); a copy keeps them while pointing at this evaluation's files.
        args = copy.copy(cityscapes_eval.args)
        args.predictionPath = os.path.abspath(self._temp_dir)
        args.predictionWalk = None  # filled by getPrediction from predictionPath
        args.gtInstancesFile = os.path.join(self._temp_dir, "gtInstances.json")  # cache of the GT
        args.JSONOutput = False
        args.colorized = False
        try:
            predictions = [cityscapes_eval.getPrediction(gt, args) for gt in gt_files]
            # evaluateImgLists(), step by step, without its matches.json in the working directory.
            cityscapes_eval.setInstanceLabels(args)
            gt_instances = cityscapes_eval.getGtInstances(gt_files, args)
            with numpy_with_old_names(cityscapes_eval, "in1d"):
                matches = cityscapes_eval.matchGtWithPreds(predictions, gt_files, gt_instances, args)
            ap_scores = cityscapes_eval.evaluateMatches(matches, args)
            averages = cityscapes_eval.computeAverages(ap_scores, args)
        except SystemExit as e:  # cityscapesscripts' printError() prints the reason and exits
            raise RuntimeError(
                f"cityscapesscripts stopped the evaluation (exit status {e.code}), see its message above"
            ) from e
        if not args.quiet:
            cityscapes_eval.printResults(averages, args)
        return OrderedDict(segm={"AP": averages["allAp"] * 100, "AP50": averages["allAp50%"] * 100})
