#!/usr/bin/env python
"""Throughput of tools/generate_pseudo_masks.py, the whole command, for --batch-size 1 vs others.

    python bench/bench_pseudo_masks.py                       # CPU, 96 images, batch 1 vs the default
    python bench/bench_pseudo_masks.py --batch-sizes 1 2 4 8 --device cuda --images 512

The data are the real nuclei tiles (point_sup.data.nuclei: four 192x256 training tiles with their P10
boxes, 25 per tile), listed ``--images`` times over in a COCO file registered with ``--register``;
the model is ``--config-file`` (default the nuclei Mask R-CNN P10 miniature, R18-FPN, test size 256)
with seeded random weights saved as a checkpoint. Each batch size runs the command as a user does
(a fresh process: start-up, model loading, data loading with the config's DATALOADER.NUM_WORKERS,
inference, RLE encoding, the JSON write), ``--repeats`` times; the fastest run counts. Printed per
batch size: wall seconds, images/s, and the ratio to the first batch size measured in this run;
finally whether every output file is byte-identical (it must be).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "generate_pseudo_masks.py"


def _default_batch_size() -> int:
    sys.path.insert(0, str(TOOL.parent))
    try:
        from generate_pseudo_masks import DEFAULT_BATCH_SIZE
    finally:
        sys.path.pop(0)
    return DEFAULT_BATCH_SIZE


def prepare(work: Path, config: Path, images: int, seed: int) -> tuple[Path, Path, Path]:
    """The nuclei data under ``work``, a COCO file listing its training tiles ``images`` times, and
    a checkpoint of ``config``'s model with seeded random weights. Returns (json, image root, weights)."""
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from point_sup.data import register_nuclei
    from point_sup.engine.experiment import load_config

    paths = register_nuclei(work / "nuclei")
    source = json.loads(Path(paths["train_p10"]).read_text())
    coco = {k: v for k, v in source.items() if k not in ("images", "annotations")}
    coco["images"], coco["annotations"] = [], []
    tiles = source["images"]
    for i in range(images):
        tile = tiles[i % len(tiles)]
        coco["images"].append({**tile, "id": i + 1})
        for ann in source["annotations"]:
            if ann["image_id"] == tile["id"]:
                coco["annotations"].append({**ann, "id": len(coco["annotations"]) + 1, "image_id": i + 1})
    json_path = work / "bench_p10.json"
    json_path.write_text(json.dumps(coco))
    torch.manual_seed(seed)
    model = build_model(load_config(str(config), ["MODEL.DEVICE", "cpu"]))
    DetectionCheckpointer(model, save_dir=str(work)).save("model")
    return json_path, Path(paths["image_root"]), work / "model.pth"


def run_tool(argv: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(TOOL), *argv], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"generate_pseudo_masks.py failed:\n{proc.stderr[-3000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config-file", type=Path, default=ROOT / "configs/nuclei/mask_rcnn_R_18_FPN_P10.yaml"
    )
    parser.add_argument("--images", type=int, default=96, help="images in the benchmark dataset")
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=None, help="default: 1 and the tool's default"
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs per batch size; the fastest counts")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes of each run (the tool's flag)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    batch_sizes = args.batch_sizes or [1, _default_batch_size()]

    with tempfile.TemporaryDirectory(prefix="bench_pseudo_masks_") as tmp:
        work = Path(tmp)
        json_path, image_root, weights = prepare(work, args.config_file, args.images, args.seed)
        print(
            f"{args.images} nuclei images ({args.config_file.name}, random weights), device {args.device}, "
            f"--num-gpus {args.num_gpus}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
            f"{os.cpu_count()} CPUs; whole command, best of {args.repeats}",
            flush=True,
        )
        results, digests = {}, {}
        for batch_size in batch_sizes:
            out = work / f"pseudo_b{batch_size}.json"
            argv = [
                "--config-file", str(args.config_file), "--dataset", "bench_p10", "--output", str(out),
                "--register", "bench_p10", str(json_path), str(image_root),
                "--batch-size", str(batch_size), "--num-gpus", str(args.num_gpus),
                "MODEL.WEIGHTS", str(weights), "MODEL.DEVICE", args.device,
            ]  # fmt: skip
            wall = min(run_tool(argv) for _ in range(args.repeats))
            results[batch_size] = wall
            digests[batch_size] = hashlib.sha256(out.read_bytes()).hexdigest()
            base = results[batch_sizes[0]]
            print(
                f"--batch-size {batch_size:>3}: {wall:7.2f} s  {args.images / wall:7.2f} images/s  "
                f"x{base / wall:.2f} vs --batch-size {batch_sizes[0]}",
                flush=True,
            )
        identical = len(set(digests.values())) == 1
        print(f"outputs byte-identical across batch sizes: {identical}")
        if not identical:
            sys.exit(1)


if __name__ == "__main__":
    main()
