#!/usr/bin/env python
"""One-command GPU acceptance of every shipped COCO R50 config against Detectron2's Mask R-CNN.

    python bench/gpu_acceptance.py                         # CUDA: the acceptance (about 7 minutes)
    python bench/gpu_acceptance.py --dry-run               # CPU: 2 iterations per row at a tiny scale

For every shipped ``configs/COCO/*R_50*.yaml`` (configs whose training step is the same model on the
same data are one measured row that names them all; the script checks that they differ only where
the row says) and for Detectron2's own model-zoo ``COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x``
(the baseline), with AMP off and on: the config's model, built as ``tools/train_net.py`` builds it,
trains ``--iters`` (100) iterations at the config's real input sizes (``INPUT.MIN_SIZE_TRAIN`` up to
800, ``MAX_SIZE_TRAIN`` 1333) with 2 images per GPU, on real images that ship with the project's
set-up (the nuclei tiles of :mod:`point_sup.data.nuclei`, resized by the config's mapper; no
download), then runs inference on the validation tiles. Printed per row and AMP setting: median
iteration time, peak ``torch.cuda.max_memory_allocated``, host syncs per iteration
(``torch.cuda.set_sync_debug_mode("warn")``), the ratios to the baseline of the same AMP setting,
whether every loss of every iteration stayed finite, and inference time per image. Also written as
JSON to ``--output`` (after every run, so a run cut short leaves what it measured).

What is kept and what is changed from the configs (printed with the results):

* kept: the model (backbone, frozen BatchNorm and ``FREEZE_AT``, heads, 80 classes), the solver
  (SGD, base LR, warm-up schedule, weight decay), the input sizes and augmentations;
* changed: 2 images per GPU; no pretrained weights (none exist on the GPU machine): random seeded
  initialisation, with every frozen BatchNorm's statistics set from the first batch (data-dependent
  initialisation, the role ImageNet statistics play in the configs; with identity statistics a
  from-scratch ResNet-50's activations grow block after block, see the environment notes);
  gradient clipping (``SOLVER.CLIP_GRADIENTS`` "norm" 1.0 for every row, ``--clip``: without it the
  paper-faithful Implicit PointRend diverges from random weights within 3 iterations); the nuclei
  data (1 class id, RLE masks, so ``INPUT.MASK_FORMAT: bitmask``); inference keeps
  ``TEST.DETECTIONS_PER_IMAGE`` detections at any score (score thresholds 0), so the mask heads run
  on full detection lists even from an untrained model.

The training step is Detectron2's ``SimpleTrainer`` / ``AMPTrainer`` step (forward under
``torch.autocast(float16)`` with AMP, sum of the losses, ``zero_grad``, backward through a
``GradScaler`` with AMP, optimizer step) plus the LR scheduler's step, without the trainer's metric
logging, whose ``.cpu()`` of every loss every iteration would add the same host syncs to every row;
losses stay on the device and are checked for finiteness once, at the end of the run. Batches are
mapped once before the run (``--batches`` distinct batches, cycled) and given to the model on the
host as a data loader would give them, so the host-to-device copies are part of the step (and of
its host syncs).

Without CUDA (or with ``--dry-run``) it says so, runs every row for 2 iterations on the CPU at a
tiny scale (R50 depth at narrow widths, 64-px images; AMP as CPU float16 autocast) and exits 0 when
every loss stayed finite. docs/gpu_acceptance.md has the GPU machine's command and the time budget.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COCO_CONFIGS = ROOT / "configs" / "COCO"
BASELINE = "detectron2 model zoo: COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
ZOO_CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"


@dataclass(frozen=True)
class Row:
    """One measured row: the config trained (``measured``, a ``configs/COCO`` stem or ``BASELINE``)
    and the shipped configs it stands for (``grouped``), which may differ from it only in
    ``SOLVER.*`` (the schedule), ``DATASETS.*`` and the keys in ``allowed``."""

    name: str
    measured: str
    grouped: tuple[str, ...] = ()
    allowed: tuple[str, ...] = ()
    why: str = ""
    cost: float = 1.0  # conservative cost of one run relative to the baseline's, before it is measured

    @property
    def configs(self) -> tuple[str, ...]:
        """The shipped configs this row stands for."""
        return ((self.measured,) if self.measured != BASELINE else ()) + self.grouped


MR, PR, IPR = "mask_rcnn_R_50_FPN", "point_rend_R_50_FPN", "implicit_point_rend_R_50_FPN"
CI, BI = "condinst_R_50_FPN", "boxinst_R_50_FPN"
ROWS: list[Row] = [
    Row(
        "D2 Mask R-CNN (baseline)",
        BASELINE,
        grouped=(f"{MR}_1x_M", f"{MR}_3x_M", f"{MR}_6x_M", f"{MR}_3x_self_training"),
        why="Detectron2's MaskRCNNConvUpsampleHead trained from masks, as the model zoo's; the "
        "self-training stage is the M model trained on pseudo masks",
    ),
    Row(
        "Mask R-CNN P10",
        f"{MR}_3x_P10",
        grouped=(f"{MR}_1x_P10", f"{MR}_1x_P10_point_aug", f"{MR}_3x_P10_point_aug"),
        allowed=("INPUT.SAMPLE_POINTS",),
        why="point aug. only keeps 5 of the 10 points of each object in the data mapper",
        cost=1.1,
    ),
    Row("Mask R-CNN mixed", f"{MR}_3x_mixed", cost=1.2),
    Row("Mask R-CNN P10 + point aug + box prior", f"{MR}_3x_P10_point_aug_box_prior", cost=1.2),
    Row("PointRend M", f"{PR}_3x_M", cost=1.4),
    Row("PointRend P10 + point aug", f"{PR}_3x_P10_point_aug", cost=1.4),
    Row("PointRend mixed", f"{PR}_3x_mixed", cost=1.5),
    Row("Implicit PointRend M", f"{IPR}_3x_M", cost=3.0),
    Row("Implicit PointRend P10 + point aug", f"{IPR}_3x_P10_point_aug", cost=3.0),
    Row("Implicit PointRend small P10 + point aug", f"{IPR}_3x_P10_point_aug_small", cost=2.0),
    Row("Implicit PointRend mixed", f"{IPR}_3x_mixed", cost=3.0),
    Row("CondInst M", f"{CI}_3x_M", cost=1.5),
    Row("CondInst P10 + point aug", f"{CI}_3x_P10_point_aug", cost=1.5),
    Row("CondInst mixed", f"{CI}_3x_mixed", cost=1.5),
    Row("CondInst P10 + point aug + box prior", f"{CI}_3x_P10_point_aug_box_prior", cost=1.8),
    Row("BoxInst B", f"{BI}_3x_B", cost=1.8),
    Row("BoxInst mixed", f"{BI}_3x_mixed", cost=1.8),
]
# The order in which rows run (the baseline first: every ratio needs it), so that a time budget that
# runs out drops the variants least likely to differ from one already measured.
PRIORITY = [
    "D2 Mask R-CNN (baseline)",
    "Mask R-CNN P10",
    "PointRend P10 + point aug",
    "Implicit PointRend P10 + point aug",
    "CondInst P10 + point aug",
    "BoxInst B",
    "Implicit PointRend small P10 + point aug",
    "Mask R-CNN mixed",
    "PointRend mixed",
    "Implicit PointRend mixed",
    "CondInst mixed",
    "BoxInst mixed",
    "Mask R-CNN P10 + point aug + box prior",
    "CondInst P10 + point aug + box prior",
    "PointRend M",
    "Implicit PointRend M",
    "CondInst M",
]

# Every run (both models and both AMP settings) gets these.
COMMON_OVERRIDES: list[Any] = [
    "MODEL.WEIGHTS", "",
    "SOLVER.IMS_PER_BATCH", 2,
    "INPUT.MASK_FORMAT", "bitmask",
    "DATASETS.TEST", (),
    "DATALOADER.NUM_WORKERS", 0,
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,
    "MODEL.FCOS.INFERENCE_TH_TEST", 0.0,
]  # fmt: skip
# --dry-run: the same models at R50 depth with narrow widths and 64-px images, so that every row
# trains 2 iterations on 2 CPU cores in about a second.
TINY_OVERRIDES: list[Any] = [
    "MODEL.RESNETS.WIDTH_PER_GROUP", 8,
    "MODEL.RESNETS.RES2_OUT_CHANNELS", 32,
    "MODEL.FPN.OUT_CHANNELS", 64,  # FCOS's GroupNorm: 32 groups of 2 channels, even on a 1x1 P7
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 100,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", 50,
    "MODEL.RPN.PRE_NMS_TOPK_TEST", 50,
    "MODEL.RPN.POST_NMS_TOPK_TEST", 25,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32,
    "MODEL.ROI_BOX_HEAD.FC_DIM", 32,
    "MODEL.ROI_MASK_HEAD.CONV_DIM", 16,
    "MODEL.ROI_MASK_HEAD.FC_DIM", 32,
    "MODEL.POINT_HEAD.FC_DIM", 16,
    "MODEL.POINT_HEAD.TRAIN_NUM_POINTS", 49,
    "MODEL.CONDINST.MASK_BRANCH.CHANNELS", 16,
    "MODEL.FCOS.PRE_NMS_TOPK_TEST", 50,
    "TEST.DETECTIONS_PER_IMAGE", 10,
    "INPUT.MIN_SIZE_TRAIN", (64,),
    "INPUT.MAX_SIZE_TRAIN", 96,
    "INPUT.MIN_SIZE_TEST", 64,
    "INPUT.MAX_SIZE_TEST", 96,
]  # fmt: skip

logger = logging.getLogger("gpu_acceptance")


@dataclass
class RunResult:
    """One row trained and run for inference with one AMP setting."""

    row: str
    amp: bool
    status: str = "pending"  # ok | error | skipped
    error: str = ""
    infer_error: str = ""
    iters: int = 0
    step_s_median: float = math.nan
    step_s_mean: float = math.nan
    peak_train_gib: float = math.nan
    syncs_per_step: float = math.nan
    finite: bool | None = None
    nonfinite_losses: list[str] = field(default_factory=list)
    last_losses: dict[str, float] = field(default_factory=dict)
    infer_s_per_image: float = math.nan
    detections_per_image: float = math.nan
    frozen_bn_calibrated: int = 0
    params_m: float = math.nan
    amp_final_scale: float = math.nan
    wall_s: float = math.nan
    estimated_s: float = math.nan


# ----------------------------------------------------------------------------------------------
# Configs


def coco_config_path(stem: str) -> Path:
    return COCO_CONFIGS / f"{stem}.yaml"


def shipped_r50_configs() -> list[str]:
    """The stems of ``configs/COCO/*R_50*.yaml``."""
    return sorted(p.stem for p in COCO_CONFIGS.glob("*R_50*.yaml"))


def check_rows_cover_configs(rows: Sequence[Row]) -> None:
    """SystemExit unless every shipped COCO R50 config is in exactly one row and every named config exists."""
    named = [c for r in rows for c in r.configs]
    shipped = shipped_r50_configs()
    missing = sorted(set(shipped) - set(named))
    unknown = sorted(set(named) - set(shipped))
    twice = sorted({c for c in named if named.count(c) > 1})
    if missing or unknown or twice:
        sys.exit(
            f"bench/gpu_acceptance.py ROWS are out of date: configs in no row {missing}, "
            f"rows naming no shipped config {unknown}, configs in two rows {twice}"
        )


def zoo_config_file() -> str:
    """Detectron2's model-zoo Mask R-CNN R50-FPN 3x file (``model_zoo.get_config_file``, else the
    same path inside the installed package: ``detectron2.model_zoo`` imports ``pkg_resources``,
    which setuptools >= 81 no longer ships)."""
    try:
        from detectron2 import model_zoo

        return model_zoo.get_config_file(ZOO_CONFIG)
    except (ImportError, RuntimeError):
        import detectron2

        path = Path(detectron2.__file__).parent / "model_zoo" / "configs" / ZOO_CONFIG
        if not path.is_file():
            raise FileNotFoundError(f"Detectron2's model-zoo config {ZOO_CONFIG} is not installed") from None
        return str(path)


def nuclei_dataset(coco_name: str) -> str:
    """The nuclei dataset standing in for a COCO training set of the configs (same supervision)."""
    if coco_name == "coco_2017_train_pseudo_masks":  # pseudo masks are masks
        return "nuclei_train"
    if not coco_name.startswith("coco_2017_train"):
        raise ValueError(f"no nuclei stand-in for training set {coco_name!r}")
    return "nuclei_train" + coco_name[len("coco_2017_train") :]


def merge_existing(cfg, overrides: Sequence[Any]) -> None:
    """``cfg.merge_from_list`` of the KEY, VALUE pairs whose key exists in ``cfg`` (Detectron2's own
    config has no point_sup keys)."""
    pairs = []
    for key, value in zip(overrides[::2], overrides[1::2], strict=True):
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.get(part) if node is not None else None
        if node is not None and parts[-1] in node:
            pairs += [key, value]
    cfg.merge_from_list(pairs)


def build_cfg(
    row_measured: str,
    device: str,
    amp: bool,
    seed: int,
    tiny: bool,
    point_sup_keys: bool = True,
    clip: str = "norm",
    input_size: int | None = None,
):
    """The frozen config of one run: the file, :data:`COMMON_OVERRIDES`, the nuclei training set,
    the device, AMP and seed, gradient clipping (``clip``: Detectron2's ``SOLVER.CLIP_GRADIENTS``
    type "norm" or "value" at 1.0, or "off"), plus :data:`TINY_OVERRIDES` for ``tiny``. The baseline
    is loaded with Detectron2's ``get_cfg`` alone unless ``point_sup_keys``."""
    from detectron2.config import get_cfg

    from point_sup.engine.experiment import load_config

    if row_measured == BASELINE:
        if point_sup_keys:
            cfg = load_config(zoo_config_file())
        else:
            cfg = get_cfg()
            cfg.merge_from_file(zoo_config_file())
    else:
        cfg = load_config(str(coco_config_path(row_measured)))
    overrides = [
        *COMMON_OVERRIDES,
        "MODEL.DEVICE", device,
        "SOLVER.AMP.ENABLED", amp,
        "SEED", seed,
        "DATASETS.TRAIN", tuple(nuclei_dataset(n) for n in cfg.DATASETS.TRAIN),
        "SOLVER.CLIP_GRADIENTS.ENABLED", clip != "off",
        "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "value" if clip == "off" else clip,
        "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 1.0,
        *(TINY_OVERRIDES if tiny else []),
    ]  # fmt: skip
    if input_size:
        longer = input_size * 5 // 3
        overrides += ["INPUT.MIN_SIZE_TRAIN", (input_size,), "INPUT.MAX_SIZE_TRAIN", longer,
                      "INPUT.MIN_SIZE_TEST", input_size, "INPUT.MAX_SIZE_TEST", longer]  # fmt: skip
    merge_existing(cfg, overrides)
    cfg.freeze()
    return cfg


def flatten(node, prefix: str = "") -> dict[str, Any]:
    """A CfgNode as ``{"A.B.C": value}``."""
    out = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def grouping_differences(row: Row, device: str, seed: int) -> dict[str, list[str]]:
    """For every config grouped into ``row``: the keys (outside ``SOLVER``, ``DATASETS`` and
    ``row.allowed``) in which its run config differs from the measured one's. Empty lists
    mean the grouping holds."""
    ref = flatten(build_cfg(row.measured, device, False, seed, tiny=False))
    out = {}
    for stem in row.grouped:
        other = flatten(build_cfg(stem, device, False, seed, tiny=False))
        out[stem] = sorted(
            k
            for k in set(ref) | set(other)
            if ref.get(k) != other.get(k)
            and not k.startswith(("SOLVER.", "DATASETS.", "OUTPUT_DIR"))
            and k not in row.allowed
        )
    return out


# ----------------------------------------------------------------------------------------------
# Data


def register_data(root: Path) -> None:
    """Register the nuclei datasets of ``root`` (built there first, from the cached stardist wheel,
    unless its annotation files exist: the GPU machine gets them pre-built, see bench/gpu_wheels.sh)."""
    from point_sup.data import register_nuclei, register_nuclei_files

    wanted = [
        "nuclei_train",
        "nuclei_val",
        "nuclei_train_p10",
        "nuclei_train_p10_m10",
        "nuclei_train_p10_b50",
    ]
    if all((root / "annotations" / f"{name}.json").is_file() for name in wanted):
        register_nuclei_files(root, replace=True)
    else:
        logger.info("building the nuclei datasets under %s", root)
        register_nuclei(root)


def check_data(cfg) -> None:
    """point_sup's start-up checks of the training data against the config's supervision, with the
    class counts set to the nuclei data's (the runs keep the configs' 80 classes)."""
    from detectron2.data import MetadataCatalog

    from point_sup.config import is_condinst
    from point_sup.data import check_point_supervision

    num = len(MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).thing_classes)
    check = cfg.clone()
    check.defrost()
    check.merge_from_list(
        ["MODEL.FCOS.NUM_CLASSES" if is_condinst(check) else "MODEL.ROI_HEADS.NUM_CLASSES", num]
    )
    check.MODEL.POINT_HEAD.NUM_CLASSES = num
    check_point_supervision(check)


def prepare_batches(cfg, mapper, num_batches: int, seed: int) -> list[list[dict]]:
    """``num_batches`` batches of ``SOLVER.IMS_PER_BATCH`` images of the training set, mapped by
    ``mapper`` (resizing, flips, point sampling) once, seeded; images in a shuffled cycle."""
    import numpy as np
    from detectron2.data import DatasetCatalog
    from detectron2.utils.env import seed_all_rng

    dicts = [d for name in cfg.DATASETS.TRAIN for d in DatasetCatalog.get(name)]
    seed_all_rng(seed)
    order = np.random.RandomState(seed).permutation(len(dicts)).tolist()
    per = cfg.SOLVER.IMS_PER_BATCH
    return [
        [mapper(dicts[order[(b * per + i) % len(dicts)]]) for i in range(per)] for b in range(num_batches)
    ]


def prepare_test_inputs(cfg, mapper, num_images: int) -> list[dict]:
    from detectron2.data import DatasetCatalog

    dicts = DatasetCatalog.get("nuclei_val")
    return [mapper(dicts[i % len(dicts)]) for i in range(num_images)]


# ----------------------------------------------------------------------------------------------
# Model and step


def calibrate_frozen_batchnorm(model, batch: list[dict]) -> int:
    """Set the statistics of every ``FrozenBatchNorm2d`` of ``model.backbone`` to the per-channel mean
    and variance of its input on ``batch``, layer after layer in one forward pass (pre-hooks), and
    return how many were set. Randomly initialised with identity statistics, a frozen-BN ResNet-50's
    activations grow block after block; these statistics do what ImageNet's do for the configs."""
    import torch
    from detectron2.layers import FrozenBatchNorm2d

    def set_statistics(module, inputs):
        x = inputs[0].detach().float()
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))

    layers = [m for m in model.backbone.modules() if isinstance(m, FrozenBatchNorm2d)]
    handles = [m.register_forward_pre_hook(set_statistics) for m in layers]
    try:
        with torch.no_grad():
            model.backbone(model.preprocess_image(batch).tensor)
    finally:
        for handle in handles:
            handle.remove()
    return len(layers)


class Stepper:
    """Detectron2's SimpleTrainer / AMPTrainer step without its metric logging, plus the scheduler."""

    def __init__(self, model, optimizer, scheduler, device: str, amp: bool):
        import torch

        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.device_type = "cuda" if device.startswith("cuda") else "cpu"
        self.amp = amp
        self.scaler = torch.amp.GradScaler(self.device_type) if amp else None

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        with torch.autocast(self.device_type, dtype=torch.float16, enabled=self.amp):
            loss_dict = self.model(batch)
            losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        if self.scaler is not None:
            self.scaler.scale(losses).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            losses.backward()
            self.optimizer.step()
        self.scheduler.step()
        return loss_dict


class LossLog:
    """Every iteration's losses, kept on the device (no host sync) until :meth:`summary`."""

    def __init__(self):
        self.steps: list[tuple[tuple[str, ...], Any]] = []

    def add(self, loss_dict: dict) -> None:
        import torch

        keys = tuple(sorted(loss_dict))
        self.steps.append((keys, torch.stack([loss_dict[k].detach().float().reshape(()) for k in keys])))

    def summary(self) -> tuple[bool, list[str], dict[str, float]]:
        """(every loss finite, the names of non-finite ones, the last iteration's losses)."""
        import torch

        bad: set[str] = set()
        last: dict[str, float] = {}
        groups: dict[tuple[str, ...], list] = {}
        for keys, values in self.steps:
            groups.setdefault(keys, []).append(values)
        for keys, values in groups.items():
            finite = torch.stack(values).isfinite().all(dim=0).cpu().tolist()
            bad.update(k for k, ok in zip(keys, finite, strict=True) if not ok)
        if self.steps:
            keys, values = self.steps[-1]
            last = dict(zip(keys, values.cpu().tolist(), strict=True))
        return not bad, sorted(bad), last


@contextlib.contextmanager
def count_host_syncs(enabled: bool) -> Iterator[list]:
    """Record CUDA's synchronising-call warnings (``torch.cuda.set_sync_debug_mode("warn")``)."""
    import torch

    if not enabled:
        yield []
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield caught
        finally:
            torch.cuda.set_sync_debug_mode("default")


def sync_count(caught: list) -> int:
    return sum("synchroniz" in str(w.message) for w in caught)


def run_one(row: Row, amp: bool, args: argparse.Namespace, result: RunResult) -> None:
    """Build, calibrate, train ``args.iters`` timed iterations and run inference; fill ``result``."""
    import torch
    from detectron2.data import DatasetMapper
    from detectron2.modeling import build_model
    from detectron2.solver import build_lr_scheduler, build_optimizer
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.events import EventStorage

    from point_sup.data import PointSupDatasetMapper

    cuda = args.device.startswith("cuda")
    baseline = row.measured == BASELINE
    cfg = build_cfg(
        row.measured,
        args.device,
        amp,
        args.seed,
        args.tiny,
        point_sup_keys=not baseline,
        clip=args.clip,
        input_size=args.input_size,
    )
    if not baseline:
        check_data(cfg)
    mapper_cls = DatasetMapper if baseline else PointSupDatasetMapper
    batches = prepare_batches(cfg, mapper_cls(cfg, is_train=True), args.batches, args.seed)
    infer_warmup = 1 if cuda else 0
    test_inputs = prepare_test_inputs(cfg, mapper_cls(cfg, is_train=False), args.infer_images + infer_warmup)

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seed_all_rng(args.seed)
    model = build_model(cfg)
    result.params_m = sum(p.numel() for p in model.parameters()) / 1e6
    result.frozen_bn_calibrated = calibrate_frozen_batchnorm(model, batches[0])
    model.train()
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    step = Stepper(model, optimizer, scheduler, args.device, amp)
    losses = LossLog()
    with EventStorage(0) as storage:  # the models log training statistics to it, as in a trainer
        try:
            train(step, batches, losses, storage, args, result)
        finally:  # also when training stops (Detectron2's RPN raises once its predictions diverge)
            result.finite, result.nonfinite_losses, result.last_losses = losses.summary()
            if step.scaler is not None:
                result.amp_final_scale = step.scaler.get_scale()

    del optimizer, scheduler, step, losses, batches
    try:
        infer(model, test_inputs, infer_warmup, cuda, amp, result)
    except Exception as e:  # reported in the table; the training numbers stand
        result.infer_error = f"{type(e).__name__}: {e}"
        logger.error("%s, AMP %s: inference failed:\n%s", row.name, _on(amp), traceback.format_exc())


def infer(model, test_inputs: list[dict], warmup: int, cuda: bool, amp: bool, result: RunResult) -> None:
    """Inference, one image at a time as Detectron2's evaluation runs it, in the run's precision,
    after ``warmup`` untimed images."""
    import torch

    model.eval()
    times, detections = [], []
    with torch.no_grad(), torch.autocast("cuda" if cuda else "cpu", dtype=torch.float16, enabled=amp):
        for i, inputs in enumerate(test_inputs):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            outputs = model([inputs])
            if cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
                detections.append(len(outputs[0]["instances"]))
    result.infer_s_per_image = statistics.median(times)
    result.detections_per_image = statistics.fmean(detections)


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def train(
    step: Stepper, batches: list[list[dict]], losses: LossLog, storage, args, result: RunResult
) -> None:
    """Warm-up (its last ``args.sync_steps`` iterations count host syncs), then ``args.iters`` timed
    iterations (CUDA events, no host sync added); fills the step times, peak memory, finiteness."""
    import torch

    cuda = args.device.startswith("cuda")
    it = 0

    def one(batch):
        nonlocal it
        storage.iter = it
        loss_dict = step(batch)
        losses.add(loss_dict)
        if args.log_losses:  # a host sync per loss: checks only
            logger.info("iteration %d: %s", it, {k: float(f"{v.item():.4g}") for k, v in loss_dict.items()})
        it += 1

    sync_steps = min(args.sync_steps, args.warmup) if cuda else 0
    syncs = 0
    for i in range(args.warmup):
        with count_host_syncs(i >= args.warmup - sync_steps) as caught:
            one(batches[i % len(batches)])
        syncs += sync_count(caught)
    result.syncs_per_step = syncs / sync_steps if sync_steps else math.nan

    times: list[float] = []
    if cuda:
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(args.iters)
        ]
        torch.cuda.synchronize()
        for i, (start, end) in enumerate(events):
            start.record()
            one(batches[(args.warmup + i) % len(batches)])
            end.record()
        torch.cuda.synchronize()
        times = [start.elapsed_time(end) / 1000 for start, end in events]
        result.peak_train_gib = torch.cuda.max_memory_allocated() / 2**30
    else:
        for i in range(args.iters):
            t0 = time.perf_counter()
            one(batches[(args.warmup + i) % len(batches)])
            times.append(time.perf_counter() - t0)
    result.iters = len(times)
    result.step_s_median = statistics.median(times)
    result.step_s_mean = statistics.fmean(times)


# ----------------------------------------------------------------------------------------------
# Budget, output


def estimate_s(row: Row, amp: bool, done: dict[tuple[str, bool], RunResult], default_s: float) -> float:
    """Conservative wall time of one run: the same row's other AMP run if measured, else the
    baseline's (same AMP if measured) times ``row.cost``, else ``default_s`` times ``row.cost``; plus 15 %."""
    other = done.get((row.name, not amp))
    if other is not None and other.status == "ok":
        return 1.15 * other.wall_s
    base = done.get((ROWS[0].name, amp)) or done.get((ROWS[0].name, not amp))
    base_s = base.wall_s if base is not None and base.status == "ok" else default_s
    return 1.15 * row.cost * base_s


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}" if math.isfinite(value) and math.isfinite(base) and base > 0 else "-"


def fmt(value: float, spec: str) -> str:
    return format(value, spec) if isinstance(value, float) and math.isfinite(value) else "-"


def table(results: dict[tuple[str, bool], RunResult]) -> str:
    from tabulate import tabulate

    rows = []
    for row in ROWS:
        for amp in (False, True):
            r = results.get((row.name, amp))
            if r is None:
                continue
            base = results.get((ROWS[0].name, amp))
            b = base if base is not None and base.status == "ok" else RunResult("", amp)
            if r.status == "skipped":
                finite = "skipped"
            elif r.finite is False:
                finite = "NO: " + ",".join(r.nonfinite_losses)
            else:
                finite = "ERROR" if r.status == "error" else "yes"
            infer = "ERROR" if r.infer_error else fmt(r.infer_s_per_image, ".3f")
            rows.append(
                [
                    row.name,
                    "on" if amp else "off",
                    fmt(r.step_s_median, ".3f"),
                    ratio(r.step_s_median, b.step_s_median),
                    fmt(r.peak_train_gib, ".2f"),
                    ratio(r.peak_train_gib, b.peak_train_gib),
                    fmt(r.syncs_per_step, ".1f"),
                    finite,
                    infer,
                    fmt(r.detections_per_image, ".0f"),
                    fmt(r.params_m, ".1f"),
                ]
            )
    headers = [
        "row", "AMP", "s/iter", "x D2", "peak GiB", "x D2", "syncs/iter", "losses finite",
        "infer s/img", "dets/img", "params M",
    ]  # fmt: skip
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def environment(args: argparse.Namespace) -> dict[str, Any]:
    import detectron2
    import torch

    env = {
        "torch": torch.__version__,
        "detectron2": f"{detectron2.__version__} ({Path(detectron2.__file__).parent})",
        "python": sys.version.split()[0],
        "device": args.device,
    }
    if args.device.startswith("cuda"):
        env["device_name"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
        env["tf32"] = {
            "matmul": torch.backends.cuda.matmul.allow_tf32,
            "cudnn": torch.backends.cudnn.allow_tf32,
        }
        env["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    else:
        env["device_name"] = f"CPU, {torch.get_num_threads()} threads"
    return env


def settings_text(args: argparse.Namespace) -> list[str]:
    """What the runs kept from the configs and what they changed (printed, and in the JSON)."""
    if args.input_size:
        scale = f"a {args.input_size}-px shorter side (--input-size)" + (
            " at the tiny scale" if args.tiny else ""
        )
    elif args.tiny:
        scale = "the dry run's tiny scale (R50 depth at narrow widths, 64-px shorter side)"
    else:
        scale = "the configs' input sizes (shorter side 640-800, longer side at most 1333)"
    test_scale = "the same scale" if args.tiny or args.input_size else "the configs' test size"
    syncs = (
        f"the last {min(args.sync_steps, args.warmup)} of them count host syncs"
        if args.device.startswith("cuda")
        else "host syncs are counted on CUDA only"
    )
    return [
        f"{args.iters} timed iterations after {args.warmup} warm-up ones ({syncs}); s/iter is their median",
        f"2 images per iteration at {scale}: the nuclei tiles (1 class id; RLE masks, so MASK_FORMAT "
        f"bitmask), {args.batches} batches mapped once by the config's data mapper and cycled",
        "random seeded weights (no pretrained ones): every frozen BatchNorm of the backbone takes the "
        "per-channel statistics of its input on the first batch; the configs' FREEZE_AT, solver, warm-up "
        "schedule and 80 classes are kept; "
        + (
            f"gradients clipped (SOLVER.CLIP_GRADIENTS, type {args.clip}, 1.0) as training from scratch needs"
            if args.clip != "off"
            else "no gradient clipping (--clip off)"
        ),
        "AMP: torch.autocast float16 + GradScaler, as Detectron2's AMPTrainer; without: float32 "
        "(PyTorch's TF32 defaults); inference in the same precision",
        f"inference: one validation tile at a time at {test_scale}, score thresholds 0 "
        "(TEST.DETECTIONS_PER_IMAGE detections, so the mask heads run on full lists)",
    ]


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--dry-run", action="store_true", help="CPU, tiny scale, 2 iterations (automatic without CUDA)")
    add("--device", default=None, help="default: cuda when available, else cpu (the dry run)")
    add(
        "--scale",
        choices=("real", "tiny"),
        default=None,
        help="real: the configs' models and input sizes (the default on CUDA; on CPU to check a few rows); "
        "tiny: the dry run's narrow R50 and 64-px images",
    )
    add("--iters", type=int, default=None, help="timed iterations per run (default 100; dry run 2)")
    add("--warmup", type=int, default=None, help="untimed iterations before them (default 3; dry run 0)")
    add("--sync-steps", type=int, default=2, help="last warm-up iterations that count host syncs (CUDA)")
    add("--batches", type=int, default=None, help="distinct batches, cycled (default 8; dry run 2)")
    add("--infer-images", type=int, default=None, help="timed inference images (default 4; dry run 1)")
    add(
        "--max-minutes",
        type=float,
        default=7.0,
        help="wall-time budget of the whole script: a run whose estimated time does not fit is skipped "
        "and listed (the baseline always runs)",
    )
    add(
        "--default-run-s",
        type=float,
        default=30.0,
        help="assumed seconds of one baseline run, for the estimates made before it is measured",
    )
    add(
        "--only",
        nargs="*",
        default=None,
        help="run only the rows whose name or configs contain one of these strings (and the baseline)",
    )
    add("--no-amp", action="store_true", help="AMP off only")
    add(
        "--input-size",
        type=int,
        default=None,
        help="shorter image side for training and inference instead of the configs' (checks on CPU; "
        "the longer side at most 5/3 of it)",
    )
    add(
        "--log-losses",
        action="store_true",
        help="log every iteration's losses (adds host syncs: checks only)",
    )
    add(
        "--clip",
        choices=("norm", "value", "off"),
        default="norm",
        help="SOLVER.CLIP_GRADIENTS of every run, at 1.0 (default norm: each parameter's gradient norm; "
        "without it the full Implicit PointRend diverges within 3 iterations from random weights)",
    )
    add(
        "--data",
        default=None,
        help="nuclei dataset folder, built there if absent (default: $DETECTRON2_DATASETS/nuclei, "
        "else datasets/nuclei)",
    )
    add("--output", default=str(ROOT / "output" / "gpu_acceptance.json"), help="JSON results")
    add("--seed", type=int, default=0)
    add(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (1: the dry run's tiny tensors run fastest on one, and CI has 2 shared cores)",
    )
    return parser.parse_args(argv)


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as None (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def report(
    args: argparse.Namespace, env: dict, results: dict[tuple[str, bool], RunResult], output: Path
) -> str:
    """The console report: settings, the table, what each row stands for, skips and failures."""
    lines = [
        "",
        f"device: {env['device_name']}; torch {env['torch']}; detectron2 {env['detectron2']}",
        *(f"- {line}" for line in settings_text(args)),
        "",
        table(results),
        "",
        "Rows and the shipped configs each stands for:",
    ]
    for row in ROWS:
        line = f"- {row.name}: {row.measured}"
        if row.grouped:
            also = " and ".join(["the schedule", *row.allowed])
            line += (
                f"; also {', '.join(row.grouped)} ({row.why}; checked: they differ from it only in {also})"
            )
        lines.append(line)
    skipped: dict[str, list[str]] = {}
    for r in results.values():
        if r.status == "skipped":
            skipped.setdefault(r.row, []).append(f"AMP {_on(r.amp)}")
    if skipped:
        lines.append(
            f"SKIPPED for the time budget (--max-minutes {args.max_minutes:g}): "
            + "; ".join(f"{row} ({', '.join(amps)})" for row, amps in skipped.items())
        )
    for r in results.values():
        if r.status == "error":
            lines.append(f"FAILED {r.row} (AMP {_on(r.amp)}): {r.error}")
        if r.infer_error:
            lines.append(f"FAILED inference of {r.row} (AMP {_on(r.amp)}): {r.infer_error}")
        if r.finite is False:
            lines.append(f"NON-FINITE losses in {r.row} (AMP {_on(r.amp)}): {', '.join(r.nonfinite_losses)}")
    lines.append(f"results: {output}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    import torch
    from detectron2.utils.logger import setup_logger
    from tqdm import tqdm

    import point_sup  # noqa: F401  (registers point_sup's components and its stand-in for detectron2._C)

    setup_logger(name="gpu_acceptance", abbrev_name="accept")
    check_rows_cover_configs(ROWS)

    cuda = torch.cuda.is_available()
    if args.device is None:
        args.device = "cuda" if cuda and not args.dry_run else "cpu"
    on_cuda = args.device.startswith("cuda")
    args.dry_run = args.dry_run or (not on_cuda and args.scale != "real")
    args.scale = args.scale or ("tiny" if args.dry_run else "real")
    args.tiny = args.scale == "tiny"
    if args.dry_run:
        reason = "CUDA is not available" if not cuda else "--dry-run"
        print(f"{reason}: no GPU acceptance is measured here; CPU dry run of every row.", flush=True)
    if not on_cuda:
        torch.set_num_threads(args.threads)
    defaults = {"iters": (2, 100), "warmup": (0, 3), "batches": (2, 8), "infer_images": (1, 4)}
    for name, (dry, real) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, dry if args.dry_run else real)
    # GradScaler skips the first steps by design (their gradients overflow float16), which PyTorch
    # reports as the LR scheduler stepping before the optimizer; Detectron2's AMPTrainer runs alike.
    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")

    register_data(
        Path(args.data or Path(os.environ.get("DETECTRON2_DATASETS", ROOT / "datasets")) / "nuclei")
    )
    for row in ROWS:
        bad = {stem: keys for stem, keys in grouping_differences(row, args.device, args.seed).items() if keys}
        if bad:
            sys.exit(
                f"row {row.name!r}: grouped configs differ from {row.measured} in more than allowed: {bad}"
            )

    env = environment(args)
    wanted = args.only
    selected = [
        r
        for r in ROWS
        if r is ROWS[0]
        or wanted is None
        or any(w in r.name or any(w in c for c in r.configs) for w in wanted)
    ]
    runs = [
        (row, amp)
        for row in sorted(selected, key=lambda r: PRIORITY.index(r.name))
        for amp in ((False,) if args.no_amp else (False, True))
    ]
    results: dict[tuple[str, bool], RunResult] = {}
    output = Path(args.output)

    def save() -> None:
        write_json(
            output,
            json_safe(
                {
                    "environment": env,
                    "settings": settings_text(args),
                    "args": vars(args),
                    "rows": [
                        {"name": r.name, "measured": r.measured, "configs": list(r.configs), "why": r.why}
                        for r in ROWS
                    ],
                    "results": [asdict(r) for r in results.values()],
                    "elapsed_s": time.perf_counter() - started,
                }
            ),
        )

    budget_s = 60 * args.max_minutes
    for row, amp in tqdm(runs, desc="acceptance runs", unit="run", disable=None):
        result = RunResult(row.name, amp, estimated_s=estimate_s(row, amp, results, args.default_run_s))
        results[(row.name, amp)] = result
        elapsed = time.perf_counter() - started
        if row is not ROWS[0] and elapsed + result.estimated_s > budget_s:
            result.status = "skipped"
            result.error = (
                f"time budget: {elapsed:.0f} s spent + about {result.estimated_s:.0f} s for this run "
                f"> {budget_s:.0f} s (--max-minutes {args.max_minutes:g})"
            )
            logger.info("skipped %s, AMP %s: %s", row.name, _on(amp), result.error)
            continue
        t0 = time.perf_counter()
        try:
            run_one(row, amp, args, result)
            result.status = "ok"
        except Exception as e:
            result.status = "error"
            result.error = f"{type(e).__name__}: {e}"
            logger.error("%s, AMP %s failed:\n%s", row.name, _on(amp), traceback.format_exc())
        finally:
            gc.collect()
            if on_cuda:
                torch.cuda.empty_cache()
        result.wall_s = time.perf_counter() - t0
        logger.info(
            "%s, AMP %s: %s, %.3f s/iter, losses finite: %s, %.1f s (estimated %.0f s)",
            row.name, _on(amp), result.status, result.step_s_median, result.finite, result.wall_s,
            result.estimated_s,
        )  # fmt: skip
        save()
    save()
    print(report(args, env, results, output))
    failed = [r for r in results.values() if r.status == "error" or r.infer_error or r.finite is False]
    verdict = "FAILED" if failed else "passed"
    what = "CPU dry run" if args.dry_run else "GPU acceptance" if on_cuda else "CPU check"
    print(
        f"{what} {verdict}: {len(failed)} of "
        f"{sum(r.status != 'skipped' for r in results.values())} runs failed, "
        f"{sum(r.status == 'skipped' for r in results.values())} skipped; "
        f"{time.perf_counter() - started:.0f} s in all" + ("; no GPU measured." if args.dry_run else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
