"""point_sup's CityscapesInstanceEvaluator on the Cityscapes replica: ground truth as predictions
scores AP 100, degraded predictions less, the same numbers as Detectron2's evaluator where that one
is usable, and no file or global state left behind."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import _get_builtin_metadata
from detectron2.structures import Instances
from PIL import Image

pytest.importorskip("cityscapesscripts")

import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as cityscapes_eval  # noqa: N813
from cityscapesscripts.helpers.labels import id2label

from point_sup import compat
from point_sup.data.cityscapes import load_cityscapes_instances
from point_sup.evaluation import build_evaluator
from point_sup.evaluation.cityscapes import (
    CityscapesInstanceEvaluator,
    cityscapesscripts_evaluation_runs_unaided,
)
from point_sup.evaluation.numpy_compat import numpy_with_old_names

D2_USABLE = compat.detectron2_cityscapes_usable()
needs_d2 = pytest.mark.skipif(
    not D2_USABLE,
    reason=f"Detectron2's Cityscapes evaluator is unusable: {compat._detectron2_cityscapes_problem()}",
)
THING_CLASSES = _get_builtin_metadata("cityscapes")["thing_classes"]


@pytest.fixture(scope="module")
def cityscapes_val(cityscapes_replica):
    """The replica's validation split, registered as Detectron2 registers cityscapes_fine_instance_seg_val."""
    name = "test_cityscapes_replica_val"
    image_dir, gt_dir = (str(cityscapes_replica / d / "val") for d in ("leftImg8bit", "gtFine"))
    DatasetCatalog.register(name, lambda: load_cityscapes_instances(image_dir, gt_dir))
    MetadataCatalog.get(name).set(
        image_dir=image_dir,
        gt_dir=gt_dir,
        evaluator_type="cityscapes_instance",
        **_get_builtin_metadata("cityscapes"),
    )
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _ground_truth_predictions(dataset_name: str) -> list[tuple[dict, dict]]:
    """(input, output) per image: every evaluated instance of its instanceIds.png as a prediction.

    ``pred_masks`` (R, H, W) bool, ``pred_classes`` (R,) indices into THING_CLASSES, ``scores`` (R,)
    decreasing from 1 (distinct, so the ranking is defined).
    """
    gt_dir = Path(MetadataCatalog.get(dataset_name).gt_dir)
    pairs = []
    for record in DatasetCatalog.get(dataset_name):
        image = Path(record["file_name"])
        png = gt_dir / image.parent.name / image.name.replace("leftImg8bit.png", "gtFine_instanceIds.png")
        ids = np.asarray(Image.open(png), dtype=np.int64)
        values = [v for v in np.unique(ids) if v >= 1000 and id2label[int(v) // 1000].name in THING_CLASSES]
        instances = Instances(ids.shape)
        instances.pred_masks = torch.from_numpy(np.stack([ids == v for v in values]))
        instances.pred_classes = torch.tensor(
            [THING_CLASSES.index(id2label[int(v) // 1000].name) for v in values]
        )
        instances.scores = torch.linspace(1.0, 0.5, len(values))
        pairs.append(
            ({"file_name": record["file_name"], "image_id": record["image_id"]}, {"instances": instances})
        )
    return pairs


def _degraded(pairs: list[tuple[dict, dict]]) -> list[tuple[dict, dict]]:
    """Every third instance missed, the others shifted by 2 pixels (down and right) and every fourth
    of those given the next class; the image with the fewest instances without any prediction (an
    output without ``instances``)."""
    empty = int(np.argmin([len(output["instances"]) for _, output in pairs]))
    out = []
    for index, (input, output) in enumerate(pairs):
        if index == empty:
            out.append((input, {}))
            continue
        gt = output["instances"]
        keep = torch.arange(len(gt)) % 3 != 0
        instances = Instances(gt.image_size)
        instances.pred_masks = torch.roll(gt.pred_masks[keep], shifts=(2, 2), dims=(1, 2))
        classes = gt.pred_classes[keep].clone()
        classes[::4] = (classes[::4] + 1) % len(THING_CLASSES)
        instances.pred_classes = classes
        instances.scores = gt.scores[keep]
        out.append((input, {"instances": instances}))
    return out


def _evaluate(evaluator, pairs) -> dict:
    evaluator.reset()
    for input, output in pairs:
        evaluator.process([input], [output])
    return evaluator.evaluate()


def test_ground_truth_scores_100_and_degraded_less(cityscapes_val, tmp_path, monkeypatch):
    """AP = AP50 = 100 for the ground truth itself: cityscapesscripts matches every prediction to its
    instance at IoU 1 and ignores those of instances under 100 px, so there is no false positive."""
    monkeypatch.chdir(tmp_path)
    evaluator = CityscapesInstanceEvaluator(cityscapes_val)
    pairs = _ground_truth_predictions(cityscapes_val)
    assert sum(len(o["instances"]) for _, o in pairs) > 20
    perfect = _evaluate(evaluator, pairs)
    assert list(perfect) == ["segm"] and set(perfect["segm"]) == {"AP", "AP50"}
    assert perfect["segm"]["AP"] == pytest.approx(100.0, abs=1e-9)
    assert perfect["segm"]["AP50"] == pytest.approx(100.0, abs=1e-9)
    degraded = _evaluate(evaluator, _degraded(pairs))
    assert 0.0 < degraded["segm"]["AP"] < degraded["segm"]["AP50"] < 90.0
    assert not os.path.exists(evaluator._temp_dir)  # the predictions' folder is removed
    assert os.listdir(tmp_path) == []  # nothing in the working directory (no matches.json)


@needs_d2
def test_same_numbers_as_detectron2s_evaluator(cityscapes_val, tmp_path, monkeypatch):
    from detectron2.evaluation import CityscapesInstanceEvaluator as D2Evaluator

    monkeypatch.chdir(tmp_path)  # Detectron2's writes cityscapesscripts' matches.json here
    if not cityscapesscripts_evaluation_runs_unaided():
        # Help Detectron2's evaluator past cityscapesscripts' numpy >= 2.4 failures, for this
        # comparison only: np.in1d (below), and the dump of matches.json (a debugging file that the
        # numbers do not depend on), which cannot serialize numpy integers.
        write = cityscapes_eval.writeDict2JSON
        monkeypatch.setattr(
            cityscapes_eval, "writeDict2JSON", lambda d, f: None if f == "matches.json" else write(d, f)
        )
    pairs = _ground_truth_predictions(cityscapes_val)
    for predictions in (pairs, _degraded(pairs)):
        with numpy_with_old_names(cityscapes_eval, "in1d"):
            theirs = _evaluate(D2Evaluator(cityscapes_val), predictions)
        # After Detectron2's run, whose settings stay in cityscapesscripts' module-level args.
        ours = _evaluate(CityscapesInstanceEvaluator(cityscapes_val), predictions)
        assert ours == theirs


def test_cityscapesscripts_and_numpy_are_left_as_they_are(cityscapes_val):
    before = dict(vars(cityscapes_eval.args))
    numpy_had_in1d = hasattr(np, "in1d")
    _evaluate(CityscapesInstanceEvaluator(cityscapes_val), _ground_truth_predictions(cityscapes_val))
    after = vars(cityscapes_eval.args)
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] for k in before)
    assert cityscapes_eval.np is np
    assert hasattr(np, "in1d") is numpy_had_in1d


def test_in1d_stand_in_is_numpys_in1d():
    """cityscapesscripts calls ``np.in1d(gt, void_ids).reshape(gt.shape)``: the stand-in gives
    numpy < 2.4's result, flattened membership."""
    gt = np.array([[0, 1, 2], [3, 1, 0]])
    with numpy_with_old_names(cityscapes_eval, "in1d"):
        flat = cityscapes_eval.np.in1d(gt, [1, 3])
        inverted = cityscapes_eval.np.in1d(gt, [1, 3], invert=True)
        assert cityscapes_eval.np.zeros is np.zeros  # everything else is numpy's
    np.testing.assert_array_equal(flat, [False, True, False, True, True, False])
    np.testing.assert_array_equal(inverted, ~flat)
    assert cityscapes_eval.np is np


def test_a_missing_prediction_list_is_an_error_not_an_exit(cityscapes_val, capsys):
    evaluator = CityscapesInstanceEvaluator(cityscapes_val)
    evaluator.reset()
    input, output = _ground_truth_predictions(cityscapes_val)[0]
    evaluator.process([input], [output])  # the other image has no prediction list
    with pytest.raises(RuntimeError, match="cityscapesscripts stopped the evaluation"):
        evaluator.evaluate()
    assert "Found no prediction for ground truth" in capsys.readouterr().out
    assert not os.path.exists(evaluator._temp_dir)


def test_prediction_files(cityscapes_val):
    """The protocol: ``<image stem>_<i>_<class>.png`` (0/255) and ``<image stem>_pred.txt``."""
    evaluator = CityscapesInstanceEvaluator(cityscapes_val)
    evaluator.reset()
    input, output = _ground_truth_predictions(cityscapes_val)[0]
    evaluator.process([input], [output])
    stem = Path(input["file_name"]).stem
    lines = (Path(evaluator._temp_dir) / f"{stem}_pred.txt").read_text().splitlines()
    instances = output["instances"]
    assert len(lines) == len(instances)
    png, label_id, score = lines[0].split(" ")
    class_name = THING_CLASSES[int(instances.pred_classes[0])]
    assert png == f"{stem}_0_{class_name}.png"
    assert id2label[int(label_id)].name == class_name
    assert float(score) == pytest.approx(1.0)
    mask = np.asarray(Image.open(Path(evaluator._temp_dir) / png))
    assert set(np.unique(mask)) <= {0, 255}
    np.testing.assert_array_equal(mask == 255, instances.pred_masks[0].numpy())
    evaluator._working_dir.cleanup()


def test_build_evaluator_uses_detectron2s_where_usable(cityscapes_val, tmp_path):
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    evaluator = build_evaluator(cfg, cityscapes_val)
    assert type(evaluator).__name__ == "CityscapesInstanceEvaluator"
    d2_runs = D2_USABLE and cityscapesscripts_evaluation_runs_unaided()
    expected = "detectron2.evaluation.cityscapes_evaluation" if d2_runs else "point_sup.evaluation.cityscapes"
    assert type(evaluator).__module__ == expected


def test_detectron2s_evaluator_fails_where_build_evaluator_avoids_it(cityscapes_val, tmp_path, monkeypatch):
    """Where build_evaluator picks point_sup's evaluator although Detectron2's imports (numpy >= 2.4),
    Detectron2's would indeed fail; point_sup's runs (the tests above)."""
    if not D2_USABLE or cityscapesscripts_evaluation_runs_unaided():
        pytest.skip("Detectron2's evaluator is unusable for its import, or runs here")
    from detectron2.evaluation import CityscapesInstanceEvaluator as D2Evaluator

    monkeypatch.chdir(tmp_path)
    with pytest.raises(AttributeError, match="in1d|__dict__"):
        _evaluate(D2Evaluator(cityscapes_val), _ground_truth_predictions(cityscapes_val))
