#!/usr/bin/env python
"""Whole-model train-step time and peak memory: CondInst / BoxInst vs Mask R-CNN trained from points.

    python bench/bench_condinst_train_step.py                        # CPU, nuclei miniature configs
    python bench/bench_condinst_train_step.py --device cuda --coco   # GPU, the COCO R-50-FPN configs

Variants, each a whole model built from its own config (``configs/nuclei/...``, or with ``--coco``
``configs/COCO/...`` with one class and no pretrained weights):

* ``mask_rcnn P10 (baseline)``: Mask R-CNN from 10 points per object (``mask_rcnn_R_18_FPN_P10``;
  ``mask_rcnn_R_50_FPN_3x_P10``);
* ``condinst M``: CondInst (``PointSupCondInst``) from masks, dice loss (``condinst_R_18_FPN_M``;
  ``condinst_R_50_FPN_3x_M``);
* ``condinst P10``: CondInst from points, 5 of the 10 per object per iteration
  (``condinst_R_18_FPN_P10``; ``condinst_R_50_FPN_3x_P10_point_aug``);
* ``boxinst B``: BoxInst from boxes only, projection + pairwise losses (``boxinst_R_18_FPN_B``;
  ``boxinst_R_50_FPN_3x_B``);
* ``mask_rcnn P10 + box prior`` and ``condinst P10 + box prior`` (issue 26, ``MODEL.BOX_PRIOR``): the
  P10 models plus BoxInst's two box terms (``*_P10_box_prior``; ``*_3x_P10_point_aug_box_prior``).
  ``condinst P10 + box prior, BoxInst sampling`` is the same with BoxInst's mask instances (the 64
  best-scoring positive locations per image instead of CondInst's MAX_PROPOSALS) and its 16
  mask-branch channels: BoxInst's own model plus the point loss. The goals: Mask R-CNN with the prior
  at most 1.15x the Mask R-CNN P10 step, CondInst with the prior at most 1.05x BoxInst's step.

Every variant trains on the same nuclei images (``point_sup.data.register_nuclei(root, seed=0)``)
in the same order, through the trainer's own loader (``PointSupTrainer.build_train_loader``) on its
config's dataset: ``nuclei_train`` (masks), ``nuclei_train_p10`` (points) or ``nuclei_train_boxes``
(boxes only; with ``--coco`` the nuclei counterpart of the config's COCO set). Those are three views of
the same images, so only the annotation kind differs: the loader's shuffle is seeded with ``--seed``
right before it is built, the shorter side is fixed (``--size``) and flips are off. Each worker records
the file names of its batches and the report says whether they agreed.

Each variant runs in its own process (so that peak memory is its own: max RSS on CPU,
``torch.cuda.max_memory_allocated`` on GPU), warm-up steps then timed steps
(bench/bench_train_step.py's helpers). Printed: median step time and peak memory per variant, then,
last, both as ratios to the baseline measured in this run.
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

BASELINE = "mask_rcnn P10 (baseline)"
# name -> (nuclei miniature config, COCO config), relative to configs/
VARIANTS: dict[str, tuple[str, str]] = {
    BASELINE: ("nuclei/mask_rcnn_R_18_FPN_P10.yaml", "COCO/mask_rcnn_R_50_FPN_3x_P10.yaml"),
    "condinst M": ("nuclei/condinst_R_18_FPN_M.yaml", "COCO/condinst_R_50_FPN_3x_M.yaml"),
    "condinst P10": ("nuclei/condinst_R_18_FPN_P10.yaml", "COCO/condinst_R_50_FPN_3x_P10_point_aug.yaml"),
    "boxinst B": ("nuclei/boxinst_R_18_FPN_B.yaml", "COCO/boxinst_R_50_FPN_3x_B.yaml"),
    "mask_rcnn P10 + box prior": (
        "nuclei/mask_rcnn_R_18_FPN_P10_box_prior.yaml",
        "COCO/mask_rcnn_R_50_FPN_3x_P10_point_aug_box_prior.yaml",
    ),
    "condinst P10 + box prior": (
        "nuclei/condinst_R_18_FPN_P10_box_prior.yaml",
        "COCO/condinst_R_50_FPN_3x_P10_point_aug_box_prior.yaml",
    ),
    "condinst P10 + box prior, BoxInst sampling": (
        "nuclei/condinst_R_18_FPN_P10_box_prior.yaml",
        "COCO/condinst_R_50_FPN_3x_P10_point_aug_box_prior.yaml",
    ),
}
# Overrides of a variant on top of its config file.
VARIANT_OVERRIDES: dict[str, list] = {
    "condinst P10 + box prior, BoxInst sampling": [
        "MODEL.CONDINST.MAX_PROPOSALS", -1,
        "MODEL.CONDINST.TOPK_PROPOSALS_PER_IM", 64,
        "MODEL.CONDINST.MASK_BRANCH.OUT_CHANNELS", 16,
    ],
}  # fmt: skip
# The box prior's goals (issue 26): (variant, its reference, the largest step-time ratio).
BOX_PRIOR_GOALS = (
    ("mask_rcnn P10 + box prior", BASELINE, 1.15),
    ("condinst P10 + box prior", "boxinst B", 1.05),
    ("condinst P10 + box prior, BoxInst sampling", "boxinst B", 1.05),
)
# The COCO configs' training sets -> the nuclei views with the same kind of annotation.
COCO_TO_NUCLEI = {
    "coco_2017_train": "nuclei_train",
    "coco_2017_train_p10": "nuclei_train_p10",
    "coco_2017_train_boxes": "nuclei_train_boxes",
}


def variant_config(name: str, args: argparse.Namespace):
    """The variant's config (not frozen): its file plus the benchmark's overrides."""
    from point_sup.engine.experiment import load_config

    nuclei_file, coco_file = VARIANTS[name]
    path = ROOT / "configs" / (coco_file if args.coco else nuclei_file)
    overrides = [
        "MODEL.DEVICE", args.device,
        "MODEL.WEIGHTS", "",
        "DATASETS.TEST", (),
        "SOLVER.IMS_PER_BATCH", args.batch,
        "INPUT.MASK_FORMAT", "bitmask",
        "INPUT.MIN_SIZE_TRAIN", (args.size,),
        "INPUT.MAX_SIZE_TRAIN", int(args.size * 4 / 3) + 1,
        "INPUT.RANDOM_FLIP", "none",
        "DATALOADER.NUM_WORKERS", 0,
        "SEED", args.seed,
        "OUTPUT_DIR", tempfile.mkdtemp(prefix="point_sup_bench_"),
        *VARIANT_OVERRIDES.get(name, []),
    ]  # fmt: skip
    if args.coco:
        overrides += ["MODEL.ROI_HEADS.NUM_CLASSES", 1, "MODEL.FCOS.NUM_CLASSES", 1]
    cfg = load_config(str(path), overrides)
    if args.coco:
        (train,) = cfg.DATASETS.TRAIN
        cfg.DATASETS.TRAIN = (COCO_TO_NUCLEI[train],)
    return cfg, path


def run_variant(name: str, args: argparse.Namespace) -> dict:
    """In this process: build the variant, run warm-up + timed steps, return its measurements."""
    import torch

    import point_sup  # noqa: F401  (applies point_sup.compat before detectron2 is used)
    from point_sup.data import register_nuclei

    torch.set_num_threads(args.threads)
    register_nuclei(Path(args.data) / "nuclei", seed=0)
    cfg, _ = variant_config(name, args)
    cfg.freeze()
    trainer = build_seeded_loader_trainer(cfg)
    images: list[list[str]] = []
    trainer.model.register_forward_pre_hook(
        lambda _module, inputs: images.append([os.path.basename(d["file_name"]) for d in inputs[0]])
    )
    times = time_train_steps(trainer, args.device, args.warmup, args.steps)
    return {
        "step_s": statistics.median(times),
        "peak_mib": peak_memory_mib(args.device),
        "params": sum(p.numel() for p in trainer.model.parameters()),
        "meta_arch": cfg.MODEL.META_ARCHITECTURE,
        "dataset": cfg.DATASETS.TRAIN[0],
        "images": images,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--coco", action="store_true", help="the COCO R-50-FPN configs (one class, no weights); for GPUs"
    )
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument(
        "--size", type=int, default=None, help="shorter image side (default 256; 800 with --coco)"
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seeds the loaders' shuffle (same in all)")
    parser.add_argument("--data", default=os.environ.get("DETECTRON2_DATASETS", "datasets"))
    parser.add_argument(
        "--variants", nargs="*", default=list(VARIANTS), help=f"of: {', '.join(map(repr, VARIANTS))}"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.size is None:
        args.size = 800 if args.coco else 256
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if args.worker:
        print("RESULT " + json.dumps(run_variant(args.worker, args)), flush=True)
        return
    results = run_workers(__file__, args.variants, sys.argv[1:])
    base = results.get(BASELINE)
    configs = "configs/COCO (R-50-FPN)" if args.coco else "configs/nuclei (R-18-FPN)"
    print(f"\ntrain step, {args.device}, batch {args.batch}, shorter side {args.size}, {configs}")
    seen = {name: r["images"] for name, r in results.items()}
    if len({repr(v) for v in seen.values()}) == 1:
        n = sum(map(len, next(iter(seen.values()))))
        print(f"images: the same {n} in every variant (warm-up + timed steps), only annotations differ")
    else:
        print("WARNING: the variants saw different images:")
        for name, batches in seen.items():
            print(f"  {name}: {batches}")
    print(f"{'variant':<44}{'dataset':<20}{'step (s)':>10}{'x base':>8}{'peak MiB':>10}{'x base':>8}")
    ratios = {}
    for name, r in results.items():
        rs = r["step_s"] / base["step_s"] if base else float("nan")
        rm = r["peak_mib"] / base["peak_mib"] if base else float("nan")
        ratios[name] = (rs, rm)
        print(f"{name:<44}{r['dataset']:<20}{r['step_s']:>10.3f}{rs:>8.2f}{r['peak_mib']:>10.0f}{rm:>8.2f}")
    print(f"\nratios to {BASELINE}, measured in this run:")
    for name, (rs, rm) in ratios.items():
        if name != BASELINE:
            print(f"  {name:<44} step time x{rs:.2f}  peak memory x{rm:.2f}")
    for name, reference, goal in BOX_PRIOR_GOALS:
        if name in results and reference in results:
            ratio = results[name]["step_s"] / results[reference]["step_s"]
            verdict = "met" if ratio <= goal else "NOT met"
            print(f"box prior: {name} / {reference} step time x{ratio:.2f} (goal <= {goal}: {verdict})")


if __name__ == "__main__":
    main()
