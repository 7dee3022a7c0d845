#!/usr/bin/env python
"""Select the training subset of a COCO-format dataset for an annotation budget (paper §3.3.3, Figure 5).

    python tools/select_annotation_budget.py INPUT.json OUTPUT.json --supervision M --fraction 0.1
    python tools/select_annotation_budget.py P10.json OUTPUT.json --supervision P10 --budget-hours 3000

The images are taken in one seeded order that is the same for every supervision (``--seed``): the
first round(F x #images) of them for ``--fraction F``, or the longest run of them from the start whose
annotation time fits in ``--budget-hours H``. Annotation time: per image, COCO's categorization and
spotting stages; per object (every annotation, crowd ones included), 79.2 s for a polygon mask (M),
7 s + 0.9 s x N for a box and N points (P<N>), 7 s for a box only (B). OUTPUT is INPUT with only the
selected images and their annotations (every other top-level key kept), written atomically; the same
input and seed give a byte-identical file. The logic lives in :mod:`point_sup_labels.budget`;
this is the command-line shell.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from point_sup_labels.cli import OneLineErrorParser, number_type, seed  # argparse only: a fast start

logger = logging.getLogger("point_sup.select_annotation_budget")


# "inf" and "nan" are refused first ("not a finite number"), then the range.
_fraction = number_type(lambda v: 0 < v <= 1, "in (0, 1]", finite=True)
_positive = number_type(lambda v: v > 0, "> 0", finite=True)
_non_negative = number_type(lambda v: v >= 0, ">= 0", finite=True)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="select_annotation_budget.py",
        description=(
            "Select the images of a COCO-format dataset that fit an annotation budget or fraction "
            "(Cheng et al., CVPR 2022, Figure 5): nested subsets in one seeded image order shared by "
            "all supervisions, priced by the paper's time model."
        ),
        epilog=(
            "Annotation time = per image (categorization + spotting) + per object: M 79.2 s "
            "(polygon mask), P<N> 7 s + 0.9 s x N (box and N points), B 7 s (box). The per-image "
            "defaults are our reading of COCO's reported worker hours (Lin et al. 2014)."
        ),
    )
    parser.add_argument(
        "input",
        metavar="INPUT",
        help="COCO-format instances JSON: a mask file for M and B, a P_N point file for P<N> "
        "(e.g. from tools/prepare_point_annotations.py)",
    )
    parser.add_argument("output", metavar="OUTPUT", help="the subset JSON to write (never INPUT)")
    parser.add_argument(
        "--supervision",
        required=True,
        metavar="{M,B,P<N>}",
        help="the annotation form paid for: M (polygon masks), B (boxes), P<N> (box + N points, e.g. P10)",
    )
    amount = parser.add_mutually_exclusive_group(required=True)
    amount.add_argument(
        "--fraction",
        type=_fraction,
        metavar="F",
        help="take the first round(F x #images) images, F in (0, 1]",
    )
    amount.add_argument(
        "--budget-hours",
        type=_positive,
        metavar="H",
        help="take the longest prefix of the image order whose annotation time fits in H hours",
    )
    parser.add_argument("--seed", type=seed, default=0, help="seed of the image order (default 0)")
    parser.add_argument(
        "--categorization-seconds",
        type=_non_negative,
        metavar="X",
        help="categorization seconds per image (default 20000 h x 3600 / 328000 images = 219.5 s)",
    )
    parser.add_argument(
        "--spotting-seconds",
        type=_non_negative,
        metavar="Y",
        help="instance spotting seconds per image (default 10000 h x 3600 / 328000 images = 109.8 s)",
    )
    return parser


def _setup_logging() -> None:
    """Progress on stdout, warnings and errors on stderr (Detectron2-free: no import at start-up)."""
    if logger.handlers:
        return
    fmt = logging.Formatter("[%(asctime)s %(name)s]: %(message)s", datefmt="%m/%d %H:%M:%S")
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    err.setFormatter(logging.Formatter("[%(asctime)s %(name)s] %(levelname)s: %(message)s", "%m/%d %H:%M:%S"))
    out.setFormatter(fmt)
    logger.addHandler(out)
    logger.addHandler(err)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _check_paths(parser: argparse.ArgumentParser, input_path: str, output_path: str) -> None:
    """Before anything is read: OUTPUT can be written and is not INPUT (also through links)."""
    out = Path(output_path)
    if out.is_dir():
        parser.error(f"OUTPUT {output_path} is a directory")
    if not out.parent.is_dir():
        parser.error(f"the output directory {out.parent} of OUTPUT does not exist")
    if not os.path.isfile(input_path):
        what = "does not exist" if not os.path.exists(input_path) else "is not a file"
        parser.error(f"INPUT {input_path} {what}")
    same = os.path.realpath(input_path) == os.path.realpath(output_path)
    if not same and out.exists():
        same = os.path.samefile(input_path, output_path)  # hard links
    if same:
        parser.error(f"OUTPUT {output_path} is the INPUT file {input_path}: refusing to overwrite the input")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Imported only now: --help answers at once.
    from point_sup_labels.process import gc_paused

    with gc_paused():  # a loaded COCO file is millions of containers (see gc_paused)
        return _main(parser, args)


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from point_sup_labels.budget import (
        AnnotationTimeModel,
        BudgetError,
        check_supervision_fields,
        parse_supervision,
        select_images,
        subset_coco,
    )
    from point_sup_labels.coco_format import CocoFormatError, dumps_json, read_json, validate_coco_instances
    from point_sup_labels.file_io import atomic_write_bytes

    try:
        supervision = parse_supervision(args.supervision)
    except ValueError as e:
        parser.error(f"argument --supervision: {e}")
    _check_paths(parser, args.input, args.output)  # before anything is read
    overrides = {
        "categorization_seconds": args.categorization_seconds,
        "spotting_seconds": args.spotting_seconds,
    }
    model = AnnotationTimeModel(**{k: v for k, v in overrides.items() if v is not None})

    _setup_logging()
    t0 = time.perf_counter()
    try:
        instances = validate_coco_instances(
            read_json(args.input),
            source=args.input,
            require_segmentation=False,  # checked below, with a message about the supervision
            check_points=supervision.kind == "P",
        )
        check_supervision_fields(instances, supervision)
        data = instances.data
        logger.info(
            "loaded %s: %d images, %d annotations, %d categories (%.1f s)",
            args.input,
            len(data["images"]),
            len(data["annotations"]),
            len(data["categories"]),
            time.perf_counter() - t0,
        )
        selection = select_images(
            data,
            supervision,
            fraction=args.fraction,
            budget_hours=args.budget_hours,
            seed=args.seed,
            time_model=model,
        )
    except (CocoFormatError, BudgetError) as e:
        logger.error("%s", e)
        return 1

    try:
        atomic_write_bytes(args.output, dumps_json(subset_coco(data, selection)))
    except OSError as e:
        logger.error("cannot write %s: %s", args.output, e.strerror or e)
        return 1
    logger.info("time model: %s: %s", supervision, model.describe(supervision))
    for line in selection.summary():
        logger.info("%s", line)
    logger.info("wrote %s (%.1f s)", args.output, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
