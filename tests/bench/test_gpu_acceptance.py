"""bench/gpu_acceptance.py: its rows cover every shipped COCO R50 config, its groupings hold, its
from-scratch initialisation keeps a frozen-BN ResNet-50 in range, and without CUDA the whole command
runs its CPU dry run of every row and exits 0 (the GPU run itself needs the borrowed machine:
docs/gpu_acceptance.md)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_acceptance.py"
SHIPPED = sorted(p.stem for p in (ROOT / "configs" / "COCO").glob("*R_50*.yaml"))


@pytest.fixture(scope="module")
def ga():
    """The script as a module (it lives outside any package)."""
    spec = importlib.util.spec_from_file_location("gpu_acceptance", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_acceptance"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _run(tmp_path: Path, nuclei_datasets, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """The script as a user runs it, with CUDA hidden (so also on a GPU machine it dry-runs)."""
    output = tmp_path / "acceptance.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable, str(SCRIPT), "--data", str(nuclei_datasets["datasets_root"] / "nuclei"),
        "--output", str(output), *args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    return proc, json.loads(output.read_text()) if output.is_file() else {}


def _table_rows(stdout: str) -> list[list[str]]:
    """The data rows of the printed table (GitHub format), cells stripped."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("| ") and not ln.startswith("| row ")]
    return [[cell.strip() for cell in ln.strip("|").split("|")] for ln in lines]


def test_rows_name_every_shipped_coco_r50_config_exactly_once(ga):
    named = [c for row in ga.ROWS for c in row.configs]
    assert sorted(named) == SHIPPED
    assert ga.ROWS[0].measured == ga.BASELINE  # the baseline runs first and every ratio uses it
    assert sorted(ga.PRIORITY) == sorted(row.name for row in ga.ROWS)
    assert ga.PRIORITY[0] == ga.ROWS[0].name


def test_grouped_configs_differ_from_the_measured_one_only_in_schedule_and_allowed_keys(ga):
    for row in ga.ROWS:
        differences = ga.grouping_differences(row, "cpu", 0)
        assert set(differences) == set(row.grouped)
        assert all(keys == [] for keys in differences.values()), (row.name, differences)
    # The check has teeth: PointRend M is not Mask R-CNN M with another schedule.
    wrong = ga.Row("wrong", "mask_rcnn_R_50_FPN_3x_M", grouped=("point_rend_R_50_FPN_3x_M",))
    assert "MODEL.ROI_MASK_HEAD.NAME" in ga.grouping_differences(wrong, "cpu", 0)["point_rend_R_50_FPN_3x_M"]


def test_every_measured_config_trains_on_a_registered_nuclei_set_with_the_real_input_sizes(
    ga, nuclei_datasets
):
    from detectron2.data import DatasetCatalog

    for row in ga.ROWS:
        cfg = ga.build_cfg(row.measured, "cpu", False, 0, tiny=False, point_sup_keys=row is not ga.ROWS[0])
        assert all(name in DatasetCatalog for name in cfg.DATASETS.TRAIN), (row.name, cfg.DATASETS.TRAIN)
        assert max(cfg.INPUT.MIN_SIZE_TRAIN) == 800 and cfg.INPUT.MAX_SIZE_TRAIN == 1333
        assert cfg.SOLVER.IMS_PER_BATCH == 2 and cfg.MODEL.WEIGHTS == ""
        assert cfg.MODEL.RESNETS.NORM == "FrozenBN" and cfg.MODEL.BACKBONE.FREEZE_AT == 2  # as shipped
        clip = cfg.SOLVER.CLIP_GRADIENTS
        assert clip.ENABLED and clip.CLIP_TYPE == "norm" and clip.CLIP_VALUE == 1.0
        if row is not ga.ROWS[0]:
            ga.check_data(cfg)  # point_sup's start-up checks: the nuclei set carries the supervision


@pytest.fixture
def one_thread():
    """Tiny convolutions run fastest on one thread (two contend on CI's 2 shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_frozen_batchnorm_calibration_keeps_a_random_resnet50_in_range(ga, one_thread):
    from detectron2.modeling import build_model

    cfg = ga.build_cfg(ga.BASELINE, "cpu", False, 0, tiny=True, point_sup_keys=False)
    torch.manual_seed(0)
    model = build_model(cfg)
    generator = torch.Generator().manual_seed(0)
    batch = [{"image": torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8, generator=generator)}] * 2

    def feature_std() -> dict[str, float]:
        with torch.no_grad():
            features = model.backbone(model.preprocess_image(batch).tensor)
        return {k: v.std().item() for k, v in features.items()}

    before = feature_std()
    assert ga.calibrate_frozen_batchnorm(model, batch) == 53  # stem + 16 bottlenecks x 3 + 4 shortcuts
    after = feature_std()
    assert min(before.values()) > 100  # identity statistics: activations grow block after block
    assert max(after.values()) < 20


def test_loss_log_reports_non_finite_losses_by_name(ga):
    log = ga.LossLog()
    log.add({"loss_cls": torch.tensor(1.0), "loss_mask": torch.tensor(0.5)})
    assert log.summary() == (True, [], {"loss_cls": 1.0, "loss_mask": 0.5})
    log.add({"loss_cls": torch.tensor(float("inf")), "loss_mask": torch.tensor(0.25)})
    log.add({"loss_cls": torch.tensor(2.0), "loss_mask": torch.tensor(float("nan"))})
    finite, bad, last = log.summary()
    assert not finite and bad == ["loss_cls", "loss_mask"]
    assert last["loss_cls"] == 2.0 and math.isnan(last["loss_mask"])


def test_a_budget_that_runs_out_skips_and_lists_rows_instead_of_running_over(tmp_path, nuclei_datasets):
    proc, results = _run(tmp_path, nuclei_datasets, "--max-minutes", "0", "--no-amp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CUDA is not available" in proc.stdout
    statuses = {r["row"]: r["status"] for r in results["results"]}
    assert statuses.pop("D2 Mask R-CNN (baseline)") == "ok"  # the baseline always runs
    assert len(statuses) == 16 and set(statuses.values()) == {"skipped"}
    skipped = next(ln for ln in proc.stdout.splitlines() if ln.startswith("SKIPPED for the time budget"))
    assert all(f"{name} (AMP off)" in skipped for name in statuses)
    assert "CPU dry run passed: 0 of 1 runs failed, 16 skipped" in proc.stdout


@pytest.mark.slow  # 34 runs (17 rows x AMP off/on) of 2 iterations and one inference: 25-45 s on 2 cores
def test_dry_run_without_cuda_trains_every_row_with_and_without_amp_and_exits_0(tmp_path, nuclei_datasets):
    proc, results = _run(tmp_path, nuclei_datasets)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert out.startswith(
        "CUDA is not available: no GPU acceptance is measured here; CPU dry run of every row."
    )
    assert re.search(
        r"CPU dry run passed: 0 of 34 runs failed, 0 skipped; \d+ s in all; no GPU measured\.", out
    )
    for stem in SHIPPED:
        assert stem in out, stem
    rows = _table_rows(out)
    assert len(rows) == 34
    for name, amp, step_s, ratio, _, _, _, finite, infer_s, detections, _ in rows:
        assert amp in ("off", "on") and float(step_s) > 0 and float(ratio) > 0, name
        assert finite == "yes" and float(infer_s) > 0 and int(detections) > 0, name
    assert rows[0][:2] == ["D2 Mask R-CNN (baseline)", "off"] and rows[0][3] == rows[1][3] == "1.00"
    assert len(results["results"]) == 34
    for r in results["results"]:
        assert r["status"] == "ok" and r["finite"] and not r["infer_error"], r
        assert r["iters"] == 2 and r["frozen_bn_calibrated"] == 53 and r["last_losses"]
