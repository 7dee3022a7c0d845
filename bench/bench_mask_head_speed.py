#!/usr/bin/env python
"""Train-step time of the point-loss Mask R-CNN mask head against Detectron2's standard head.

    python bench/bench_mask_head_speed.py                  # COCO-sized head, 64 RoIs, CPU
    python bench/bench_mask_head_speed.py --rois 256 --device cuda

Both heads have the same weights (R50-FPN Mask R-CNN defaults: 4 convs of 256, deconv, 80
classes, 14x14 RoI features). One step = head forward + loss + backward, the part of a Mask R-CNN
iteration the loss choice can change. Baselines, measured in the same run, alternating with the
point head so that machine load affects both alike:

* ``standard/polygon``: ``MaskRCNNConvUpsampleHead`` + ``mask_rcnn_loss`` with COCO-like polygon
  masks (Detectron2's default INPUT.MASK_FORMAT), i.e. 28x28 targets rasterized per RoI;
* ``standard/bitmask``: the same with bitmasks (targets by RoIAlign on the image masks);
* ``point_sup``: ``PointSupMaskRCNNConvUpsampleHead`` with P10 points (5 of them ignored per RoI
  as padding / out of box would be).

Prints the median step time of each and the ratio point_sup / standard, then the same for the
loss alone (targets + loss + its backward on fixed 28x28 logits), where the two heads differ; on a
loaded machine the loss-only numbers are the steadier signal.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import point_sup  # noqa: F401  (applies point_sup.compat before detectron2 is used)

# isort: split
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads.mask_head import MaskRCNNConvUpsampleHead, mask_rcnn_loss
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage

from point_sup import add_point_sup_config
from point_sup.modeling.common.point_loss import roi_grid_point_loss
from point_sup.modeling.mask_rcnn.mask_head import PointSupMaskRCNNConvUpsampleHead


def make_instances(num_rois: int, num_images: int, device: str, seed: int = 0) -> list[Instances]:
    """Foreground proposals with polygon masks, bitmasks and P10 points, on 800x1066 images."""
    rng = np.random.default_rng(seed)
    h, w = 800, 1066
    out = []
    for n in np.array_split(np.arange(num_rois), num_images):
        n = len(n)
        x0, y0 = rng.uniform(0, w - 200, n), rng.uniform(0, h - 200, n)
        size = rng.uniform(20, 200, (n, 2))
        boxes = np.stack([x0, y0, x0 + size[:, 0], y0 + size[:, 1]], 1).astype(np.float32)
        polys = []
        for b in boxes:
            angles = np.sort(rng.uniform(0, 2 * np.pi, 24))
            cx, cy, rx, ry = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2, (b[2] - b[0]) / 2, (b[3] - b[1]) / 2
            r = rng.uniform(0.6, 1.0, 24)
            polys.append([np.stack([cx + rx * r * np.cos(angles), cy + ry * r * np.sin(angles)], 1).ravel()])
        inst = Instances((h, w))
        # Proposals jittered around the object box, as matched proposals are.
        jitter = rng.normal(0, 0.1, (n, 4)).astype(np.float32) * np.repeat(size, 2, axis=1).astype(np.float32)
        inst.proposal_boxes = Boxes(torch.from_numpy(boxes + jitter).to(device))
        inst.gt_classes = torch.from_numpy(rng.integers(0, 80, n)).to(device)
        inst.gt_masks_polygon = PolygonMasks(polys)
        inst.gt_masks_bitmask = BitMasks.from_polygon_masks(PolygonMasks(polys), h, w).to(device)
        u = torch.from_numpy(rng.uniform(0, 1, (n, 10, 2)).astype(np.float32))
        box_t = torch.from_numpy(boxes)
        inst.gt_point_coords = (box_t[:, None, :2] + u * (box_t[:, None, 2:] - box_t[:, None, :2])).to(device)
        inst.gt_point_labels = torch.from_numpy(rng.integers(0, 2, (n, 10)).astype(np.float32)).to(device)
        out.append(inst)
    return out


def with_masks(instances: list[Instances], kind: str) -> list[Instances]:
    out = []
    for inst in instances:
        new = Instances(inst.image_size)
        new.proposal_boxes, new.gt_classes = inst.proposal_boxes, inst.gt_classes
        new.gt_masks = inst.gt_masks_polygon if kind == "polygon" else inst.gt_masks_bitmask
        out.append(new)
    return out


def with_points(instances: list[Instances]) -> list[Instances]:
    out = []
    for inst in instances:
        new = Instances(inst.image_size)
        new.proposal_boxes, new.gt_classes = inst.proposal_boxes, inst.gt_classes
        new.gt_point_coords, new.gt_point_labels = inst.gt_point_coords, inst.gt_point_labels
        out.append(new)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rois", type=int, default=64, help="foreground RoIs per step (all images)")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    cfg = add_point_sup_config(get_cfg())
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 80
    shape = ShapeSpec(channels=256, height=14, width=14)
    standard = MaskRCNNConvUpsampleHead(cfg, shape).to(args.device).train()
    cfg.INPUT.POINT_SUP = True
    point = PointSupMaskRCNNConvUpsampleHead(cfg, shape).to(args.device).train()
    point.load_state_dict(standard.state_dict())

    instances = make_instances(args.rois, args.images, args.device)
    cases = {
        "standard/polygon": (standard, with_masks(instances, "polygon")),
        "standard/bitmask": (standard, with_masks(instances, "bitmask")),
        "point_sup": (point, with_points(instances)),
    }
    x = torch.randn(args.rois, 256, 14, 14, device=args.device)

    def step(head, inst) -> float:
        head.zero_grad(set_to_none=True)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        with EventStorage():
            head(x, inst)["loss_mask"].backward()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {name: [] for name in cases}
    for head, inst in cases.values():  # warm-up
        step(head, inst)
    for _ in range(args.repeats):
        for name, (head, inst) in cases.items():
            times[name].append(step(head, inst))
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"device={args.device} rois={args.rois} images={args.images} repeats={args.repeats}", end=" ")
    print(f"threads={torch.get_num_threads()}")
    for name, value in medians.items():
        print(f"  {name:18s} {1000 * value:9.2f} ms/step (median)")
    for baseline in ("standard/polygon", "standard/bitmask"):
        print(f"  point_sup / {baseline}: {medians['point_sup'] / medians[baseline]:.3f}")

    logits = torch.randn(args.rois, 80, 28, 28, device=args.device, requires_grad=True)
    losses = {
        "standard/polygon": lambda: mask_rcnn_loss(logits, cases["standard/polygon"][1]),
        "standard/bitmask": lambda: mask_rcnn_loss(logits, cases["standard/bitmask"][1]),
        "point_sup": lambda: roi_grid_point_loss(logits, cases["point_sup"][1]),
    }

    def loss_step(fn) -> float:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        with EventStorage():
            fn().backward()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    loss_times: dict[str, list[float]] = {name: [] for name in losses}
    for _ in range(args.repeats + 1):
        for name, fn in losses.items():
            loss_times[name].append(loss_step(fn))
    print("  loss only (targets + loss + backward):")
    for name, t in loss_times.items():
        print(f"  {name:18s} {1000 * statistics.median(t[1:]):9.2f} ms (median)")


if __name__ == "__main__":
    main()
