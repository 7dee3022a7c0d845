#!/usr/bin/env python
"""Self-training, first stage (paper §3.3.2): pseudo masks for every ground-truth box of a dataset.

    python tools/generate_pseudo_masks.py --num-gpus 8 \\
        --config-file configs/COCO/mask_rcnn_R_50_FPN_3x_P10.yaml --dataset coco_2017_train_p10 \\
        --output datasets/coco/annotations/instances_train2017_pseudo.json \\
        MODEL.WEIGHTS output/coco_p10/model_final.pth

The model runs on each training image with the ground-truth boxes given as detections; the output
is a COCO-format instances JSON (compressed RLE masks) for the second-stage config
(configs/COCO/mask_rcnn_R_50_FPN_3x_self_training.yaml). Image file names in it are relative to the
image root of --dataset, so register it with that root:

    python tools/train_net.py --register coco_2017_train_pseudo_masks \\
        datasets/coco/annotations/instances_train2017_pseudo.json datasets/coco/train2017 \\
        --config-file configs/COCO/mask_rcnn_R_50_FPN_3x_self_training.yaml

Processes: --num-gpus / --num-machines / --machine-rank / --dist-url as tools/train_net.py (CPU: add
MODEL.DEVICE cpu, one gloo process each). Each process takes a contiguous share of the images and
DATALOADER.NUM_WORKERS loader processes read ahead of its model; rank 0 gathers the masks and writes
the one output file, atomically (a temporary sibling renamed into place: a killed run leaves no
partial file). Records keep the dataset's order, and on CPU the file is byte-identical for any
number of processes and any --batch-size: a batch only holds images that the model pads to the
same size (point_sup.engine.pseudo_masks explains why padding would otherwise change masks, and
what a GPU's kernel choice per batch shape may still do).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.engine import launch
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import point_sup  # noqa: F401  (registers point_sup's heads and datasets)
from point_sup.data import register_point_datasets
from point_sup.data.catalog import catalog_image_root
from point_sup.engine import cli
from point_sup.engine.experiment import ConfigError, checked_config, load_config
from point_sup.engine.pseudo_masks import predict_pseudo_masks, pseudo_mask_coco_dict
from point_sup_labels.coco_format import dumps_json
from point_sup_labels.file_io import atomic_write_bytes, probe_writable
from point_sup_labels.process import die_with_parent

# Images per model call. bench/bench_pseudo_masks.py on 2 CPU cores (96 nuclei tiles, whole command):
# 0.62 / 1.06 / 1.40 images/s at 1 / 4 / 8, i.e. x1.7 and x2.3 over one image per call. On a GPU a
# batch of 4-8 fills the device; COCO-size R50-FPN inference at 8 fits in a few GiB.
DEFAULT_BATCH_SIZE = 8


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="generate_pseudo_masks.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", required=True, help="config of the point-trained model")
    parser.add_argument("--dataset", required=True, help="registered training dataset (boxes are used)")
    parser.add_argument("--output", required=True, help="output COCO JSON with pseudo masks")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"images per model call in each process (default {DEFAULT_BATCH_SIZE}; GPUs: 4-8, "
        "lower it if memory is short); the output does not depend on it",
    )
    cli.add_register_argument(parser)
    cli.add_launch_arguments(parser, rank0_role="writes the output")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS path")
    return parser


def register_datasets(args: argparse.Namespace) -> None:
    """``--register`` datasets and the P_N names of the scheme (``coco_2017_train_p10``, ...)."""
    cli.register_datasets(args.register)
    register_point_datasets([args.dataset])


def setup(args: argparse.Namespace) -> CfgNode:
    """The frozen config: Detectron2's defaults, point_sup's keys, the file, then the overrides."""
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    return cfg


def input_error(args: argparse.Namespace) -> str | None:
    """Why the run cannot start, or None: checked once before any process starts or anything is
    written, so that a mistake is one message rather than a traceback from every process after a
    model was built. Registers the datasets (in this process)."""
    if args.batch_size < 1:
        return f"--batch-size must be at least 1, got {args.batch_size}"
    problem = cli.launch_error(args)
    if problem is not None:
        return problem
    try:
        cfg = checked_config(args.config_file, args.opts)
    except ConfigError as e:
        return str(e)
    problem = cli.weights_error(cfg, "point-trained model")
    if problem is not None:
        return problem
    weights = cfg.MODEL.WEIGHTS
    try:
        register_datasets(args)
    except (OSError, ValueError, TypeError, AssertionError) as e:
        return f"--register: {e}"
    if args.dataset not in DatasetCatalog.list():
        return f"--dataset {args.dataset!r} is not a registered dataset (register a file with --register)"
    output = Path(args.output)
    if output.is_dir():
        return f"--output {output} is a directory"
    inputs = {
        f"the annotation file of --dataset {args.dataset}": MetadataCatalog.get(args.dataset).get(
            "json_file", None
        ),
        "MODEL.WEIGHTS": weights,
        "--config-file": args.config_file,
    }
    for what, path in inputs.items():
        if path and "://" not in str(path) and cli.same_file(path, output):
            return f"--output {output} is {what} ({path}): refusing to overwrite an input"
    existing = next(p for p in (output.absolute().parent, *output.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot create --output {output}: {existing} is not a writable directory"
    return None


def run(args: argparse.Namespace, launcher_pid: int) -> None:
    """One process: its share of the images; rank 0 also writes the output."""
    if os.getpid() != launcher_pid:  # a spawned process: it must not outlive the command
        die_with_parent(launcher_pid)
    register_datasets(args)  # in every process of a multi-process run
    cfg = setup(args)
    logger = setup_logger(name="point_sup", distributed_rank=comm.get_rank())
    setup_logger(distributed_rank=comm.get_rank())  # Detectron2's own messages (checkpoint loading)
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    records = predict_pseudo_masks(
        model,
        DatasetCatalog.get(args.dataset),
        cfg.INPUT.FORMAT,
        resize,
        batch_size=args.batch_size,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
    if not comm.is_main_process():
        return
    coco = pseudo_mask_coco_dict(args.dataset, records)
    atomic_write_bytes(args.output, dumps_json(coco))
    logger.info(
        f"wrote {len(coco['annotations'])} pseudo masks for {len(coco['images'])} images to {args.output}; "
        f"register it with the image root {catalog_image_root(args.dataset) or '(none: absolute paths)'}"
    )


def main(argv: list[str] | None = None) -> str:
    """Parse, check (a problem is one line on stderr and exit code 2; nothing is written), then run
    in ``--num-gpus`` processes per machine. Returns ``--output``."""
    parser = argument_parser()
    args = parser.parse_args(argv)
    problem = input_error(args)
    if problem is None:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        try:
            probe_writable(args.output)  # before hours of inference, not after
        except OSError as e:
            problem = f"cannot write --output {args.output}: {e.strerror or e}"
    if problem is not None:  # one line; argparse's usage text is for mistakes in the flags
        parser.exit(2, f"{parser.prog}: error: {problem}\n")
    dist_url = args.dist_url or ("auto" if args.num_machines == 1 else None)
    launch(
        run,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=dist_url,
        args=(args, os.getpid()),
    )
    return args.output


if __name__ == "__main__":
    main()
