"""bench/bench_host_syncs.py: the command runs a config next to Detectron2's Mask R-CNN and prints
its row (its counter is tested in tests/utils/test_host_syncs.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "bench_host_syncs.py"


@pytest.fixture(scope="module")
def bench():
    """The script as a module (it lives outside any package)."""
    spec = importlib.util.spec_from_file_location("bench_host_syncs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nuclei_counterpart_of_each_training_set(bench) -> None:
    assert bench.nuclei_dataset("coco_2017_train") == "nuclei_train"
    assert bench.nuclei_dataset("coco_2017_train_p10_m10") == "nuclei_train_p10_m10"
    assert bench.nuclei_dataset("coco_2017_train_boxes") == "nuclei_train_boxes"
    assert bench.nuclei_dataset("coco_2017_train_pseudo_masks") == "nuclei_train"
    with pytest.raises(ValueError, match="lvis"):
        bench.nuclei_dataset("lvis_v1_train")


def test_command_prints_a_row_and_passes(nuclei_datasets) -> None:
    config = "configs/COCO/mask_rcnn_R_50_FPN_3x_mixed.yaml"
    cmd = [sys.executable, str(SCRIPT), "--configs", config, "--steps", "1"]
    cmd += ["--data", str(nuclei_datasets["datasets_root"])]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.strip()}
    assert "mask_rcnn_R_50_FPN_3x_mixed" in rows and "Detectron2" in rows
    assert "PASS:" in proc.stdout
