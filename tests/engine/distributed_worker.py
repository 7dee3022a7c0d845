"""Two-process (gloo) training of every head family through tools/train_net.py's launch path.

Run by tests/engine/test_distributed.py as users run ``tools/train_net.py --num-gpus 2``:
Detectron2's ``launch`` starts one process per rank, ``default_setup`` seeds rank r with SEED + r,
and :class:`~point_sup.engine.PointSupTrainer` builds, wraps (DDP, no ``find_unused_parameters``) and
trains the model. Only the training batches are the test's: each rank gets its own batch per
iteration, built from the real nuclei records by the project's mapper, so that one rank can hold a
batch no other rank has (no instances, no labelled point, points outside their boxes, crowd objects
only, box-only objects only).

For every config the rank-0 process writes ``<output>/<name>.json``: the state entries (parameters
and buffers) that differ between the ranks before wrapping, after wrapping and after training, and
the losses of every iteration.
"""

from __future__ import annotations

import copy
import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.engine import HookBase, default_argument_parser, default_setup, launch
from detectron2.utils import comm

import point_sup  # noqa: F401  (registers point_sup's heads, datasets and mapper)
from point_sup.config import is_condinst, is_mixed_supervision
from point_sup.data.dataset_mapper import PointSupDatasetMapper
from point_sup.engine import PointSupTrainer
from point_sup.engine.experiment import load_config

# Each iteration gives every rank its own batch; each hard case is on one rank while the other rank
# has another batch (a parameter without a gradient on any rank stalls or breaks DDP's reduction);
# the last iteration has no instance on any rank.
POINT_CASES = ["no_instances", "no_points", "points_outside_boxes", "crowd_only"]
MIXED_CASES = [*POINT_CASES, "box_only"]
BOX_CASES = ["no_instances", "crowd_only"]


def _differing(states: list[dict[str, torch.Tensor]]) -> list[str]:
    first = states[0]
    return sorted(k for k in first if any(not torch.equal(first[k], s[k]) for s in states[1:]))


def _gathered_state(model: torch.nn.Module) -> list[dict[str, torch.Tensor]]:
    model = getattr(model, "module", model)
    return comm.all_gather({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})


def _with_points_outside(anno: dict) -> dict:
    x, y, w, h = anno["bbox"]
    n = len(anno["point_labels"])
    # Half the points left of the box, half above it (or below/right at the image's top-left edge).
    px = x - 2.0 if x >= 2.0 else x + w + 2.0
    py = y - 2.0 if y >= 2.0 else y + h + 2.0
    coords = np.array([[px, y + h / 2] if i % 2 else [x + w / 2, py] for i in range(n)], dtype=np.float64)
    return {**anno, "point_coords": coords}


def _records(cfg) -> list[dict]:
    """The normal training record of the config's supervision (one real nuclei tile)."""
    masks = DatasetCatalog.get("nuclei_train")[:1]
    points = DatasetCatalog.get("nuclei_train_p10")[:1]
    if is_mixed_supervision(cfg):
        records = copy.deepcopy(masks)
        for record, with_points in zip(records, points, strict=True):
            pairs = zip(record["annotations"], with_points["annotations"], strict=True)
            for i, (anno, p) in enumerate(pairs):
                kind = i % 3  # masks, points and boxes alike in every image
                if kind:
                    anno.pop("segmentation")
                if kind == 1:
                    anno["point_coords"], anno["point_labels"] = p["point_coords"], p["point_labels"]
        return records
    return copy.deepcopy(points if cfg.INPUT.POINT_SUP else masks)


def _case(record: dict, case: str) -> dict:
    record = copy.deepcopy(record)
    annos = record["annotations"]
    if case == "no_instances":
        record["annotations"] = []
    elif case == "crowd_only":
        record["annotations"] = [{**a, "iscrowd": 1} for a in annos]
    elif case == "no_points":
        record["annotations"] = [
            {**a, "point_coords": np.zeros((0, 2)), "point_labels": np.zeros((0,), dtype=np.int64)}
            if "point_labels" in a
            else a
            for a in annos
        ]
    elif case == "points_outside_boxes":
        record["annotations"] = [_with_points_outside(a) if "point_labels" in a else a for a in annos]
    elif case == "box_only":
        record["annotations"] = [
            {k: v for k, v in a.items() if k not in ("segmentation", "point_coords", "point_labels")}
            for a in annos
        ]
    elif case != "normal":
        raise ValueError(case)
    return record


def _schedule(cases: list[str]) -> list[tuple[str, str]]:
    """(rank 0's case, rank 1's case) per iteration: the cases two by two (with a normal batch when
    one is left over), then no instance on either rank."""
    pairs = [(cases[i + 1] if i + 1 < len(cases) else "normal", cases[i]) for i in range(0, len(cases), 2)]
    return [*pairs, ("no_instances", "no_instances")]


def _cases(cfg) -> list[str]:
    if is_mixed_supervision(cfg):
        return MIXED_CASES
    if cfg.INPUT.POINT_SUP:
        return POINT_CASES
    return BOX_CASES


class _Trainer(PointSupTrainer):
    """PointSupTrainer whose training batches are this script's, per rank; states are gathered."""

    before_wrap: ClassVar[list[dict[str, torch.Tensor]]] = []

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        cls.before_wrap = _gathered_state(model)
        return model

    @classmethod
    def build_train_loader(cls, cfg):
        mapper = PointSupDatasetMapper(cfg, is_train=True)
        records = _records(cfg)[:1]  # one image per rank and iteration
        rank = comm.get_rank()
        schedule = _schedule(_cases(cfg))
        # The mapper's augmentation (flip, point sampling) draws from the per-rank seeded RNGs.
        return [[mapper(_case(r, per_rank[rank])) for r in records] for per_rank in schedule]


class _Record(HookBase):
    def __init__(self, report: dict):
        self.report = report

    def before_train(self):
        self.report["after_wrap"] = _differing(_gathered_state(self.trainer.model))

    def after_step(self):
        latest = self.trainer.storage.latest()
        self.report["losses"].append({k: v[0] for k, v in latest.items() if k.startswith("loss")})

    def after_train(self):
        # Also run when an iteration raised: no collective then, so that the failing rank exits and
        # launch() stops the others, instead of every rank waiting in a different collective.
        if self.trainer.iter + 1 >= self.trainer.max_iter:
            self.report["after_train"] = _differing(_gathered_state(self.trainer.model))


def main(args) -> None:
    output = Path(args.output)
    for config in args.configs:
        name = Path(config).stem + ("_" + args.tag if args.tag else "")
        cfg = load_config(config, args.opts)
        schedule_length = len(_schedule(_cases(cfg)))
        cfg.merge_from_list(
            ["OUTPUT_DIR", str(output / name), "SEED", 1234, "SOLVER.MAX_ITER", schedule_length,
             "SOLVER.IMS_PER_BATCH", 2, "DATASETS.TEST", "()", "SOLVER.CHECKPOINT_PERIOD", 100000]
        )  # fmt: skip
        if is_condinst(cfg) and args.mask_branch_norm:
            cfg.merge_from_list(["MODEL.CONDINST.MASK_BRANCH.NORM", args.mask_branch_norm])
        cfg.freeze()
        default_setup(cfg, args)  # seeds rank r with SEED + r, as tools/train_net.py
        report = {"config": config, "cases": _cases(cfg), "losses": []}
        trainer = _Trainer(cfg)
        report["before_wrap"] = _differing(_Trainer.before_wrap)
        trainer.register_hooks([_Record(report)])
        trainer.train()
        if comm.is_main_process():
            (output / f"{name}.json").write_text(json.dumps(report, indent=1))
        comm.synchronize()


if __name__ == "__main__":
    parser = default_argument_parser()
    parser.add_argument("--output", required=True)
    parser.add_argument("--configs", required=True, type=lambda s: s.split(","), help="comma-separated")
    parser.add_argument("--tag", default="")
    parser.add_argument("--mask-branch-norm", default="")
    parsed = parser.parse_args()
    # A rank stuck in a collective fails after 3 minutes instead of Detectron2's 30.
    launch(main, parsed.num_gpus, dist_url="auto", args=(parsed,), timeout=timedelta(minutes=3))
    sys.exit(0)
