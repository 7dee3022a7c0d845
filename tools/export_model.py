#!/usr/bin/env python
"""Export a trained point_sup model to one TorchScript or ONNX file, for deployment without point_sup.

    python tools/export_model.py --config-file configs/nuclei/mask_rcnn_R_18_FPN_P10.yaml \\
        --format onnx --export-method tracing --sample-image datasets/nuclei/images/val_0.png \\
        --output exported/ MODEL.WEIGHTS output/demo/P10/model_final.pth

writes ``exported/model.onnx`` (``--format onnx``) or ``exported/model.ts`` (``--format
torchscript``), Detectron2's ``tools/deploy/export_model.py`` shape. The file maps the image,
resized as the config's test resize says, to the detections before pasting masks at the image's
size (docs/deployment.md: inputs, outputs, the metadata stored inside); ``tools/predict.py`` runs it
(``MODEL.WEIGHTS exported/model.onnx``) and draws the same pictures as the checkpoint.

Every head exports by tracing, to TorchScript and ONNX (opset 17); scripting makes TorchScript of the
Mask R-CNN family. The sample image is traced through; the exported model is then compared with the
model before the file appears: the same detections on the sample (class, box within 0.01 px, score
within 1e-3), the same number and scores on it transposed and on a blank image.

A bad request (a head/format/method pair that does not export, weights of another model, a missing
sample image, an output that is an input) is one error line and exit code 2, and nothing is written.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from detectron2.utils.logger import setup_logger

from point_sup import Predictor, UnreadableImageError
from point_sup.engine import cli
from point_sup.engine.experiment import ConfigError
from point_sup.export import ExportError, ExportOptions, export_model, support_error
from point_sup.export.exporter import FORMATS, METHODS, model_family
from point_sup.utils.images import read_image
from point_sup_labels.cli import OneLineErrorParser

logger = logging.getLogger("point_sup.export_model")

# The file written in --output for each format.
FILE_NAMES = {"torchscript": "model.ts", "onnx": "model.onnx"}


def argument_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="export_model.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--format", choices=FORMATS, default="torchscript", help="the file's format")
    parser.add_argument(
        "--export-method",
        choices=METHODS,
        default="tracing",
        help="tracing (every head) or scripting (TorchScript of the Mask R-CNN family)",
    )
    parser.add_argument(
        "--sample-image",
        required=True,
        metavar="IMAGE",
        help="an image to trace through and to check the written file on (where the model detects objects)",
    )
    parser.add_argument(
        "--output",
        required=True,
        metavar="DIR",
        help="folder for model.ts / model.onnx (created if missing)",
    )
    cli.add_config_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns 0. A bad request exits with code 2 (SystemExit), nothing written."""
    parser = argument_parser()
    args = parser.parse_args(argv)
    setup_logger(name="point_sup")
    options = ExportOptions(args.format, args.export_method)
    try:
        cfg = cli.load_config(args.config_file, args.opts)
    except ConfigError as e:
        parser.error(str(e))
    problem = cli.weights_error(cfg)
    if problem is not None:
        parser.error(problem)
    output = Path(args.output) / FILE_NAMES[options.format]
    for name, path in (("MODEL.WEIGHTS", cfg.MODEL.WEIGHTS), ("--sample-image", args.sample_image)):
        if cli.same_file(output, path):
            parser.error(f"--output {args.output}: {output} is the {name} file; choose another folder")
    try:
        sample = read_image(args.sample_image, "BGR")
    except UnreadableImageError as e:
        parser.error(f"--sample-image: {e}")
    try:
        predictor = Predictor(cfg)
        family = model_family(predictor.model)
    except (OSError, ValueError) as e:
        parser.error(str(e))
    problem = support_error(family, options)
    if problem is not None:
        parser.error(f"--format {options.format} --export-method {options.method}: {problem}")
    created = not output.parent.exists()
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        export_model(predictor.model, predictor.cfg, sample, options, output, config_name=args.config_file)
    except ExportError as e:
        if created:
            output.parent.rmdir()
        parser.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
