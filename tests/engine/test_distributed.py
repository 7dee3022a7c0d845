"""Identical replicas on every rank and no data-dependent crash, in a 2-process gloo run.

tests/engine/distributed_worker.py trains every head family for a few iterations through Detectron2's
launch, with per-rank seeds as ``default_setup`` sets them, where one rank at a time gets a batch with
no instances, no labelled point, only points outside their boxes, only crowd objects or (mixed) only
box-only objects, and the last iteration has no instance on any rank.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from point_sup.engine.distributed import broadcast_buffers, create_ddp_model

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("distributed_worker.py")
COCO = ROOT / "configs" / "COCO"
CONFIGS = [
    "mask_rcnn_R_50_FPN_3x_P10_point_aug",
    "point_rend_R_50_FPN_3x_P10_point_aug",
    "implicit_point_rend_R_50_FPN_3x_P10_point_aug",
    "implicit_point_rend_R_50_FPN_3x_P10_point_aug_small",
    "condinst_R_50_FPN_3x_P10_point_aug",
    "boxinst_R_50_FPN_3x_B",
    "mask_rcnn_R_50_FPN_3x_mixed",
    "point_rend_R_50_FPN_3x_mixed",
    "implicit_point_rend_R_50_FPN_3x_mixed",
    "condinst_R_50_FPN_3x_mixed",
    "boxinst_R_50_FPN_3x_mixed",
    "mask_rcnn_R_50_FPN_3x_P10_point_aug_box_prior",
    "condinst_R_50_FPN_3x_P10_point_aug_box_prior",
]


def _run(tmp_path: Path, nuclei_datasets, tiny_overrides, configs, *extra) -> dict[str, dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", DETECTRON2_DATASETS=str(nuclei_datasets["datasets_root"]))
    opts = [str(v) for v in tiny_overrides] + ["MODEL.POINT_HEAD.TRAIN_NUM_POINTS", "16"]
    cmd = [sys.executable, str(WORKER), "--num-gpus", "2", "--output", str(tmp_path), *extra,
           "--configs", ",".join(str(COCO / f"{c}.yaml") for c in configs), *opts]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}


def _batch_norm_statistics(names: list[str]) -> list[str]:
    return [n for n in names if n.endswith(("running_mean", "running_var", "num_batches_tracked"))]


@pytest.mark.slow
def test_every_head_family_trains_identically_on_two_ranks(nuclei_datasets, tiny_overrides, tmp_path):
    reports = _run(tmp_path, nuclei_datasets, tiny_overrides, CONFIGS)
    assert set(reports) == set(CONFIGS)
    for name, report in reports.items():
        # The ranks were seeded differently (SEED + rank): their freshly built models differ ...
        assert report["before_wrap"], name
        if name.startswith("implicit"):
            assert "roi_heads.mask_head.point_head.pos_enc_gaussian" in report["before_wrap"]
        # ... and are identical, parameters and buffers, once wrapped,
        assert report["after_wrap"] == [], name
        # after an iteration per hard case on one rank, and one with no instance anywhere.
        assert len(report["losses"]) == (len(report["cases"]) + 1) // 2 + 1, name
        for losses in report["losses"]:
            assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()), (name, losses)
        differing = report["after_train"]
        if name.startswith(("condinst", "boxinst")):
            # Unsynchronised BatchNorm in CondInst's mask branch (AdelaiDet's recipe): its running
            # statistics are each rank's own, and only they may differ.
            assert differing == _batch_norm_statistics(differing), (name, differing)
            assert all(n.startswith("mask_branch.") for n in differing), (name, differing)
        else:
            assert differing == [], (name, differing)


@pytest.mark.slow
def test_condinst_with_synchronised_batch_norm_keeps_every_buffer_identical(
    nuclei_datasets, tiny_overrides, tmp_path
):
    # naiveSyncBN is Detectron2's gloo-capable synchronised BatchNorm; GPUs use "SyncBN".
    reports = _run(
        tmp_path, nuclei_datasets, tiny_overrides, ["condinst_R_50_FPN_3x_P10_point_aug"],
        "--mask-branch-norm", "naiveSyncBN", "--tag", "syncbn",
    )  # fmt: skip
    (report,) = reports.values()
    assert report["after_wrap"] == [] and report["after_train"] == []


def test_one_process_wrapping_is_a_no_op():
    model = torch.nn.BatchNorm1d(3)
    assert create_ddp_model(model, broadcast_buffers=False) is model
    before = model.running_mean.clone()
    broadcast_buffers(model)
    assert torch.equal(model.running_mean, before)
