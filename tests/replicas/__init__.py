"""Tiny replicas of the paper's datasets in the exact on-disk layouts of ``datasets/README.md``.

Each replica is built under a temporary ``$DETECTRON2_DATASETS`` from real image content (the
nuclei tiles of :mod:`point_sup.data.nuclei`), so that the README's commands run as written: the
same file names, JSON fields and folders a user downloads, only a handful of images. The nuclei
instances are given the dataset's own categories (round robin over a few of them), so every
category id, name and count rule of the real dataset is exercised.

:func:`nuclei_tiles` is the shared input; each dataset's builder lives in its own module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class NucleiTile:
    """One real image tile and its instances.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        masks: (K, H, W) bool, one binary mask per nucleus (disjoint).
        split: "train" or "val" (the nuclei regions, disjoint).
        index: position of the tile within its split.
    """

    image: np.ndarray
    masks: np.ndarray
    split: str
    index: int


def nuclei_tiles(nuclei_paths: dict) -> dict[str, list[NucleiTile]]:
    """The nuclei tiles by split, read from the files of the ``nuclei_datasets`` fixture.

    Args:
        nuclei_paths: ``point_sup.data.register_nuclei``'s result (``"train"``, ``"val"`` JSON
            paths and ``"image_root"``).
    """
    from PIL import Image
    from pycocotools import mask as mask_util

    out: dict[str, list[NucleiTile]] = {}
    for split in ("train", "val"):
        coco = json.loads(Path(nuclei_paths[split]).read_text())
        tiles = []
        for index, img in enumerate(coco["images"]):
            image = np.asarray(Image.open(Path(nuclei_paths["image_root"]) / img["file_name"]).convert("RGB"))
            anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
            masks = np.stack([mask_util.decode(a["segmentation"]).astype(bool) for a in anns])
            tiles.append(NucleiTile(image=image, masks=masks, split=split, index=index))
        out[split] = tiles
    return out


def quadrants(tiles: list[NucleiTile], min_area: int = 16) -> list[NucleiTile]:
    """Each tile cut into its four quadrants (instances cut by the cut keep their part; slivers under
    ``min_area`` pixels are dropped): more, smaller images, for fractions of a training set."""
    out = []
    for tile in tiles:
        h, w = tile.masks.shape[1:]
        for r0, r1 in ((0, h // 2), (h // 2, h)):
            for c0, c1 in ((0, w // 2), (w // 2, w)):
                masks = tile.masks[:, r0:r1, c0:c1]
                keep = masks.sum(axis=(1, 2)) >= min_area
                out.append(
                    NucleiTile(tile.image[r0:r1, c0:c1].copy(), masks[keep].copy(), tile.split, len(out))
                )
    return out
