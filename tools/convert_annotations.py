#!/usr/bin/env python
"""Convert boxes and P_N points between the project's COCO JSON and CVAT, Label Studio, labelme.

    python tools/convert_annotations.py annotations.xml boxes.json --from cvat --to coco --boxes-only
    python tools/convert_annotations.py points.json points.xml --from coco --to cvat
    python tools/convert_annotations.py export.json points.json --from label-studio --to coco
    python tools/convert_annotations.py labelme_dir/ points.json --from labelme --to coco

Formats: ``coco`` (COCO JSON: boxes, with ``point_coords``/``point_labels`` if any; the annotation
tool's input and output), ``cvat`` ("CVAT for images 1.1" XML), ``label-studio`` (Label Studio's
JSON export), ``labelme`` (a folder of labelme JSON files, for input and output). Points are
integer pixel indices in COCO and continuous coordinates in the tools: a tool's point is the
pixel that holds it, a pixel is written at its centre (see :mod:`point_sup_labels.formats`).
Converting to ``coco`` from a file without points (or with ``--boxes-only``) gives the boxes-only
file that ``tools/annotate.py --annotations`` takes. The logic lives in
:mod:`point_sup_labels.formats`; this is the command-line shell. Nothing is written unless the
whole input was read and checked (bad input: exit 1; an OUTPUT that would overwrite an input:
exit 2), and outputs are written atomically.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from point_sup_labels.coco_format import CocoFormatError, load_coco_instances
from point_sup_labels.formats import FORMATS, Options, read_annotations, write_annotations
from point_sup_labels.formats.outputs import check_outputs, write_files
from point_sup_labels.formats.rules import warn_points_outside_boxes
from point_sup_labels.log import setup_logger
from point_sup_labels.process import exit_on_termination, raise_if_stop_requested

logger = logging.getLogger("point_sup.convert_annotations")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convert_annotations.py",
        description="Convert boxes and P_N point annotations (box + N points, each object or background) "
        "between COCO JSON and CVAT, Label Studio and labelme.",
        epilog="Examples: convert_annotations.py annotations.xml boxes.json --from cvat --to coco; "
        "convert_annotations.py points.json labelme_dir --from coco --to labelme. A tool's point "
        "at continuous coordinate c is pixel floor(c); a pixel is written at its centre, index + 0.5.",
    )
    parser.add_argument(
        "input", metavar="INPUT", help="the file to read (for labelme: a folder of JSON files)"
    )
    parser.add_argument("output", metavar="OUTPUT", help="the file to write (for labelme: a folder)")
    parser.add_argument("--from", dest="source_format", required=True, choices=FORMATS, help="INPUT's format")
    parser.add_argument("--to", dest="target_format", required=True, choices=FORMATS, help="OUTPUT's format")
    parser.add_argument(
        "--boxes-only",
        action="store_true",
        help="write boxes without points (with --to coco: the input of tools/annotate.py; automatic "
        "when INPUT has no points)",
    )
    parser.add_argument(
        "--reference",
        metavar="COCO.json",
        help="with --to coco: take categories and image ids from this COCO file (e.g. the boxes the "
        "points were asked for); images match by file name, categories by name",
    )
    parser.add_argument(
        "--object-label", default="object", help="the label of an object point (default 'object')"
    )
    parser.add_argument(
        "--background-label",
        default="background",
        help="the label of a background point (default 'background')",
    )
    parser.add_argument(
        "--point-attribute",
        default="label",
        metavar="NAME",
        help="CVAT: a points shape with <attribute name=NAME> takes object/background from its value "
        "instead of its label (default 'label')",
    )
    parser.add_argument(
        "--image-url-prefix",
        default="",
        metavar="PREFIX",
        help="Label Studio: written before each file name in data.image and removed when reading "
        "(e.g. '/data/local-files/?d=images/')",
    )
    return parser


def _output_problem(args: argparse.Namespace) -> str | None:
    """Why OUTPUT cannot be written, told before anything is read, or None."""
    out = Path(args.output)
    parent = out.resolve().parent
    if not parent.is_dir():
        return f"the output directory {parent} does not exist"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"the output directory {parent} is not writable"
    if args.target_format == "labelme":
        if out.exists() and not out.is_dir():
            return f"OUTPUT {out} is a file; with --to labelme it is a folder (of per-image JSON files)"
    elif out.is_dir():
        return f"OUTPUT {out} is a directory (--to {args.target_format} writes one file)"
    return check_outputs([out], _inputs(args))


def _inputs(args: argparse.Namespace) -> dict[str, str]:
    inputs = {"INPUT": args.input}
    if args.reference is not None:
        inputs["--reference"] = args.reference
    return inputs


def main(argv: list[str] | None = None) -> int:
    # SIGTERM runs the same cleanup as Ctrl-C: staged outputs are removed, none is half-written.
    with exit_on_termination():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.reference is not None and args.target_format != "coco":
        parser.error("--reference applies to --to coco only")
    if args.object_label == args.background_label:
        parser.error("--object-label and --background-label must differ")
    setup_logger("point_sup")
    setup_logger("point_sup_labels")  # the readers' warnings

    problem = _output_problem(args)
    if problem is not None:
        logger.error("%s", problem)
        return 2
    t0 = time.perf_counter()
    try:
        reference = (
            load_coco_instances(args.reference, require_segmentation=False)
            if args.reference is not None
            else None
        )
        options = Options(
            object_label=args.object_label,
            background_label=args.background_label,
            point_attribute=args.point_attribute,
            image_url_prefix=args.image_url_prefix,
            reference=reference,
        )
        dataset = read_annotations(args.input, args.source_format, options)
        boxes_only = args.boxes_only
        if not boxes_only and dataset.num_points == 0 and args.target_format == "coco":
            boxes_only = True
            logger.info(
                "INPUT has no points: writing a boxes-only COCO file (the input of tools/annotate.py)"
            )
        if not boxes_only:
            without = sum(not o.points for img in dataset.images for o in img.objects)
            if without and dataset.num_points:
                logger.warning(
                    "%d of %d objects have no points (written with empty point lists)",
                    without,
                    dataset.num_objects,
                )
            warn_points_outside_boxes(dataset)
        files = write_annotations(dataset, args.output, args.target_format, options, boxes_only=boxes_only)
    except CocoFormatError as e:  # (FormatError is one) bad input, named; nothing written
        logger.error("%s", e)
        return 1
    except OSError as e:  # e.g. an unreadable folder under a labelme INPUT
        logger.error("cannot read %s (%s); no output was written", e.filename or args.input, e.strerror or e)
        return 1
    problem = check_outputs(files, _inputs(args))
    if problem is not None:
        logger.error("%s", problem)
        return 2
    try:
        raise_if_stop_requested()
        write_files(files)
    except OSError as e:
        logger.error(
            "cannot write %s (%s); no output was written", e.filename or args.output, e.strerror or e
        )
        return 1
    labels = [lab for img in dataset.images for o in img.objects for lab in o.labels]
    logger.info(
        "%s: %d images, %d objects, %d points (%d object, %d background)%s",
        args.input,
        len(dataset.images),
        dataset.num_objects,
        len(labels),
        sum(labels),
        len(labels) - sum(labels),
        "; points left out (--boxes-only)" if boxes_only and labels else "",
    )
    if args.target_format == "label-studio" and not args.image_url_prefix:
        logger.info(
            "data.image holds the bare file names: for Label Studio to find the images, give "
            "--image-url-prefix (e.g. '/data/local-files/?d=images/' for local storage)"
        )
    where = args.output if len(files) == 1 else f"{len(files)} files under {args.output}"
    logger.info("wrote %s (%s, %.2f s)", where, args.target_format, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
