"""bench/miniature_replication.py's k-fold path without training: dataset names per fold, the Student-t
intervals and paired differences, argument errors, and --resume from a saved results file."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "miniature_replication.py"


@pytest.fixture(scope="module")
def bench():
    """The script as a module (it lives outside any package; its dataclasses need it in sys.modules)."""
    spec = importlib.util.spec_from_file_location("miniature_replication", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(autouse=True)
def _restore_loggers():
    """bench.main sets up Detectron2's loggers on pytest's captured streams, which close after the
    test: the handlers it adds go again (and setup_logger's cache with them), so that later tests'
    log records do not hit a closed stream."""
    from detectron2.utils import logger as d2_logger

    names = ("point_sup", "detectron2", "d2", "fvcore")
    before = {name: list(logging.getLogger(name).handlers) for name in names}
    yield
    for name, handlers in before.items():
        logging.getLogger(name).handlers[:] = handlers
    d2_logger.setup_logger.cache_clear()


def test_fold_training_sets(bench):
    assert bench.fold_train_dataset("nuclei_train", 1, 4) == "nuclei_fold1of4_train"
    assert bench.fold_train_dataset("nuclei_train_p10_random5", 0, 2) == "nuclei_fold0of2_train_p10_random5"
    assert bench.fold_train_dataset("nuclei_train_boxes", 3, 4) == "nuclei_fold3of4_train_boxes"
    with pytest.raises(ValueError, match="'nuclei_val'"):
        bench.fold_train_dataset("nuclei_val", 0, 4)


def test_box_prior_rows_train_on_their_supervision(bench):
    study = bench.STUDIES["box_prior"]
    assert set(bench.BOX_PRIOR_ROWS) <= set(study)
    trains = {name: bench.row_train_dataset(name) for name in study}
    assert trains["Mask R-CNN P10 + box prior"] == trains["CondInst P10 + box prior"] == "nuclei_train_p10"
    assert trains["Mask R-CNN B (box prior)"] == trains["BoxInst B"] == "nuclei_train_boxes"
    assert trains["Mask R-CNN M"] == trains["CondInst M"] == "nuclei_train"
    seconds = {name: bench.annotation_seconds(train) for name, train in trains.items()}
    assert seconds["Mask R-CNN P10 + box prior"] == seconds["Mask R-CNN P10"] == pytest.approx(16.0)
    assert (seconds["BoxInst B"], seconds["Mask R-CNN M"]) == (7.0, 79.2)
    assert bench.annotation_seconds("nuclei_train_p10_m10") is None
    assert bench.ROWS["Mask R-CNN P10 + box prior"].paired == "Mask R-CNN P10"
    assert bench.ROWS["CondInst P10 + box prior"].paired == "CondInst P10"
    assert bench.ROWS["CondInst P10 + box prior"].reference == "CondInst M"


def test_t_interval(bench, monkeypatch):
    assert bench.t_quantile_975(1) == pytest.approx(12.706, abs=1e-3)
    assert bench.t_quantile_975(11) == pytest.approx(2.201, abs=1e-3)
    mean, lo, hi = bench.t_interval([1.0, 2.0, 3.0, 4.0])
    half = 3.182 * math.sqrt(5 / 3) / 2
    assert (mean, lo, hi) == pytest.approx((2.5, 2.5 - half, 2.5 + half), abs=1e-3)
    assert math.isnan(bench.t_interval([1.0])[1])
    # Without scipy: the table, the next smaller entry between its rows.
    monkeypatch.setitem(sys.modules, "scipy.stats", None)
    assert bench.t_quantile_975(11) == 2.201 and bench.t_quantile_975(45) == 2.021
    with pytest.raises(ValueError, match="degree of freedom"):
        bench.t_quantile_975(0)


def _runs(ap_by_row: dict[str, list[float]]) -> dict:
    keys = [(s, k) for s in (0, 1) for k in (0, 1)]
    return {
        name: {key: {"AP": ap, "AP50": 2 * ap} for key, ap in zip(keys, aps, strict=True)}
        for name, aps in ap_by_row.items()
    }


def test_fold_report_pairs_runs(bench):
    runs = _runs(
        {
            "Mask R-CNN M": [30.0, 32.0, 31.0, 29.0],
            "Mask R-CNN P10": [20.0, 28.0, 25.0, 22.0],
            "Mask R-CNN P10 + box prior": [22.0, 30.1, 26.9, 24.0],
        }
    )
    assert bench.paired_differences(runs, "Mask R-CNN P10", "Mask R-CNN M") == {
        (0, 0): -10.0,
        (0, 1): -4.0,
        (1, 0): -6.0,
        (1, 1): -7.0,
    }
    text = "\n".join(bench.fold_report(list(runs), runs, "header"))
    # +2.0 +2.1 +1.9 +2.0: a tight positive interval; P10 - M is clearly negative.
    assert "Mask R-CNN P10 + box prior - Mask R-CNN P10: +2.0 [" in text
    assert "Mask R-CNN P10 + box prior - Mask R-CNN M:" in text
    lines = {line.split(":")[0].strip(): line for line in text.splitlines() if " - " in line}
    assert "+2.0 [+1.9, +2.1], n = 4: excludes 0" in lines["Mask R-CNN P10 + box prior - Mask R-CNN P10"]
    assert "n = 4: excludes 0" in lines["Mask R-CNN P10 - Mask R-CNN M"]
    assert "s0f0 -10.0, s0f1 -4.0, s1f0 -6.0, s1f1 -7.0" in lines["Mask R-CNN P10 - Mask R-CNN M"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--folds", "3"], "number of folds 3"),
        (["--folds", "1"], "at least 2"),
        (["--folds", "4", "--fold-indices", "0", "4"], "fold index 4 is out of range"),
        (["--fold-indices", "0"], "--fold-indices needs --folds"),
    ],
)
def test_bad_fold_arguments_are_named(bench, capsys, args, message):
    with pytest.raises(SystemExit):
        bench.main(["--rows", "Mask R-CNN P10", *args])
    assert message in capsys.readouterr().err


def test_resume_reports_saved_runs_without_training(bench, tmp_path, capsys):
    rows = bench.STUDIES["box_prior"]
    saved = {
        name: {"0": {str(k): {"AP": 20.0 + i + k, "AP50": 40.0 + i} for k in (0, 2)}}
        for i, name in enumerate(rows)
    }
    payload = {"iters": 5, "folds": 4, "fold_indices": [0, 2], "seeds": [0], "results": saved}
    (tmp_path / "box_prior_folds4.json").write_text(json.dumps(payload))
    argv = ["--study", "box_prior", "--folds", "4", "--fold-indices", "0", "2", "--seeds", "0"]
    runs = bench.main([*argv, "--iters", "5", "--resume", "--output", str(tmp_path)])
    assert runs["CondInst P10 + box prior"] == {
        (0, 0): {"AP": 27.0, "AP50": 47.0},
        (0, 2): {"AP": 29.0, "AP50": 47.0},
    }
    out = capsys.readouterr().out
    assert "4-fold (folds [0, 2])" in out
    assert "CondInst P10 + box prior - CondInst P10: +2.0 [+2.0, +2.0], n = 2" in out
    assert (tmp_path / "box_prior.png").stat().st_size > 0


def test_each_row_trains_once_per_seed_and_fold_on_the_folds_sets(bench, tmp_path, monkeypatch, capsys):
    calls = []

    def fake_train(name, seed, iters, output_dir, train_set, val_set):
        calls.append((name, seed, output_dir.name, train_set, val_set))
        return {"AP": 10.0 + seed + (name == "BoxInst B"), "AP50": 20.0}

    monkeypatch.setattr(bench, "_train_row", fake_train)
    monkeypatch.setattr(bench, "_build_points", lambda *a, **k: None)
    monkeypatch.setattr(
        bench,
        "register_nuclei_folds",
        lambda root, num_folds, folds, seed: {folds[0]: {"train": tmp_path / "t.json"}},
    )
    old = {"iters": 3, "folds": 2, "results": {"Mask R-CNN M": {"5": {"0": {"AP": 1.0, "AP50": 2.0}}}}}
    (tmp_path / "rows_folds2.json").write_text(json.dumps(old))
    rows = ["CondInst M", "BoxInst B", "Mask R-CNN P3"]
    argv = ["--rows", *rows, "--folds", "2", "--seeds", "0", "1", "--iters", "3", "--resume"]
    runs = bench.main([*argv, "--output", str(tmp_path)])
    assert [c[:3] for c in calls] == [(r, s, f"fold{k}of2") for r in rows for s in (0, 1) for k in (0, 1)]
    assert {(c[3], c[4]) for c in calls if c[0] == "BoxInst B"} == {
        ("nuclei_fold0of2_train_boxes", "nuclei_fold0of2_val"),
        ("nuclei_fold1of2_train_boxes", "nuclei_fold1of2_val"),
    }
    assert {c[3] for c in calls if c[0] == "Mask R-CNN P3"} == {
        "nuclei_fold0of2_train_p3",
        "nuclei_fold1of2_train_p3",
    }
    assert {c[3] for c in calls if c[0] == "CondInst M"} == {"nuclei_fold0of2_train", "nuclei_fold1of2_train"}
    assert sorted(runs["BoxInst B"]) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    saved = json.loads((tmp_path / "rows_folds2.json").read_text())
    assert saved["results"]["Mask R-CNN M"] == {"5": {"0": {"AP": 1.0, "AP50": 2.0}}}  # kept
    assert saved["results"]["BoxInst B"]["1"]["0"] == {"AP": 12.0, "AP50": 20.0}
    assert (saved["seeds"], saved["fold_indices"]) == ([0, 1, 5], [0, 1])
    assert "BoxInst B - CondInst M: +1.0 [+1.0, +1.0], n = 4: excludes 0" in capsys.readouterr().out
