#!/usr/bin/env python
"""Whole-model train-step time and peak memory: the three point_sup heads vs Detectron2's mask head.

    python bench/bench_train_step.py                       # CPU, nuclei miniature model (R18-FPN)
    python bench/bench_train_step.py --device cuda --config configs/COCO/mask_rcnn_R_50_FPN_3x_M.yaml

Every variant is the same Mask R-CNN (backbone, RPN, box head, batch, images) with only the mask
head and its supervision changed:

* ``standard (M)``: Detectron2's ``MaskRCNNConvUpsampleHead`` trained from masks (the baseline);
* ``mask_rcnn (P10)``: ``PointSupMaskRCNNConvUpsampleHead`` trained from 10 points per object;
* ``point_rend (P10)``: ``PointSupPointRendMaskHead`` trained from points;
* ``implicit_point_rend (P10)``: ``PointSupImplicitPointRendMaskHead`` (paper-faithful parameter
  head), ``implicit_point_rend light (P10)`` (point_sup's lighter option) and ``implicit_point_rend
  small (P10)`` (``MODEL.IMPLICIT_POINTREND.PARAMS_RANK: 32``, the small config's head).

Each variant runs in its own process (so that peak memory is its own: max RSS on CPU,
``torch.cuda.max_memory_allocated`` on GPU) on the same real nuclei batches, after warm-up steps.
Printed: median step time, peak memory, and both as ratios to the baseline measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_RENDER = ["MODEL.ROI_MASK_HEAD.POOLER_TYPE", "", "MODEL.ROI_MASK_HEAD.POINT_HEAD_ON", True]
_IMPLICIT = [*_RENDER, "MODEL.POINT_HEAD.SUBDIVISION_STEPS", 3]
# name -> (mask head, trained from points, config overrides)
VARIANTS: dict[str, tuple[str, bool, list]] = {
    "standard (M)": ("MaskRCNNConvUpsampleHead", False, []),
    "mask_rcnn (P10)": ("PointSupMaskRCNNConvUpsampleHead", True, []),
    "point_rend (P10)": ("PointSupPointRendMaskHead", True, _RENDER),
    "implicit_point_rend (P10)": ("PointSupImplicitPointRendMaskHead", True, _IMPLICIT),
    "implicit_point_rend light (P10)": ("PointSupImplicitPointRendMaskHead", True, [*_IMPLICIT, "LIGHT"]),
    "implicit_point_rend small (P10)": (
        "PointSupImplicitPointRendMaskHead",
        True,
        [*_IMPLICIT, "MODEL.IMPLICIT_POINTREND.PARAMS_RANK", 32],
    ),
}


def time_train_steps(trainer, device: str, warmup: int, steps: int) -> list[float]:
    """Run ``warmup + steps`` iterations of ``trainer.run_step()`` (a Detectron2 trainer), as its
    ``train()`` would (an ``EventStorage``, ``iter`` set before each step); return the seconds of
    each of the last ``steps``, synchronising CUDA around each step on ``device == "cuda"``."""
    import torch
    from detectron2.utils.events import EventStorage

    times = []
    with EventStorage(0) as storage:
        trainer.storage = storage
        for i in range(warmup + steps):
            trainer.iter = storage.iter = i
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            trainer.run_step()
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return times


def build_seeded_loader_trainer(cfg):
    """A ``PointSupTrainer`` for the frozen ``cfg`` whose training loader is built right after
    seeding every RNG with ``cfg.SEED``: the loader's shuffle (Detectron2's TrainingSampler draws
    its seed from numpy) is then the same in every variant of a benchmark, whatever building the
    model drew before; the model's initial weights are seeded with ``cfg.SEED`` as well."""
    from detectron2.utils.env import seed_all_rng

    from point_sup.engine import PointSupTrainer

    class SeededLoaderTrainer(PointSupTrainer):
        @classmethod
        def build_train_loader(cls, cfg):
            seed_all_rng(cfg.SEED)
            return super().build_train_loader(cfg)

    seed_all_rng(cfg.SEED)
    return SeededLoaderTrainer(cfg)


def peak_memory_mib(device: str) -> float:
    """This process's peak memory so far, MiB: ``torch.cuda.max_memory_allocated`` on CUDA, else
    the maximum resident set size."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_workers(script: str, names: list[str], argv: list[str]) -> dict[str, dict]:
    """Run ``script --worker NAME *argv`` in a fresh process per name, in order (so that each peak
    memory is that variant's own); return ``{name: the dict its last "RESULT {json}" line printed}``.
    Exits with the worker's stderr tail if one fails."""
    results = {}
    for name in names:
        cmd = [sys.executable, script, "--worker", name, *argv]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
        results[name] = json.loads(lines[-1][len("RESULT ") :])
        print(f"measured {name}: {results[name]}", file=sys.stderr, flush=True)
    return results


def run_variant(name: str, args: argparse.Namespace) -> dict:
    """In this process: build the variant, run warm-up + timed steps, return its measurements."""
    import torch

    from point_sup.data import register_nuclei
    from point_sup.engine import PointSupTrainer
    from point_sup.engine.experiment import load_config
    from point_sup.modeling.implicit_point_rend import LIGHT_VARIANT_OVERRIDES

    torch.set_num_threads(args.threads)
    head, point_sup, extra = VARIANTS[name]
    if extra and extra[-1] == "LIGHT":
        extra = [*extra[:-1], *LIGHT_VARIANT_OVERRIDES]
    register_nuclei(Path(args.data) / "nuclei")
    overrides = [
        "MODEL.DEVICE", args.device,
        "MODEL.ROI_MASK_HEAD.NAME", head,
        "INPUT.POINT_SUP", point_sup,
        "DATASETS.TRAIN", ("nuclei_train_p10",) if point_sup else ("nuclei_train",),
        "DATASETS.TEST", (),
        "SOLVER.IMS_PER_BATCH", args.batch,
        "MODEL.ROI_HEADS.NUM_CLASSES", 1,
        "MODEL.POINT_HEAD.NUM_CLASSES", 1,
        "MODEL.WEIGHTS", "",
        "INPUT.MASK_FORMAT", "bitmask",
        "INPUT.MIN_SIZE_TRAIN", (args.size,),
        "INPUT.MAX_SIZE_TRAIN", int(args.size * 4 / 3) + 1,
        "DATALOADER.NUM_WORKERS", 0,
        "OUTPUT_DIR", tempfile.mkdtemp(prefix="point_sup_bench_"),
        *extra,
    ]  # fmt: skip
    cfg = load_config(args.config, overrides)
    cfg.freeze()
    trainer = PointSupTrainer(cfg)
    times = time_train_steps(trainer, args.device, args.warmup, args.steps)
    params = sum(p.numel() for p in trainer.model.roi_heads.mask_head.parameters())
    return {
        "step_s": statistics.median(times),
        "peak_mib": peak_memory_mib(args.device),
        "mask_head_params": params,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(ROOT / "configs/nuclei/Base-nuclei-R18-FPN.yaml"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=256, help="shorter image side")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", default=os.environ.get("DETECTRON2_DATASETS", "datasets"))
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(run_variant(args.worker, args)), flush=True)
        return
    results = run_workers(__file__, args.variants, sys.argv[1:])
    base = results.get("standard (M)")
    print(f"\ntrain step, {args.device}, batch {args.batch}, shorter side {args.size}, config {args.config}")
    print(f"{'variant':<34}{'step (s)':>10}{'x std':>8}{'peak MiB':>10}{'x std':>8}{'mask-head params':>18}")
    for name, r in results.items():
        rs = r["step_s"] / base["step_s"] if base else float("nan")
        rm = r["peak_mib"] / base["peak_mib"] if base else float("nan")
        print(
            f"{name:<34}{r['step_s']:>10.3f}{rs:>8.2f}{r['peak_mib']:>10.0f}{rm:>8.2f}{r['mask_head_params']:>18,}"
        )


if __name__ == "__main__":
    main()
