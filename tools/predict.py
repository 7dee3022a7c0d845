#!/usr/bin/env python
"""Predict instance masks on your own images with a trained model: pictures, and a COCO results file.

    python tools/predict.py --config-file configs/nuclei/mask_rcnn_R_18_FPN_P10.yaml \\
        --input my_images/ extra.png 'more/*.jpg' --output predictions/ \\
        MODEL.WEIGHTS output/demo/P10/model_final.pth
    python tools/predict.py --config-file ... --input my_images/ --output predictions/ \\
        --coco-json predictions/results.json [--coco-images my_images.json] MODEL.WEIGHTS ...

--input takes image files, folders (the image files directly inside: .png .jpg .jpeg .tif .tiff .bmp
.webp) and glob patterns (quoted, so that the tool expands them: the same extensions). --output is a
folder (created if missing) that gets one PNG per image, named after it (``photo.jpg`` ->
``photo.png``; ``_2``, ``_3`` ... where two inputs share a name): the masks scoring at least
--score-threshold as coloured fills with contours, with "class score" labels where the model has
more than one class. It must not be the folder of an input image, so that no input is overwritten
and a second run does not take the pictures for inputs.

--coco-json writes the detections in COCO's results format (a list of ``image_id``,
``category_id``, ``bbox`` [x, y, w, h], ``score``, ``segmentation`` as compressed RLE, plus the
image's ``file_name`` as given), all of them, whatever --score-threshold (COCO evaluation ranks
them; the model keeps those above MODEL.ROI_HEADS.SCORE_THRESH_TEST, 0.05 by default). With
--coco-images, a COCO file listing these images (their ground truth, for example), the ids are
that file's: an image is the one whose ``file_name`` ends the input's path, and the model's classes
are its categories in id order, as Detectron2 numbers them; ``pycocotools``'
``COCO(that_file).loadRes(results)`` then reads the results and COCOeval scores them. Without it,
images are numbered 1, 2, ... in input order and classes take the ids of the config's test
dataset where it is registered, else 1, 2, ....

--config-file is a YAML file, or the name of a config shipped with point_sup (e.g.
``nuclei/mask_rcnn_R_18_FPN_P10.yaml``; ``point_sup.model_zoo.list_configs()`` lists them).
Trailing ``KEY VALUE`` pairs override it, as in tools/train_net.py (also right after --input's
paths: its values end at the first config key); MODEL.WEIGHTS names the trained model: a checkpoint,
or a file of tools/export_model.py (``model.ts``, ``model.onnx``), which then decides the test resize
itself and draws the same pictures. MODEL.DEVICE is "cuda" where there is a GPU, else "cpu", unless an
override sets it.

An image that cannot be read is one error line naming it; the others are still predicted, and the
exit code is 1 at the end. A mistake in the command (flags, config, weights, output folder) is one
error line and exit code 2, before anything is written. Every file is written atomically.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import Metadata
from detectron2.structures import Instances
from detectron2.utils.logger import setup_logger
from PIL import Image
from pycocotools import mask as mask_util
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from point_sup import Predictor, UnreadableImageError, draw_predictions
from point_sup.config import model_num_classes
from point_sup.engine import cli
from point_sup.engine.experiment import ConfigError
from point_sup.export import ExportedModel
from point_sup.export.runtime import SUFFIXES as EXPORTED_SUFFIXES
from point_sup.utils.images import read_image
from point_sup_labels.cli import OneLineErrorParser
from point_sup_labels.file_io import atomic_open, atomic_write_text

# Taken from folders and glob patterns; a file named on its own is read whatever its extension.
IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
# A config key (MODEL.WEIGHTS, SEED, ...): where the overrides begin.
CONFIG_KEY = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z][A-Z0-9_]*)*")

logger = logging.getLogger("point_sup.predict")


def argument_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="predict.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--input",
        required=True,
        nargs="+",
        metavar="PATH",
        help="image files, folders of images and quoted glob patterns ('photos/*.jpg')",
    )
    parser.add_argument(
        "--output",
        required=True,
        metavar="DIR",
        help="folder for the pictures (one PNG per image; created if missing; not an input folder)",
    )
    parser.add_argument("--coco-json", metavar="FILE", help="also write the detections as COCO results")
    parser.add_argument(
        "--coco-images",
        metavar="COCO.json",
        help="with --coco-json: take image and category ids from this COCO file listing the images",
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=0.5,
        help="the least score of a drawn mask (default 0.5; --coco-json holds every detection)",
    )
    cli.add_config_argument(parser)
    return parser


# ----------------------------------------------------------------------------------------------
# Inputs and outputs


def split_overrides(inputs: list[str], opts: list[str]) -> tuple[list[str], list[str]]:
    """``--input``'s values up to the first config key, and the overrides from there on.

    ``--input`` takes any number of values, so overrides written right after it (``--input a.png
    MODEL.WEIGHTS m.pth``) land among them; a config key that is not an existing path ends them.
    """
    for k, item in enumerate(inputs):
        # IMG_0001.JPG has a key's shape: a missing image stays an input, and is reported as missing.
        if (
            CONFIG_KEY.fullmatch(item)
            and not item.lower().endswith(IMAGE_EXTENSIONS)
            and not os.path.exists(item)
        ):
            return inputs[:k], [*inputs[k:], *opts]
    return inputs, opts


def _is_image_file(path: str) -> bool:
    return os.path.isfile(path) and path.lower().endswith(IMAGE_EXTENSIONS)


def expand_inputs(items: list[str]) -> tuple[list[str], list[str]]:
    """The image files that ``--input`` names, in order and each once, and a problem per item that
    names none (a missing path, an empty folder, a pattern matching no image)."""
    images: list[str] = []
    problems: list[str] = []
    for item in items:
        if os.path.isfile(item):
            found = [item]
        elif os.path.isdir(item):
            found = sorted(os.path.join(item, name) for name in os.listdir(item))
            found = [path for path in found if _is_image_file(path)]
        elif glob.escape(item) != item:  # a pattern: the shell left it to us, as it was quoted
            found = [path for path in sorted(glob.glob(item, recursive=True)) if _is_image_file(path)]
        else:
            problems.append(f"--input {item} does not exist")
            continue
        if not found:
            problems.append(f"--input {item} holds no image ({' '.join(IMAGE_EXTENSIONS)})")
        images += found
    seen: set[str] = set()
    unique = [p for p in images if not (os.path.realpath(p) in seen or seen.add(os.path.realpath(p)))]
    return unique, problems


def picture_names(images: list[str]) -> list[str]:
    """One distinct PNG name per image: its stem, then ``_2``, ``_3`` ... for a stem met before."""
    used: set[str] = set()
    names = []
    for path in images:
        stem, k = Path(path).stem, 1
        name = f"{stem}.png"
        while name in used:
            k += 1
            name = f"{stem}_{k}.png"
        used.add(name)
        names.append(name)
    return names


def output_error(args: argparse.Namespace, images: list[str], cfg: CfgNode) -> str | None:
    """Why the outputs cannot be written without touching an input, or None."""
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        return f"--output {out_dir} is a file, not a folder"
    # The folder an image is listed in, and the one its file really is in (through a link).
    folders = {os.path.realpath(os.path.dirname(os.path.abspath(i))) for i in images}
    folders |= {os.path.dirname(os.path.realpath(i)) for i in images}
    if os.path.realpath(out_dir) in folders:
        return f"--output {out_dir} holds input images: pictures could overwrite them; choose another folder"
    if args.coco_json is not None:
        inputs = [
            ("--config-file", args.config_file),
            ("MODEL.WEIGHTS", cfg.MODEL.WEIGHTS),
            ("--coco-images", args.coco_images),
            *(("an input image", image) for image in images),
        ]
        for what, path in inputs:
            if path and "://" not in str(path) and cli.same_file(path, args.coco_json):
                return f"--coco-json {args.coco_json} is {what} ({path}): refusing to overwrite an input"
        if os.path.isdir(args.coco_json):
            return f"--coco-json {args.coco_json} is a folder"
    elif args.coco_images is not None:
        return "--coco-images gives the ids of --coco-json's results: give --coco-json too"
    return None


# ----------------------------------------------------------------------------------------------
# COCO ids


@dataclass
class CocoIds:
    """The ids written into the COCO results.

    Attributes:
        image_ids: per input image, its COCO image id (None: not listed in --coco-images).
        category_ids: per contiguous class index of the model, its COCO category id.
        class_names: the category names where --coco-images gives them (for the pictures), else None.
    """

    image_ids: list[int | None]
    category_ids: list[int]
    class_names: list[str] | None = None


def _read_coco_images(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            coco = json.load(f)
    except OSError as e:
        raise ValueError(f"cannot read --coco-images {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"--coco-images {path} is not JSON: {e}") from None
    ok = isinstance(coco, dict) and all(isinstance(coco.get(key), list) for key in ("images", "categories"))
    ok = ok and all(isinstance(i, dict) and "id" in i and "file_name" in i for i in coco["images"])
    if not ok or not all(isinstance(c, dict) and "id" in c for c in coco["categories"]):
        raise ValueError(
            f"--coco-images {path} is not a COCO file: it needs 'images' (with 'id' and 'file_name') and "
            "'categories' (with 'id')"
        )
    return coco


def coco_ids(images: list[str], coco_images: str | None, cfg: CfgNode, metadata: Metadata | None) -> CocoIds:
    """Image and category ids for the results (see the module docstring); ValueError: the COCO file
    is unreadable or its categories are not the model's classes."""
    num_classes = model_num_classes(cfg)
    if coco_images is None:
        id_map = metadata.get("thing_dataset_id_to_contiguous_id", None) if metadata is not None else None
        if id_map and len(id_map) == num_classes:
            by_class = {contiguous: dataset_id for dataset_id, contiguous in id_map.items()}
            category_ids = [by_class[k] for k in range(num_classes)]
        else:
            category_ids = list(range(1, num_classes + 1))
        return CocoIds(list(range(1, len(images) + 1)), category_ids)

    coco = _read_coco_images(coco_images)
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    if len(categories) != num_classes:
        raise ValueError(
            f"--coco-images {coco_images} has {len(categories)} categories, the model {num_classes} classes"
        )
    # An input matches the listed image whose file_name (relative to some image root) ends its path;
    # among several, the longest such file_name.
    listed = [(Path(i["file_name"]).parts, i["id"]) for i in coco["images"]]
    image_ids: list[int | None] = []
    for image in images:
        parts = Path(image).resolve().parts
        matches = [(len(p), image_id) for p, image_id in listed if p and parts[-len(p) :] == p]
        image_ids.append(max(matches)[1] if matches else None)
    names = [str(c.get("name", c["id"])) for c in categories]
    return CocoIds(image_ids, [c["id"] for c in categories], names)


def coco_results(instances: Instances, image_id: int, file_name: str, category_ids: list[int]) -> list[dict]:
    """COCO results of one image: one dict per detection, with the mask as compressed RLE."""
    boxes = instances.pred_boxes.tensor.numpy() if instances.has("pred_boxes") else None
    masks = instances.pred_masks.numpy() if instances.has("pred_masks") else None
    results = []
    for i in range(len(instances)):
        record = {
            "image_id": image_id,
            "file_name": file_name,
            "category_id": category_ids[int(instances.pred_classes[i])],
            "score": round(float(instances.scores[i]), 5),
        }
        if boxes is not None:
            x0, y0, x1, y1 = (float(v) for v in boxes[i])
            record["bbox"] = [round(v, 2) for v in (x0, y0, x1 - x0, y1 - y0)]
        if masks is not None:
            rle = mask_util.encode(np.asfortranarray(masks[i].astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            record["segmentation"] = rle
        results.append(record)
    return results


# ----------------------------------------------------------------------------------------------


def build_predictor(cfg: CfgNode) -> Predictor | ExportedModel:
    """The model that :func:`main` calls on each image (an (H, W, 3) array in ``input_format``): an
    exported file where MODEL.WEIGHTS ends in .ts or .onnx, else the checkpoint with the config."""
    if Path(cfg.MODEL.WEIGHTS).suffix.lower() in EXPORTED_SUFFIXES:
        return ExportedModel(cfg.MODEL.WEIGHTS, device=cfg.MODEL.DEVICE)
    return Predictor(cfg)


def _save_png(path: Path, picture: np.ndarray) -> None:
    with atomic_open(path, "wb") as f:
        Image.fromarray(picture).save(f, format="PNG")


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit code (0; 1: some images could not be read). A mistake in
    the command exits with code 2 (SystemExit) before anything is written."""
    parser = argument_parser()
    args = parser.parse_args(argv)
    args.input, args.opts = split_overrides(args.input, args.opts)
    if not args.input:
        parser.error("--input: expected at least one image, folder or pattern before the overrides")
    setup_logger(name="point_sup")
    setup_logger()  # Detectron2's own messages (the checkpoint loading)
    try:
        cfg = cli.load_config(args.config_file, args.opts)
    except ConfigError as e:
        parser.error(str(e))
    problem = cli.weights_error(cfg)
    images, missing = expand_inputs(args.input)
    if problem is None and not images:
        problem = "no image to predict: " + "; ".join(missing)
    problem = problem or output_error(args, images, cfg)
    if problem is not None:
        parser.error(problem)
    try:
        predictor = build_predictor(cfg)
        ids = coco_ids(images, args.coco_images, cfg, predictor.metadata) if args.coco_json else None
    except (OSError, ValueError) as e:
        parser.error(str(e))
    metadata = Metadata(thing_classes=ids.class_names) if ids and ids.class_names else predictor.metadata
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)

    failed = list(missing)
    for problem in missing:
        logger.error(problem)
    results: list[dict] = []
    with logging_redirect_tqdm(loggers=[logging.getLogger("point_sup")]):
        bar = tqdm(list(zip(images, picture_names(images), strict=True)), desc="predict", unit="image")
        for k, (image, name) in enumerate(bar):
            image_id = ids.image_ids[k] if ids is not None else None
            if ids is not None and image_id is None:
                failed.append(f"{image} is not listed in --coco-images {args.coco_images}")
                logger.error(failed[-1])
                continue
            try:
                rgb = read_image(image, "RGB")
            except UnreadableImageError as e:
                failed.append(str(e))
                logger.error(failed[-1])
                continue
            instances = predictor(rgb if predictor.input_format == "RGB" else rgb[:, :, ::-1])
            _save_png(out_dir / name, draw_predictions(rgb, instances, metadata, args.score_threshold))
            if ids is not None:
                results += coco_results(instances, image_id, image, ids.category_ids)

    done = len(images) - (len(failed) - len(missing))
    logger.info(f"wrote {done} pictures to {out_dir}")
    if args.coco_json is not None:
        atomic_write_text(args.coco_json, json.dumps(results))
        logger.info(f"wrote {len(results)} detections on {done} images to {args.coco_json}")
    if failed:
        logger.error(f"{len(failed)} of the inputs failed (see above); the others were predicted")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
