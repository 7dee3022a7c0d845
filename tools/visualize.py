#!/usr/bin/env python
"""Draw P_N point annotations and model predictions on images, to PNG files.

Point annotations of a registered dataset (object points red, background blue, as in the
paper's Figure 1):
    python tools/visualize.py --dataset coco_2017_train_p10 --output vis/ --num-images 20

Predictions of a model, beside its points:
    python tools/visualize.py --dataset nuclei_val --output vis/ \\
        --config-file configs/nuclei/mask_rcnn_R_18_FPN_P10.yaml MODEL.WEIGHTS output/model_final.pth
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.engine import DefaultPredictor
from detectron2.utils.logger import setup_logger
from PIL import Image
from tqdm import tqdm

import point_sup  # noqa: F401  (registers point_sup's datasets and heads)
from point_sup import add_point_sup_config
from point_sup.data import register_point_datasets
from point_sup.utils.visualizer import draw_points, draw_predictions
from point_sup_labels.file_io import atomic_open


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", required=True, help="registered dataset whose images are drawn")
    parser.add_argument("--output", required=True, help="output directory for PNG files")
    parser.add_argument("--num-images", type=int, default=10, help="how many images (first N; 0 = all)")
    parser.add_argument("--config-file", help="a model config: also draw its predictions")
    parser.add_argument(
        "--score-threshold", type=float, default=0.5, help="minimum score of drawn predictions"
    )
    parser.add_argument("--scale", type=int, default=1, help="enlarge images N times before drawing")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS path")
    return parser.parse_args(argv)


def _save_png(path: str, image: np.ndarray) -> None:
    with atomic_open(path, "wb") as f:
        Image.fromarray(image).save(f, format="PNG")


def main(argv: list[str] | None = None) -> list[str]:
    args = parse_args(argv)
    logger = setup_logger(name="point_sup")
    register_point_datasets([args.dataset])
    metadata = MetadataCatalog.get(args.dataset)
    records = DatasetCatalog.get(args.dataset)
    if args.num_images > 0:
        records = records[: args.num_images]
    predictor = None
    if args.config_file:
        cfg = get_cfg()
        add_point_sup_config(cfg)
        cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
        if not torch.cuda.is_available():
            cfg.MODEL.DEVICE = "cpu"
        cfg.freeze()
        predictor = DefaultPredictor(cfg)
    os.makedirs(args.output, exist_ok=True)
    written = []
    for record in tqdm(records, desc="drawing", unit="img"):
        image = utils.read_image(record["file_name"], format="RGB")
        stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
        panels = [draw_points(image, record.get("annotations", []), metadata, scale=args.scale)]
        if predictor is not None:
            bgr = np.ascontiguousarray(image[:, :, ::-1]) if predictor.input_format == "BGR" else image
            instances = predictor(bgr)["instances"]
            panels.append(
                draw_predictions(image, instances, metadata, args.score_threshold, scale=args.scale)
            )
        path = os.path.join(args.output, f"{stem}.png")
        _save_png(path, np.concatenate(panels, axis=1))
        written.append(path)
    logger.info(f"wrote {len(written)} images to {args.output}")
    return written


if __name__ == "__main__":
    main()
