"""tools/demo.py as a newcomer runs it: stages, progress bars, the table on the console, the rest logged."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from point_sup.data.nuclei import NUCLEI_SPLITS

ROOT = Path(__file__).resolve().parents[2]
# What Detectron2's, fvcore's, pycocotools' and Python's messages look like; none belongs on the console.
NOT_ON_CONSOLE = (
    "d2.", "detectron2", "fvcore", "Starting training", "Loading", "Average Precision", "index created",
    "GeneralizedRCNN", "Warning", "warnings.warn", "is_fx_tracing", "|",
)  # fmt: skip


def _run_demo(output: Path, datasets_root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DETECTRON2_DATASETS": str(datasets_root)}
    cmd = [sys.executable, str(ROOT / "tools" / "demo.py"), "--output", str(output), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)


@pytest.mark.slow  # two trainings of 4 iterations and four evaluations: 1-2 minutes on 2 CPU cores
def test_demo_console_shows_stages_progress_and_table_only(tmp_path):
    out, log = tmp_path / "out", tmp_path / "out" / "log.txt"
    proc = _run_demo(out, tmp_path / "datasets", "--iters", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]

    expected = [
        rf"point_sup demo: .* {re.escape(str(log))}",
        r"\[1/4\] building the nuclei dataset and simulating P10 annotations",
        r"\[2/4\] training Mask R-CNN with masks \(M\): 4 iterations on CPU, then evaluation .*",
        r"\[3/4\] training Mask R-CNN with 10 points per object \(P10\): 4 iterations .*",
        r"\[4/4\] drawing .*",
        r"",
        r"point_sup demo: Mask R-CNN R18-FPN from scratch on DSB2018 nuclei \(100 training objects\), "
        r"4 iterations, seed 0",
        r"supervision    annotation time   mask AP    AP50  AP / AP\(M\)    paper \(COCO\)",
        r"M +132\.0 min +\d+\.\d +\d+\.\d +(\d+%|nan%) +37\.2 \(100%\)",
        r"P10 +26\.7 min +\d+\.\d +\d+\.\d +(\d+%|nan%) +36\.1 \(97%\)",
        r"P10 is 5\.0x faster to annotate than polygon masks \(paper's time model\)\.",
        rf"picture: {re.escape(str(out / 'points_and_predictions.png'))}    total time: \d+\.\d min",
        rf"log: {re.escape(str(log))}",
    ]
    lines = proc.stdout.splitlines()
    assert len(lines) == len(expected), proc.stdout
    for line, pattern in zip(lines, expected, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)
    for marker in NOT_ON_CONSOLE:
        assert marker not in proc.stdout, marker
    # stderr: nothing but the two tqdm bars (redrawn with carriage returns).
    bars = [part.strip() for part in re.split(r"[\r\n]", proc.stderr) if part.strip()]
    assert bars and all(re.match(r"(M|P10) training: +\d+%\|", part) for part in bars), proc.stderr[-3000:]
    assert any("4/4" in part for part in bars if part.startswith("M "))
    assert any("4/4" in part for part in bars if part.startswith("P10 "))

    # The log has what the console does not: Detectron2's lines, pycocotools' prints, the table.
    text = log.read_text()
    for needle in (
        "detectron2.engine.train_loop INFO] Starting training from iteration 0",
        "detectron2.data.datasets.coco INFO] Loaded",
        "Average Precision  (AP) @[ IoU=0.50:0.95",
        "[1/4] building the nuclei dataset",
        "P10 is 5.0x faster to annotate",
    ):
        assert needle in text, needle
    # Who printed the COCO summary: faster-coco-eval through the evaluator's logger (where it is
    # installed, point_sup.evaluation.fast_coco), else pycocotools' or Detectron2's C++ COCOeval prints.
    assert "Evaluating predictions with faster-coco-eval" in text or "pycocotools INFO]" in text

    # The picture: the first validation tile enlarged 3x, points | predictions, 4 white columns between.
    r0, r1, c0, c1 = NUCLEI_SPLITS["val"][0]
    with Image.open(out / "points_and_predictions.png") as picture:
        assert picture.size == (2 * 3 * (c1 - c0) + 4, 3 * (r1 - r0))


def test_demo_failure_shows_the_traceback_and_logs_it(tmp_path):
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")  # the datasets root cannot be created: stage 1 fails
    out = tmp_path / "out"
    proc = _run_demo(out, not_a_directory, "--iters", "1")
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr
    assert "NotADirectoryError" in proc.stderr
    assert "[1/4]" in proc.stdout and "[2/4]" not in proc.stdout
    text = (out / "log.txt").read_text()
    assert "the demo failed" in text and "Traceback" in text and "NotADirectoryError" in text
