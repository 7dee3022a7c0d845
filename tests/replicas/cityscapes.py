"""Cityscapes (fine, instance segmentation) replica, in datasets/README.md's layout.

``cityscapes/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` and, per image,
``cityscapes/gtFine/{split}/<city>/<city>_<seq>_<frame>_gtFine_{polygons.json,instanceIds.png,
labelIds.png}``: the training tiles in two cities (aachen, bochum), the validation tiles in one
(frankfurt). The JSON is what the real dataset ships (``imgHeight``, ``imgWidth``, ``objects`` with
``label`` and an integer ``polygon``), and the two PNGs are rasterized from it by cityscapesscripts'
own preparation code (``json2instanceImg.createInstanceImage`` / ``json2labelImg``), as the released
PNGs are. Tiles are enlarged 2x (nearest), so that most nuclei exceed the evaluation's 100-pixel
minimum region size.

Objects of each image, in drawing order (later ones overwrite earlier ones, as in the real files):

1. ``road`` over the whole image (stuff, drawn first as the real files' background classes are);
2. a ``rider`` with exactly the outline of the nucleus drawn next: entirely hidden (in the loaders'
   dicts at most a sliver without pixels, the floating-point residue of the polygon difference);
3. one object per nucleus, labelled round robin ``car``, ``person``, ``bicycle``
   (:data:`INSTANCE_LABELS`), except that the first nucleus of each split's first image is a
   ``cargroup`` (crowd) and the third of each split's second image a ``caravan`` (has instances
   but is not evaluated);
4. a ``person`` copy of the second nucleus, shifted by :data:`OCCLUDER_SHIFT`, drawn over it (the
   overlapping pair), and a ``truck`` over the centre marked ``deleted``;
5. a ``license plate`` (label id -1: never drawn) and a ``sidewalk`` band along the bottom edge, over
   whatever nuclei lie there (stuff hiding instances).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from . import NucleiTile

SCALE = 2  # tiles enlarged by nearest-neighbour upsampling
INSTANCE_LABELS = ("car", "person", "bicycle")  # the nuclei take these round robin
OCCLUDER_SHIFT = (6, 4)  # (dx, dy) pixels of the occluding copy of the second nucleus
SIDEWALK_ROWS = 24  # height of the sidewalk band at the bottom edge
CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt",)}
FRAME = 19  # the frame number, as in aachen_000000_000019
SIMPLIFY_PX = 1.0  # outline simplification tolerance (pixels)


def polygon(mask: np.ndarray) -> list[list[int]]:
    """Integer ``[[x, y], ...]`` vertices (pixel centres) of the largest outer contour of a mask.

    Simplified to within a pixel (Douglas-Peucker), so that the edges take any direction, as those
    of the hand-drawn Cityscapes polygons do, not only the 0/45/90 degrees of a pixel contour.
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    largest = max(contours, key=cv2.contourArea)
    return cv2.approxPolyDP(largest, SIMPLIFY_PX, True).reshape(-1, 2).tolist()


def _rectangle(x0: int, y0: int, x1: int, y1: int) -> list[list[int]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def cityscapes_objects(masks: np.ndarray, tile_index: int) -> list[dict]:
    """The ``objects`` of one image's polygon JSON (see the module docstring).

    Args:
        masks: (K, H, W) bool, the (enlarged) nuclei masks; K >= 2.
        tile_index: position of the image within its split.
    """
    _, h, w = masks.shape
    outlines = [polygon(m) for m in masks]
    objects: list[dict] = [{"label": "road", "polygon": _rectangle(0, 0, w - 1, h - 1)}]
    objects.append({"label": "rider", "polygon": outlines[0]})  # hidden by the next object
    for k, outline in enumerate(outlines):
        label = INSTANCE_LABELS[k % len(INSTANCE_LABELS)]
        if tile_index == 0 and k == 0:
            label = "cargroup"
        elif tile_index == 1 and k == 2:
            label = "caravan"
        objects.append({"label": label, "polygon": outline})
    dx, dy = OCCLUDER_SHIFT
    shifted = [[min(x + dx, w - 1), min(y + dy, h - 1)] for x, y in outlines[1]]
    objects.append({"label": "person", "polygon": shifted})
    centre = _rectangle(w // 4, h // 4, 3 * w // 4, 3 * h // 4)
    objects.append({"label": "truck", "polygon": centre, "deleted": 1})
    plate = _rectangle(w // 2, h // 2, w // 2 + 30, h // 2 + 12)
    objects.append({"label": "license plate", "polygon": plate})
    objects.append({"label": "sidewalk", "polygon": _rectangle(0, h - SIDEWALK_ROWS, w - 1, h - 1)})
    return objects


def build_cityscapes(datasets_root: Path, tiles: dict[str, list[NucleiTile]]) -> Path:
    """Write the replica under ``datasets_root/cityscapes`` and return that folder.

    Args:
        datasets_root: the ``$DETECTRON2_DATASETS`` folder.
        tiles: ``{"train": [...], "val": [...]}`` from :func:`replicas.nuclei_tiles`.
    """
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
    from cityscapesscripts.preparation.json2labelImg import json2labelImg

    root = Path(datasets_root) / "cityscapes"
    for split, split_tiles in tiles.items():
        cities = CITIES[split]
        for tile in split_tiles:
            city = cities[tile.index * len(cities) // len(split_tiles)]
            prefix = f"{city}_{tile.index:06d}_{FRAME:06d}"
            image = tile.image.repeat(SCALE, axis=0).repeat(SCALE, axis=1)  # (H, W, 3)
            masks = tile.masks.repeat(SCALE, axis=1).repeat(SCALE, axis=2)  # (K, H, W)
            image_dir = root / "leftImg8bit" / split / city
            gt_dir = root / "gtFine" / split / city
            image_dir.mkdir(parents=True, exist_ok=True)
            gt_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(image_dir / f"{prefix}_leftImg8bit.png")
            json_file = gt_dir / f"{prefix}_gtFine_polygons.json"
            content = {
                "imgHeight": int(image.shape[0]),
                "imgWidth": int(image.shape[1]),
                "objects": cityscapes_objects(masks, tile.index),
            }
            json_file.write_text(json.dumps(content, indent=4))
            annotation = Annotation()
            annotation.fromJsonFile(str(json_file))
            # json2instanceImg() saves its 32-bit "I" image as is, which recent Pillow (13 here) no
            # longer writes as PNG; the released instanceIds.png are 16-bit, and so is this one
            # (the ids, under 34000, fit).
            instance_ids = np.asarray(createInstanceImage(annotation, "ids"), dtype=np.uint16)
            Image.fromarray(instance_ids).save(gt_dir / f"{prefix}_gtFine_instanceIds.png")
            json2labelImg(str(json_file), str(gt_dir / f"{prefix}_gtFine_labelIds.png"), "ids")
    return root
