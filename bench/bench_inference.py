#!/usr/bin/env python
"""Whole-model inference speed and peak memory of every mask head, 100 detections per image.

    python bench/bench_inference.py                                  # CPU, 512 x 768 images
    python bench/bench_inference.py --device cuda --size 800 1216 --iters 20 --warmup 3   # COCO size

Every variant is the whole R50-FPN model of a shipped COCO config (80 classes, random
initialisation, the same seed, so backbone, RPN and box head have the same weights in every variant
and give the same detections, checked below), differing only in the mask head. With no pretrained
weights the frozen BatchNorm layers are first given the statistics of one pass over the inputs
(:func:`calibrate_frozen_batchnorm`; left as the identity, the activations blow up and no image
gets 100 detections). The variants:

* ``standard``: Detectron2's ``MaskRCNNConvUpsampleHead`` (configs/COCO/mask_rcnn_R_50_FPN_3x_M.yaml);
* ``mask_rcnn P10``: the point-loss head ``PointSupMaskRCNNConvUpsampleHead``
  (mask_rcnn_R_50_FPN_3x_P10.yaml; its inference is the parent's, so it should cost the same);
* ``point_rend P10``: point_rend_R_50_FPN_3x_P10_point_aug.yaml (7x7 coarse head, subdivision to 224);
* ``implicit paper``: implicit_point_rend_R_50_FPN_3x_P10_point_aug.yaml (paper-faithful parameter
  head, 28 -> 224 subdivision);
* ``implicit light``: the same + ``point_sup.modeling.implicit_point_rend.LIGHT_VARIANT_OVERRIDES``;
* ``implicit small``: implicit_point_rend_R_50_FPN_3x_P10_point_aug_small.yaml (PARAMS_RANK 32).

Exactly ``--detections`` (100) detections per image are forced by ``ROI_HEADS.SCORE_THRESH_TEST
0.0`` (every softmax score is above it), ``ROI_HEADS.NMS_THRESH_TEST 1.0`` (no IoU exceeds 1, so NMS
suppresses nothing) and ``TEST.DETECTIONS_PER_IMAGE 100``: the top 100 of the 1000 proposals x 80
classes (the script stops if an image gets fewer). Inputs are fixed-seed uniform random uint8 images
of ``--size H W`` (default 512 x 768 on CPU, where COCO's 800 x 1216 makes a run slow; 800 x 1216,
COCO's typical padded size, on CUDA), ``--batch`` per ``model(inputs)`` call, under
``torch.no_grad()`` in eval mode, with Detectron2's postprocessing (masks pasted into the image).

Each variant runs in its own process (bench/bench_train_step.py's ``run_workers``): build, warm-up
calls, then the median of ``--iters`` timed calls. Reported per variant: images/s and ms/image of
the whole model, ms/image of the mask branch alone (``roi_heads._forward_mask``, timed around each
call: Mask R-CNN's RoIAlign pooler + mask head, the point heads' own sampling, coarse/parameter head
and subdivision, and the sigmoid, i.e. everything that differs between variants except the pasting
of the masks in postprocessing), and peak inference memory: on CPU the growth of the resident set's
high-water mark over the warm-up and timed calls (after the model is built: freed heap memory
returned with ``malloc_trim``, ``VmHWM`` reset through ``/proc/self/clear_refs``, minus the RSS
then; falls back to the process's ``ru_maxrss`` growth), on CUDA ``torch.cuda.max_memory_allocated``
minus the allocation before the first call (weights). Printed last, one line each: the point-loss
head against the standard one, and each Implicit PointRend variant against PointRend, measured in
this run.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import logging
import resource
import statistics
import sys
import time
from pathlib import Path

from bench_train_step import run_workers

ROOT = Path(__file__).resolve().parents[1]
COCO = ROOT / "configs" / "COCO"
# name -> (config, extra overrides; "LIGHT" stands for LIGHT_VARIANT_OVERRIDES)
VARIANTS: dict[str, tuple[Path, list]] = {
    "standard": (COCO / "mask_rcnn_R_50_FPN_3x_M.yaml", []),
    "mask_rcnn P10": (COCO / "mask_rcnn_R_50_FPN_3x_P10.yaml", []),
    "point_rend P10": (COCO / "point_rend_R_50_FPN_3x_P10_point_aug.yaml", []),
    "implicit paper": (COCO / "implicit_point_rend_R_50_FPN_3x_P10_point_aug.yaml", []),
    "implicit light": (COCO / "implicit_point_rend_R_50_FPN_3x_P10_point_aug.yaml", ["LIGHT"]),
    "implicit small": (COCO / "implicit_point_rend_R_50_FPN_3x_P10_point_aug_small.yaml", []),
}
# (numerator, denominator) of the ratios printed last.
RATIOS = [
    ("mask_rcnn P10", "standard"),
    ("implicit paper", "point_rend P10"),
    ("implicit light", "point_rend P10"),
    ("implicit small", "point_rend P10"),
]
CPU_SIZE = (512, 768)
COCO_SIZE = (800, 1216)


def rss_mib() -> float:
    """The resident set size of this process now, MiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def reset_rss_peak() -> bool:
    """Hand freed heap memory back to the system (glibc's ``malloc_trim``), then reset this process's
    resident-set high-water mark (``VmHWM``) to its current RSS; False where the kernel does not
    allow the reset (then ``ru_maxrss``, the peak since the process started, is used).

    Without the trim, memory freed after building and calibrating the model stays resident, and
    inference reusing it would not raise the mark: the growth would depend on what ran before.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_peak_mib(resettable: bool) -> float:
    """The resident-set high-water mark, MiB: ``VmHWM`` (since the last reset) or ``ru_maxrss``."""
    if resettable:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def random_inputs(batch: int, size: tuple[int, int], seed: int) -> list[dict]:
    """``batch`` fixed-seed random uint8 (3, H, W) images in Detectron2's input format."""
    import torch

    g = torch.Generator().manual_seed(seed)
    H, W = size
    return [
        {"image": torch.randint(0, 256, (3, H, W), generator=g, dtype=torch.uint8), "height": H, "width": W}
        for _ in range(batch)
    ]


def calibrate_frozen_batchnorm(model, inputs: list[dict]) -> None:
    """Give a randomly initialised backbone's ``FrozenBatchNorm2d`` layers the statistics of one
    forward pass over ``inputs`` (each layer normalises its own input to zero mean, unit variance).

    Left at their defaults (mean 0, variance 1: the identity) the 50 un-normalised layers make the
    activations grow by orders of magnitude, the RPN's deltas then collapse its proposals to a
    handful of empty boxes, and the box head's softmax saturates to exact zeros, so no image would
    get 100 detections. Layers are calibrated in forward order (a pre-hook on each), so each sees
    the already-normalised outputs of the layers before it. The same in every variant (same
    backbone weights, same inputs).
    """
    import torch
    from detectron2.layers import FrozenBatchNorm2d

    def calibrate(module, hook_args):
        x = hook_args[0].double()
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)))

    norms = [m for m in model.backbone.modules() if isinstance(m, FrozenBatchNorm2d)]
    handles = [m.register_forward_pre_hook(calibrate) for m in norms]
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        model.backbone(images.tensor)
    for handle in handles:
        handle.remove()


def build_variant(name: str, args: argparse.Namespace):
    """The eval-mode model of variant ``name``, random weights seeded with ``args.seed``."""
    import torch

    import point_sup  # noqa: F401  (applies point_sup.compat before detectron2 is used)

    # isort: split
    from detectron2.modeling import build_model

    from point_sup.engine.experiment import load_config
    from point_sup.modeling.implicit_point_rend import LIGHT_VARIANT_OVERRIDES

    config, extra = VARIANTS[name]
    if "LIGHT" in extra:
        extra = [*[e for e in extra if e != "LIGHT"], *LIGHT_VARIANT_OVERRIDES]
    overrides = [
        "MODEL.DEVICE", args.device,
        "MODEL.WEIGHTS", "",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,
        "MODEL.ROI_HEADS.NMS_THRESH_TEST", 1.0,
        "TEST.DETECTIONS_PER_IMAGE", args.detections,
        *extra,
    ]  # fmt: skip
    cfg = load_config(str(config), overrides)
    cfg.freeze()
    # One seed before building: the backbone, RPN and box head are built (and drawn) before the mask
    # head, so they are the same in every variant.
    torch.manual_seed(args.seed)
    return build_model(cfg).eval()


def run_variant(name: str, args: argparse.Namespace) -> dict:
    """In this process: build the variant, warm up, time ``args.iters`` calls; its measurements."""
    import torch

    logging.getLogger("detectron2").setLevel(logging.WARNING)
    logging.getLogger("point_sup").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    model = build_variant(name, args)
    inputs = random_inputs(args.batch, tuple(args.size), args.seed)
    calibrate_frozen_batchnorm(model, inputs)
    roi_heads = model.roi_heads
    mask_times: list[float] = []
    forward_mask = roi_heads._forward_mask

    def timed_forward_mask(features, instances):
        # An instance attribute shadows the method: StandardROIHeads calls self._forward_mask.
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = forward_mask(features, instances)
        if cuda:
            torch.cuda.synchronize()
        mask_times.append(time.perf_counter() - t0)
        return out

    roi_heads._forward_mask = timed_forward_mask
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        resettable = reset_rss_peak()
        base = rss_mib() if resettable else rss_peak_mib(False)
    times = []
    outputs = None
    with torch.no_grad():
        for i in range(args.warmup + args.iters):
            outputs = None  # the previous call's masks (full-image bitmasks) are not part of this peak
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            outputs = model(inputs)
            if cuda:
                torch.cuda.synchronize()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if cuda else rss_peak_mib(resettable)) - base
    counts = [len(o["instances"]) for o in outputs]
    if any(c != args.detections for c in counts):
        sys.exit(f"{name}: {counts} detections per image, expected {args.detections} each")
    first = outputs[0]["instances"]
    median = statistics.median(times)
    return {
        "ms_per_image": median / args.batch * 1e3,
        "images_per_s": args.batch / median,
        "mask_ms_per_image": statistics.median(mask_times[args.warmup :]) / args.batch * 1e3,
        "peak_mib": peak,
        "weights_mib": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
        "mask_head_params": sum(p.numel() for p in roi_heads.mask_head.parameters()),
        # A fingerprint of the detections, to check that every variant masks the same boxes.
        "detections": [
            round(float(first.pred_boxes.tensor.double().sum()), 3),
            int(first.pred_classes.sum()),
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    default_sizes = f"{CPU_SIZE[0]} {CPU_SIZE[1]} on CPU, {COCO_SIZE[0]} {COCO_SIZE[1]} (COCO) on GPU"
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help=f"default {default_sizes}")
    parser.add_argument("--batch", type=int, default=1, help="images per model(inputs) call")
    parser.add_argument("--detections", type=int, default=100, help="detections per image (forced)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3, help="timed calls (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.size is None:
        args.size = list(COCO_SIZE if args.device.startswith("cuda") else CPU_SIZE)
    if args.worker:
        print("RESULT " + json.dumps(run_variant(args.worker, args)), flush=True)
        return
    results = run_workers(__file__, args.variants, sys.argv[1:])
    import torch

    threads = args.threads or torch.get_num_threads()
    H, W = args.size
    print(
        f"\ninference, {args.device}, {args.batch} image(s) of {H} x {W} per call, {args.detections} "
        f"detections per image, median of {args.iters} calls after {args.warmup} warm-up, "
        f"{threads} thread(s)"
    )
    print(
        f"{'variant':<16}{'images/s':>10}{'ms/image':>10}{'mask ms/img':>13}{'peak MiB':>10}"
        f"{'weights MiB':>13}{'mask-head params':>18}"
    )
    for name, r in results.items():
        print(
            f"{name:<16}{r['images_per_s']:>10.3f}{r['ms_per_image']:>10.1f}{r['mask_ms_per_image']:>13.1f}"
            f"{r['peak_mib']:>10.0f}{r['weights_mib']:>13.0f}{r['mask_head_params']:>18,}"
        )
    fingerprints = {tuple(r["detections"]) for r in results.values()}
    print(f"same detections in every variant: {'yes' if len(fingerprints) == 1 else 'NO'}")
    for num, den in RATIOS:
        if num in results and den in results:
            a, b = results[num], results[den]
            print(
                f"{num} / {den}: whole model {a['ms_per_image'] / b['ms_per_image']:.2f}x, "
                f"mask branch {a['mask_ms_per_image'] / b['mask_ms_per_image']:.2f}x, "
                f"peak memory {a['peak_mib'] / max(b['peak_mib'], 1e-9):.2f}x"
            )


if __name__ == "__main__":
    main()
