#!/usr/bin/env python
"""Host-device synchronisations per training step: every shipped config against Detectron2's Mask R-CNN.

    python bench/bench_host_syncs.py                      # CPU, every configs/COCO/*R_50*3x*.yaml
    python bench/bench_host_syncs.py --trace mixed        # where each sync of the mixed configs comes from
    python bench/bench_host_syncs.py --device cuda        # on a GPU: the copies counted by aten

What is counted, and what is not, is point_sup.utils.host_syncs' docstring: the ops whose result a
CUDA host must read (``item``, ``nonzero``, boolean-mask indexing, ``unique``, copies to the host,
...), and apart from them (``H2D``, not in the totals) blocking host-to-device copies.

The step: each config of ``--configs`` (default: every ``configs/COCO/*R_50*3x*.yaml``, one row each)
and Detectron2's own Mask R-CNN (its model zoo's ``COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml``
built by Detectron2's ``DefaultTrainer``: StandardROIHeads, ``MaskRCNNConvUpsampleHead`` trained
from masks, Detectron2's ``DatasetMapper``), each shrunk by :data:`SHRINK` to a ResNet-18 at 128 px
on 2 images, on the real nuclei tiles (point_sup.data.nuclei): the config's COCO training set is
replaced by the nuclei set of the same supervision (``coco_2017_train_p10`` -> ``nuclei_train_p10``,
the mixed ``_p10_m10`` / ``_p10_b50`` sets simulated by point_sup_labels' rules, the box-only view,
masks for the pseudo-mask set). Everything is seeded, the loader right before it is built, so every
config sees the same images. The batches are taken from the trainer's own loader (its mapper) before
counting: data loading (in workers on a GPU machine) is not counted. Counted: the trainer's whole
``run_step`` (forward, backward, Detectron2's loss logging, optimizer step), ``--steps`` times on
consecutive batches (a count is deterministic for a batch; mixed batches differ in which kinds the
foreground proposals have, hence in which code paths run).

Printed per config: the syncs of its worst step and of every step, the difference to Detectron2's
Mask R-CNN measured in this run, the H2D copies and the top op kinds; with ``--trace``, the call sites.
Exit status 1 (and FAIL) when a config exceeds Detectron2's count by more than ``--margin`` (issue
23: 25).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "Detectron2 Mask R-CNN (M)"
DETECTRON2_CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"

# Shrinks any of configs/COCO/*.yaml (and Detectron2's model-zoo Mask R-CNN) to a model that trains a
# step on CPU in about a second on the nuclei tiles (1 class), as the tests' tiny configs do: ResNet-18
# with GroupNorm (no pretrained weights exist here), narrow heads, 128-px images, 2 images per batch.
# The head type, supervision, losses and point counts of the file are kept: they decide the syncs.
# Keys that a config does not have (Detectron2's own config lacks point_sup's) are skipped.
SHRINK = [
    "MODEL.WEIGHTS", "",                                   # no downloadable weights
    "MODEL.BACKBONE.FREEZE_AT", 0,
    "MODEL.RESNETS.DEPTH", 18,                             # backbone: ResNet-18, GroupNorm
    "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
    "MODEL.RESNETS.NUM_GROUPS", 1,
    "MODEL.RESNETS.WIDTH_PER_GROUP", 64,
    "MODEL.RESNETS.NORM", "GN",
    "MODEL.FPN.OUT_CHANNELS", 32,                          # widths
    "MODEL.ROI_BOX_HEAD.FC_DIM", 64,
    "MODEL.ROI_MASK_HEAD.CONV_DIM", 32,
    "MODEL.ROI_MASK_HEAD.FC_DIM", 64,
    "MODEL.POINT_HEAD.FC_DIM", 32,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 200,                   # proposals and sampled RoIs
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", 100,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32,
    "MODEL.POINT_HEAD.TRAIN_NUM_POINTS", 49,
    "MODEL.ROI_HEADS.NUM_CLASSES", 1,                      # the nuclei: one class
    "MODEL.POINT_HEAD.NUM_CLASSES", 1,
    "MODEL.FCOS.NUM_CLASSES", 1,
    "INPUT.MIN_SIZE_TRAIN", (128,),                        # input size
    "INPUT.MAX_SIZE_TRAIN", 192,
    "INPUT.MASK_FORMAT", "bitmask",                        # the nuclei masks are RLE
    "SOLVER.IMS_PER_BATCH", 2,                             # batch: 2 images
    "SOLVER.WARMUP_ITERS", 0,
    "DATALOADER.NUM_WORKERS", 0,
    "DATASETS.TEST", (),
]  # fmt: skip


def nuclei_dataset(name: str) -> str:
    """The nuclei training set with the supervision of a config's COCO training set."""
    if name == "coco_2017_train_pseudo_masks":  # self-training's second stage trains from masks
        return "nuclei_train"
    if not name.startswith("coco_2017_train"):
        raise ValueError(f"no nuclei counterpart for the training set {name!r}")
    return "nuclei_train" + name[len("coco_2017_train") :]


def shrink(cfg, extra: list) -> None:
    """Merge :data:`SHRINK` (the keys ``cfg`` has) and ``extra`` into ``cfg``."""
    pairs = list(zip(SHRINK[::2], SHRINK[1::2], strict=True))
    known = []
    for key, value in pairs:
        node = cfg
        for part in key.split("."):
            node = node.get(part) if hasattr(node, "get") else None
        if node is not None:
            known += [key, value]
    cfg.merge_from_list(known + extra)


def build_config(path: str | None, args: argparse.Namespace):
    """The frozen shrunk config of ``path`` (None: Detectron2's model-zoo Mask R-CNN)."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg

    from point_sup.engine.experiment import load_config

    common = [
        "MODEL.DEVICE", args.device,
        "SEED", args.seed,
        "OUTPUT_DIR", tempfile.mkdtemp(prefix="point_sup_bench_"),
    ]  # fmt: skip
    if path is None:
        cfg = get_cfg()
        cfg.merge_from_file(model_zoo.get_config_file(DETECTRON2_CONFIG))
    else:
        cfg = load_config(path, [])
    train = tuple(nuclei_dataset(name) for name in cfg.DATASETS.TRAIN)
    shrink(cfg, [*common, "DATASETS.TRAIN", train])
    cfg.freeze()
    return cfg


def count_config(path: str | None, args: argparse.Namespace) -> dict:
    """Build the trainer of one config, fetch ``--steps`` batches, count each step's syncs."""
    import torch
    from detectron2.engine import DefaultTrainer
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.events import EventStorage

    from point_sup.engine import PointSupTrainer
    from point_sup.utils.host_syncs import H2D, SyncCounter

    cfg = build_config(path, args)

    class Seeded(DefaultTrainer if path is None else PointSupTrainer):
        @classmethod
        def build_train_loader(cls, cfg):
            seed_all_rng(cfg.SEED)
            return super().build_train_loader(cfg)

    seed_all_rng(cfg.SEED)
    trainer = Seeded(cfg)
    loader = iter(trainer.data_loader)
    batches = [next(loader) for _ in range(args.steps)]
    del loader
    # The step reads its batch from this iterator: data loading stays out of the count.
    trainer._trainer._data_loader_iter_obj = iter(batches)
    counts, h2d, sites = [], [], Counter()
    with EventStorage(0) as storage:
        trainer.storage = storage
        for i in range(args.steps):
            trainer.iter = storage.iter = i
            counter = SyncCounter(args.device, trace=args.trace is not None)
            anomaly = torch.autograd.detect_anomaly(check_nan=False) if counter.trace else nullcontext()
            with anomaly, counter:
                trainer.run_step()
            h2d.append(counter.kinds.pop(H2D, 0))
            counts.append(counter.kinds)
            sites.update(counter.sites)
    worst = max(range(len(counts)), key=lambda i: sum(counts[i].values()))
    return {
        "totals": [sum(c.values()) for c in counts],
        "kinds": dict(counts[worst]),
        "h2d": h2d[worst],
        "sites": sites,
        "images": [[os.path.basename(d["file_name"]) for d in b] for b in batches],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--configs",
        nargs="*",
        default=sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs/COCO").glob("*R_50*3x*.yaml")),
        help="point_sup config files (default: every configs/COCO/*R_50*3x*.yaml)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=2, help="steps per config (the worst one is compared)")
    parser.add_argument("--margin", type=int, default=25, help="allowed syncs above Detectron2's")
    parser.add_argument("--top", type=int, default=4, help="op kinds shown per config")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seeds the weights, the loader and the points")
    parser.add_argument("--data", default=os.environ.get("DETECTRON2_DATASETS", "datasets"))
    parser.add_argument(
        "--trace",
        metavar="CONFIG",
        help="print where each sync of the configs whose name contains CONFIG comes from "
        "(anomaly mode records the forward call of a backward op; slower)",
    )
    parser.add_argument("--verbose", action="store_true", help="keep Detectron2's INFO logs")
    args = parser.parse_args()

    import torch
    from detectron2.utils.logger import setup_logger

    import point_sup  # noqa: F401  (registers point_sup's components)
    from point_sup.data import register_nuclei

    torch.set_num_threads(args.threads)
    if not args.verbose:
        for handler in setup_logger().handlers:  # the trainers find it set up and keep it
            handler.setLevel(logging.WARNING)
        logging.getLogger("point_sup").setLevel(logging.WARNING)
    register_nuclei(Path(args.data) / "nuclei", seed=args.seed)

    t0 = time.time()
    rows: dict[str, dict] = {}
    for path in [None, *args.configs]:
        name = BASELINE if path is None else Path(path).stem
        trace = args.trace is not None and args.trace in name
        run_args = argparse.Namespace(**{**vars(args), "trace": args.trace if trace else None})
        start = time.time()
        rows[name] = count_config(path, run_args)
        rows[name]["seconds"] = time.time() - start
        print(f"counted {name}: {rows[name]['totals']} ({rows[name]['seconds']:.1f} s)", file=sys.stderr)

    base = max(rows[BASELINE]["totals"])
    same_images = len({repr(r["images"]) for r in rows.values()}) == 1
    print(
        f"\nhost-device syncs per training step, {args.device}, worst of {args.steps} step(s) on the same "
        f"batches for every config ({'identical' if same_images else 'WARNING: different'} images), "
        f"2 nuclei images at 128 px, R-18 shrink; limit: Detectron2's + {args.margin}"
    )
    print(f"{'config':<54}{'syncs':>6}{'vs D2':>7}  {'per step':<14}{'H2D':>4}  top op kinds")
    failed = []
    for name, r in rows.items():
        total = max(r["totals"])
        kinds = sorted(r["kinds"].items(), key=lambda kv: (-kv[1], kv[0]))[: args.top]
        diff = "" if name == BASELINE else f"{total - base:+d}"
        over = name != BASELINE and total > base + args.margin
        if over:
            failed.append(name)
        steps = " ".join(str(t) for t in r["totals"])
        top = ", ".join(f"{k} {n}" for k, n in kinds)
        print(f"{name:<54}{total:>6}{diff:>7}  {steps:<14}{r['h2d']:>4}  {top}{'   FAIL' if over else ''}")
    for name, r in rows.items():
        if r["sites"]:
            print(f"\nsync sites of {name}, all steps (count, kind, innermost frame outside torch):")
            for (kind, site), n in sorted(r["sites"].items(), key=lambda kv: (-kv[1], kv[0])):
                print(f"  {n:>3}  {kind:<17} {site}")
    print(f"\n{time.time() - t0:.0f} s; H2D: blocking host-to-device copies, not in the syncs (docstring)")
    if failed:
        print(f"FAIL: {len(failed)} config(s) exceed Detectron2's count + {args.margin}: {', '.join(failed)}")
        return 1
    print(f"PASS: every config within Detectron2's count + {args.margin}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
