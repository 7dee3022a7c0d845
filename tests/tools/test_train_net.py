"""tools/train_net.py end to end: Python-driven run, --eval-only, resume after a kill, 2 processes on CPU."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TRAIN_NET = ROOT / "tools" / "train_net.py"
P10_CONFIG = ROOT / "configs" / "nuclei" / "mask_rcnn_R_18_FPN_P10.yaml"


def _load_train_net():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_net", TRAIN_NET)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _opts(tiny_overrides, out_dir, **extra):
    opts = [str(v) for v in tiny_overrides]
    opts += [
        "DATASETS.TRAIN",
        "('nuclei_train_p10',)",
        "DATASETS.TEST",
        "('nuclei_val',)",
        "OUTPUT_DIR",
        str(out_dir),
    ]
    for k, v in extra.items():
        opts += [k, str(v)]
    return opts


def test_tool_shape_and_python_driven_run(nuclei_datasets, tiny_overrides, tmp_path):
    """setup(args) / Trainer / main(args), driven from Python: trains, checkpoints, evaluates."""
    train_net = _load_train_net()
    assert issubclass(train_net.Trainer, train_net.PointSupTrainer)
    # --register: a user's own P_N file (here the simulated nuclei one) under a new name.
    user_json, images = nuclei_datasets["train_p10"], nuclei_datasets["image_root"]
    opts = _opts(tiny_overrides, tmp_path, **{"SOLVER.MAX_ITER": 2, "DATASETS.TRAIN": "('user_p10',)"})
    args = train_net.argument_parser().parse_args(
        ["--register", "user_p10", str(user_json), str(images), "--config-file", str(P10_CONFIG), *opts]
    )
    train_net.register_datasets(args)
    cfg = train_net.setup(args)
    assert cfg.INPUT.POINT_SUP and cfg.MODEL.ROI_MASK_HEAD.NAME == "PointSupMaskRCNNConvUpsampleHead"
    assert cfg.DATASETS.TRAIN == ("user_p10",)
    train_net.main(args)
    assert (tmp_path / "model_final.pth").is_file()
    # --eval-only on the saved checkpoint reports COCO mask AP on the held-out region.
    args = train_net.argument_parser().parse_args(
        ["--config-file", str(P10_CONFIG), "--eval-only",
         *_opts(tiny_overrides, tmp_path, **{"MODEL.WEIGHTS": tmp_path / "model_final.pth"})]
    )  # fmt: skip
    results = train_net.main(args)
    assert set(results["segm"]) >= {"AP", "AP50", "AP75"}


def _env(datasets_root: Path) -> dict:
    # The subprocess registers the nuclei sets on `import point_sup` from $DETECTRON2_DATASETS/nuclei.
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", DETECTRON2_DATASETS=str(datasets_root))


@pytest.mark.slow
def test_resume_after_kill(nuclei_datasets, tiny_overrides, tmp_path):
    out = tmp_path / "out"
    env = _env(nuclei_datasets["datasets_root"])
    cmd = [sys.executable, str(TRAIN_NET), "--config-file", str(P10_CONFIG)]
    opts = _opts(tiny_overrides, out, **{"SOLVER.MAX_ITER": 40, "SOLVER.CHECKPOINT_PERIOD": 3})
    proc = subprocess.Popen([*cmd, *opts], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 400
        while not (out / "model_0000005.pth").exists():
            assert proc.poll() is None, "training ended before the second checkpoint"
            assert time.time() < deadline, "no checkpoint in time"
            time.sleep(0.5)
        time.sleep(1.0)  # let the checkpointer finish writing last_checkpoint
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    last = (out / "last_checkpoint").read_text().strip()
    done = int(last.split("_")[1].split(".")[0])  # model_0000005.pth: iterations 0..5 done
    assert not (out / "model_final.pth").exists()
    resume_opts = _opts(tiny_overrides, out, **{"SOLVER.MAX_ITER": done + 4, "SOLVER.CHECKPOINT_PERIOD": 3})
    resumed = subprocess.run(
        [*cmd, "--resume", *resume_opts],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert f"Loading checkpoint from {out / last}" in log or last in log
    assert f"Starting training from iteration {done + 1}" in log
    assert (out / "model_final.pth").is_file()
    # Resumed from the checkpoint's weights and iteration, not from scratch.
    assert "Starting training from iteration 0" not in log


@pytest.mark.slow
def test_two_process_cpu_training(nuclei_datasets, tiny_overrides, tmp_path):
    """--num-gpus 2 on a CPU machine: two gloo processes train, checkpoint and evaluate."""
    out = tmp_path / "out"
    opts = _opts(tiny_overrides, out, **{"SOLVER.MAX_ITER": 3, "SOLVER.IMS_PER_BATCH": 2})
    proc = subprocess.run(
        [sys.executable, str(TRAIN_NET), "--num-gpus", "2", "--config-file", str(P10_CONFIG), *opts],
        env=_env(nuclei_datasets["datasets_root"]), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "Rank of current process: 0. World size: 2" in log
    assert (out / "model_final.pth").is_file()
    assert "Evaluation results for segm" in log
