#!/usr/bin/env python
"""Size and training-step time of Implicit PointRend's mask head: paper-faithful, light and small.

    python bench/bench_implicit_point_rend.py                       # COCO head, 64 proposals, CPU
    python bench/bench_implicit_point_rend.py --device cuda --proposals 512 --iters 20

All heads are the COCO R50-FPN ones (80 classes, 256-channel FPN p2..p5, ROI_MASK_HEAD FC_DIM 1024 x
2, POINT_HEAD 3 x 256, positional encoding and p2 features on); the light variant applies
:data:`point_sup.modeling.implicit_point_rend.LIGHT_VARIANT_OVERRIDES` (parameter-head FC width 256,
class-agnostic point head), the small one ``MODEL.IMPLICIT_POINTREND.PARAMS_RANK: 32`` (the
prediction layer factorised through 32 coefficients per instance). One "step" is the mask head
alone: parameter head + generated MLP on TRAIN_NUM_POINTS (196) uniformly sampled points per
foreground proposal, labels from masks, both losses, backward, SGD step — in the same run for all,
on random p2..p5 features of one 800 x 1216 image. Reported: trainable parameters, the prediction
layer's share, fp32 bytes of weights + gradients, median step time and its ratios to the paper's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

import point_sup  # noqa: F401  (registers the head)
from point_sup import add_point_sup_config
from point_sup.modeling.implicit_point_rend import (
    LIGHT_VARIANT_OVERRIDES,
    PointSupImplicitPointRendMaskHead,
    count_parameters,
)

IMAGE = (800, 1216)
STRIDES = {"p2": 4, "p3": 8, "p4": 16, "p5": 32}


# variant -> config overrides on the paper-faithful COCO head
VARIANTS = {
    "paper": [],
    "light": LIGHT_VARIANT_OVERRIDES,
    # configs/COCO/implicit_point_rend_R_50_FPN_3x_P10_point_aug_small.yaml's only change
    "small": ["MODEL.IMPLICIT_POINTREND.PARAMS_RANK", 32],
}


def build(variant: str, device: str) -> PointSupImplicitPointRendMaskHead:
    cfg = add_point_sup_config(get_cfg())
    cfg.MODEL.ROI_MASK_HEAD.NAME = "PointSupImplicitPointRendMaskHead"
    cfg.MODEL.ROI_MASK_HEAD.POOLER_TYPE = ""
    cfg.MODEL.POINT_HEAD.SUBDIVISION_STEPS = 3
    cfg.merge_from_list(list(VARIANTS[variant]))
    shapes = {k: ShapeSpec(channels=256, stride=s) for k, s in STRIDES.items()}
    return PointSupImplicitPointRendMaskHead(cfg, shapes).to(device).train()


def batch(num: int, device: str):
    g = torch.Generator().manual_seed(0)
    H, W = IMAGE
    features = {k: torch.randn(1, 256, H // s, W // s, generator=g).to(device) for k, s in STRIDES.items()}
    inst = Instances(IMAGE)
    xy = torch.rand(num, 2, generator=g) * torch.tensor([W * 0.7, H * 0.7])
    wh = 16 + torch.rand(num, 2, generator=g) * torch.tensor([W * 0.3, H * 0.3])
    boxes = torch.cat([xy, xy + wh], 1)
    inst.proposal_boxes = Boxes(boxes.to(device))
    inst.gt_classes = torch.randint(80, (num,), generator=g).to(device)
    masks = torch.zeros(num, H, W, dtype=torch.bool)
    for k, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
        masks[k, y0 + (y1 - y0) // 4 : y1 - (y1 - y0) // 4, x0:x1] = True
    inst.gt_masks = BitMasks(masks.to(device))
    return features, [inst]


def time_steps(head, features, instances, iters: int, device: str) -> list[float]:
    optimizer = torch.optim.SGD(head.parameters(), lr=1e-4)
    times = []
    for _ in range(iters + 1):  # +1 warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        with EventStorage():
            losses = head(features, instances)
        sum(losses.values()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--proposals", type=int, default=64, help="foreground proposals per step")
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    features, instances = batch(args.proposals, args.device)
    results = {}
    for name in VARIANTS:
        torch.manual_seed(0)
        head = build(name, args.device)
        counts = count_parameters(head)
        times = time_steps(head, features, instances, args.iters, args.device)
        results[name] = statistics.median(times)
        print(
            f"{name:6s} params {counts['total']:>12,d}"
            f"  prediction layer {counts['param_head_prediction']:>12,d}"
            f"  generated/instance {counts['generated_per_instance']:>8,d}"
            f"  weights+grads {2 * 4 * counts['total'] / 2**20:8.1f} MiB"
            f"  step {results[name] * 1e3:8.1f} ms (median of {len(times)})"
        )
        del head
    for name in ("light", "small"):
        print(f"{name}/paper step time ratio: {results[name] / results['paper']:.3f}")


if __name__ == "__main__":
    main()
