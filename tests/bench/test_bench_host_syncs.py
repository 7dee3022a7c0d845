"""bench/bench_host_syncs.py: its counter counts what makes a CUDA host wait and nothing else, and
the command runs a config next to Detectron2's Mask R-CNN and prints its row."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "bench_host_syncs.py"


@pytest.fixture(scope="module")
def bench():
    """The script as a module (it lives outside any package)."""
    spec = importlib.util.spec_from_file_location("bench_host_syncs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _count(bench, fn) -> dict:
    counter = bench.SyncCounter("cpu")
    with counter:
        fn()
    return dict(counter.kinds)


def test_counter_counts_each_kind_once(bench) -> None:
    x = torch.randn(6, 3, requires_grad=True)
    mask = x.detach()[:, 0] > 0
    assert _count(bench, lambda: x[mask].sum().backward()) == {"bool index": 1, "bool index_put": 1}
    assert _count(bench, lambda: x.sum().item()) == {"item": 1}
    assert _count(bench, lambda: bool(mask.any())) == {"item": 1}
    assert _count(bench, lambda: torch.where(mask)) == {"nonzero": 1}
    assert _count(bench, lambda: mask.tolist()) == {"to host": 1}
    # .cpu() is the copy; the .item() of the host copy is free (Detectron2's loss logging).
    assert _count(bench, lambda: x.detach().sum().cpu().item()) == {"to host": 1}
    assert _count(bench, lambda: torch.unique(mask)) == {"unique": 1}
    counts = torch.tensor([1, 2])
    assert _count(bench, lambda: torch.repeat_interleave(counts)) == {"repeat_interleave": 1}
    assert _count(bench, lambda: torch.tensor([1.0, 2.0], device="cpu")) == {"H2D": 1}


def test_counter_leaves_sync_free_ops_alone(bench) -> None:
    x = torch.randn(6, 3)
    mask = x[:, 0] > 0
    counts = torch.tensor([1, 2])

    def sync_free() -> None:
        y = x.clone()
        y[mask] = 1.0  # masked_fill_ on CUDA
        torch.tensor(3).item()  # a Python literal stays on the host
        torch.nonzero_static(mask, size=2)
        torch.repeat_interleave(counts, counts, output_size=3)
        x[torch.tensor([0, 2])].sum()
        torch.where(mask[:, None], x, 0.0)
        torch.argsort(mask.to(torch.uint8), stable=True)

    assert _count(bench, sync_free) == {}


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
