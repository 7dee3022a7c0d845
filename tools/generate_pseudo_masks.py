#!/usr/bin/env python
"""Self-training, first stage (paper §3.3.2): pseudo masks for every ground-truth box of a dataset.

    python tools/generate_pseudo_masks.py --config-file configs/COCO/mask_rcnn_R_50_FPN_3x_P10.yaml \\
        --dataset coco_2017_train_p10 --output datasets/coco/annotations/instances_train2017_pseudo.json \\
        MODEL.WEIGHTS output/coco_p10/model_final.pth

The model runs on each training image with the ground-truth boxes given as detections; the output
is a COCO-format instances JSON (compressed RLE masks) for the second-stage config
(configs/COCO/mask_rcnn_R_50_FPN_3x_self_training.yaml), written atomically. Image file names in it
are relative to the image root of --dataset, so register it with that root:

    python tools/train_net.py --register coco_2017_train_pseudo_masks \
        datasets/coco/annotations/instances_train2017_pseudo.json datasets/coco/train2017 \
        --config-file configs/COCO/mask_rcnn_R_50_FPN_3x_self_training.yaml
"""

from __future__ import annotations

import argparse
import os

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

import point_sup  # noqa: F401  (registers point_sup's heads and datasets)
from point_sup import add_point_sup_config
from point_sup.data import register_point_datasets
from point_sup.data.catalog import catalog_image_root
from point_sup.engine.pseudo_masks import predict_pseudo_masks, pseudo_mask_coco_dict
from point_sup_labels.coco_format import dumps_json
from point_sup_labels.file_io import atomic_write_bytes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, help="config of the point-trained model")
    parser.add_argument("--dataset", required=True, help="registered training dataset (boxes are used)")
    parser.add_argument("--output", required=True, help="output COCO JSON with pseudo masks")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS path")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    logger = setup_logger(name="point_sup")
    cfg = get_cfg()
    add_point_sup_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    register_point_datasets([args.dataset])
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    records = predict_pseudo_masks(model, DatasetCatalog.get(args.dataset), cfg.INPUT.FORMAT, resize)
    coco = pseudo_mask_coco_dict(args.dataset, records)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    atomic_write_bytes(args.output, dumps_json(coco))
    logger.info(
        f"wrote {len(coco['annotations'])} pseudo masks for {len(coco['images'])} images to {args.output}; "
        f"register it with the image root {catalog_image_root(args.dataset) or '(none: absolute paths)'}"
    )
    return args.output


if __name__ == "__main__":
    main()
