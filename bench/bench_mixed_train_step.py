#!/usr/bin/env python
"""Whole-model train step of a mixed-supervision batch against the pure-mask and pure-point steps.

    python bench/bench_mixed_train_step.py                       # CPU, every mask head
    python bench/bench_mixed_train_step.py --heads mask_rcnn --device cuda

For each mask head (Mask R-CNN, PointRend, Implicit PointRend, CondInst) three whole models built
from the nuclei miniature configs, with the same weights and on the same images in the same order
(bench/bench_train_step.py's seeded loader), differing only in what the annotations carry:

* ``M``: the head's mask config (``configs/nuclei/{head}_R_18_FPN_M.yaml``) on ``nuclei_train``;
* ``P10``: its point config (``..._P10.yaml``) on ``nuclei_train_p10``;
* ``mixed``: the P10 config with ``MODEL.MIXED_SUP.ENABLED`` (``INPUT.POINT_SUP`` off) on the same
  images with half of the nuclei keeping their mask and the others P10
  (``write_point_annotation_file(..., keep_masks_fraction=0.5)``, registered for this run only), so
  both per-kind losses do real work in every batch.

Each variant runs in its own process (peak memory its own), warm-up then timed steps; printed: the
median step and peak memory per variant, then, last, each head's mixed step as a ratio to the slower
of its M and P10 steps measured in this run (the goal: at most 1.05).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench_train_step import build_seeded_loader_trainer, peak_memory_mib, run_workers, time_train_steps

ROOT = Path(__file__).resolve().parents[1]
HEADS = ("mask_rcnn", "point_rend", "implicit_point_rend", "condinst")
KINDS = ("M", "P10", "mixed")
MIXED_DATASET = "bench_nuclei_train_p10_m50"


def variant_config(head: str, kind: str, args: argparse.Namespace):
    """The frozen config of one variant (see the module docstring)."""
    from point_sup.engine.experiment import load_config

    path = ROOT / "configs" / "nuclei" / f"{head}_R_18_FPN_{'M' if kind == 'M' else 'P10'}.yaml"
    overrides = [
        "MODEL.DEVICE", args.device,
        "DATASETS.TEST", (),
        "SOLVER.IMS_PER_BATCH", args.batch,
        "INPUT.MIN_SIZE_TRAIN", (args.size,),
        "INPUT.MAX_SIZE_TRAIN", int(args.size * 4 / 3) + 1,
        "INPUT.RANDOM_FLIP", "none",
        "DATALOADER.NUM_WORKERS", 0,
        "SEED", args.seed,
        "OUTPUT_DIR", tempfile.mkdtemp(prefix="point_sup_bench_"),
    ]  # fmt: skip
    if kind == "mixed":
        overrides += [
            "INPUT.POINT_SUP",
            False,
            "MODEL.MIXED_SUP.ENABLED",
            True,
            "DATASETS.TRAIN",
            (MIXED_DATASET,),
        ]
    cfg = load_config(str(path), overrides)
    cfg.freeze()
    return cfg


def run_variant(name: str, args: argparse.Namespace) -> dict:
    """In this process: build the variant ``"{head} {kind}"``, time its steps, return measurements."""
    import torch

    import point_sup  # noqa: F401  (registers the heads)
    from point_sup.data import register_coco_instances_with_points, register_nuclei
    from point_sup.data.mixed_supervision import count_supervision
    from point_sup_labels.point_file import write_point_annotation_file

    torch.set_num_threads(args.threads)
    head, kind = name.split(" ")
    paths = register_nuclei(Path(args.data) / "nuclei", seed=0)
    mixed_json = Path(tempfile.mkdtemp(prefix="point_sup_bench_")) / f"{MIXED_DATASET}.json"
    write_point_annotation_file(paths["train"], mixed_json, num_points=10, seed=0, keep_masks_fraction=0.5)
    register_coco_instances_with_points(
        MIXED_DATASET, {"thing_classes": ["nucleus"]}, str(mixed_json), str(paths["image_root"])
    )
    cfg = variant_config(head, kind, args)
    trainer = build_seeded_loader_trainer(cfg)
    images: list[list[str]] = []
    trainer.model.register_forward_pre_hook(
        lambda _module, inputs: images.append([os.path.basename(d["file_name"]) for d in inputs[0]])
    )
    times = time_train_steps(trainer, args.device, args.warmup, args.steps)
    mix = count_supervision([{"annotations": json.loads(mixed_json.read_text())["annotations"]}])
    return {
        "step_s": statistics.median(times),
        "peak_mib": peak_memory_mib(args.device),
        "dataset": cfg.DATASETS.TRAIN[0],
        "images": images,
        "mix": mix,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--heads", nargs="+", default=list(HEADS), choices=HEADS)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=256, help="shorter image side")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seeds the weights and the loaders' shuffle")
    parser.add_argument("--data", default=os.environ.get("DETECTRON2_DATASETS", "datasets"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(run_variant(args.worker, args)), flush=True)
        return
    names = [f"{head} {kind}" for head in args.heads for kind in KINDS]
    results = run_workers(__file__, names, sys.argv[1:])
    mix = next(iter(results.values()))["mix"]
    print(
        f"\ntrain step, {args.device}, batch {args.batch}, shorter side {args.size}, "
        "configs/nuclei (R-18-FPN)"
    )
    print(
        f"mixed set: {mix['mask']} nuclei with their mask, {mix['points']} with P10, {mix['box']} box only; "
        + (
            "the same images in every variant"
            if len({repr(r["images"]) for r in results.values()}) == 1
            else "WARNING: the variants saw different images"
        )
    )
    print(f"{'variant':<28}{'dataset':<28}{'step (s)':>10}{'peak MiB':>10}")
    for name, r in results.items():
        print(f"{name:<28}{r['dataset']:<28}{r['step_s']:>10.3f}{r['peak_mib']:>10.0f}")
    print("\nmixed step / slower of the M and P10 steps, measured in this run (goal <= 1.05):")
    for head in args.heads:
        slower = max(results[f"{head} M"]["step_s"], results[f"{head} P10"]["step_s"])
        memory = max(results[f"{head} M"]["peak_mib"], results[f"{head} P10"]["peak_mib"])
        mixed = results[f"{head} mixed"]
        step, peak = mixed["step_s"] / slower, mixed["peak_mib"] / memory
        print(f"  {head:<20} step x{step:.3f}  peak memory x{peak:.3f}")


if __name__ == "__main__":
    main()
