#!/usr/bin/env python
"""Run every speed/memory benchmark of point_sup, one after the other, and keep their reports.

    python bench/run_all.py [--quick] [--device cuda] [--output output/bench]

Each benchmark prints ratios against a baseline measured in the same run (see its docstring):

* bench_point_simulation.py   - P_N simulator vs per-annotation annToMask (100k instances)
* bench_mask_head_speed.py    - point-loss Mask R-CNN head vs Detectron2's head (head step)
* bench_implicit_point_rend.py - Implicit PointRend paper-faithful vs light (size, step)
* bench_train_step.py         - whole-model train step + peak memory, all heads vs the standard one
* bench_condinst_train_step.py - whole-model train step + peak memory, CondInst/BoxInst vs
  Mask R-CNN P10
* bench_mixed_train_step.py   - whole-model train step of a mixed-supervision batch vs the slower of
  the pure-mask and pure-point steps, every mask head
* bench_inference.py          - whole-model inference (images/s, mask-branch time, peak memory) at 100
  detections per image, every mask head; point-loss head vs standard, Implicit PointRend vs PointRend
* bench_evaluation.py         - COCO box/mask AP with faster-coco-eval's COCOeval vs pycocotools'
  (5,000 images x 100 detections), and the whole evaluator call
* bench_host_syncs.py         - host-device synchronisations per training step, every shipped COCO R50
  config vs Detectron2's Mask R-CNN (limit: + 25)
* bench_pseudo_masks.py       - tools/generate_pseudo_masks.py images/s, default batch vs batch 1
* bench_export.py             - CPU inference, eager vs TorchScript vs ONNX Runtime files of every head
  (images/s, peak memory, same outputs), and tools/predict.py with each file
(bench/gpu_acceptance.py, the GPU acceptance of every COCO R50 config, runs on its own:
docs/gpu_acceptance.md.)

``--quick`` shrinks each run (fewer instances/repeats) for a smoke test. The accuracy study is
separate and long: ``bench/miniature_replication.py``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def benchmarks(device: str, quick: bool) -> list[list[str]]:
    gpu = [] if device == "cpu" else ["--device", device]
    return [
        ["bench_point_simulation.py", *(["--num-instances", "20000"] if quick else [])],
        ["bench_mask_head_speed.py", *gpu, *(["--repeats", "3"] if quick else [])],
        ["bench_implicit_point_rend.py", *gpu, *(["--iters", "1"] if quick else [])],
        ["bench_train_step.py", *gpu, *(["--steps", "2", "--warmup", "1"] if quick else [])],
        ["bench_condinst_train_step.py", *gpu, *(["--steps", "2", "--warmup", "1"] if quick else [])],
        ["bench_mixed_train_step.py", *gpu, *(["--steps", "2", "--warmup", "1"] if quick else [])],
        [
            "bench_inference.py",
            *gpu,
            *(["--iters", "1", "--warmup", "1", "--size", "256", "384"] if quick else []),
        ],
        ["bench_evaluation.py", *(["--images", "200", "--dets", "20"] if quick else [])],
        ["bench_host_syncs.py", *gpu],
        ["bench_pseudo_masks.py", *(["--repeats", "1"] if quick else [])],
        [
            "bench_export.py",
            *(["--heads", "mask_rcnn", "condinst", "--images", "2", "--min-size", "192"] if quick else []),
        ],
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default="output/bench", help="directory for one log per benchmark")
    args = parser.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    for script, *script_args in benchmarks(args.device, args.quick):
        print(f"\n=== {script} {' '.join(script_args)}", flush=True)
        t0 = time.time()
        with open(out / f"{Path(script).stem}.log", "w") as log:
            proc = subprocess.Popen(
                [sys.executable, str(HERE / script), *script_args],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            for line in proc.stdout:
                log.write(line)
                if not line.startswith(("[", "W1", "/")):  # the reports, not the libraries' logs
                    print(line, end="", flush=True)
            proc.wait()
        log_path = out / f"{Path(script).stem}.log"
        print(f"=== {script}: exit {proc.returncode}, {time.time() - t0:.0f} s, log {log_path}")
        if proc.returncode:
            failed.append(script)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
