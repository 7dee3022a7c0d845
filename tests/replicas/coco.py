"""COCO 2017, LVIS v1 and PASCAL VOC 2012 (instance, COCO JSON) replicas, in datasets/README.md's layouts.

``coco/{train,val}2017/000000xxxxxx.jpg`` with ``coco/annotations/instances_{train,val}2017.json``
(COCO's 80 thing categories with their real, non-contiguous ids; polygons, and one crowd region per
training image as uncompressed RLE, as COCO stores crowds); ``lvis/lvis_v1_{train,val}.json`` over
the same COCO images, found through ``coco_url`` (no ``file_name``, LVIS's 1203 categories with
their frequency groups, ``neg_category_ids`` / ``not_exhaustive_category_ids``); and
``voc_2012_instance/{JPEGImages,annotations}`` with Detectron2's VOC class names, ids 1..20.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

from . import NucleiTile, quadrants

COCO_CATEGORY_IDS = (1, 3, 18, 44)  # person, car, dog, bottle: the nuclei take these round robin
VOC_CATEGORY_IDS = (15, 7, 12)  # person, car, dog in Detectron2's VOC order (1-based)


def _jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons (``[x0, y0, x1, y1, ...]``, pixel-centre coordinates) of a binary mask's outer
    contours with at least 3 vertices."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = [(c.reshape(-1, 2).astype(np.float64) + 0.5).reshape(-1).tolist() for c in contours if len(c) >= 3]
    return [p for p in out if len(p) >= 6]


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (crowd regions): run lengths in column-major order, zeros first."""
    flat = mask.astype(np.uint8).flatten(order="F")
    boundaries = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [len(flat)]])
    runs = np.diff(boundaries).tolist()
    return {"counts": [0, *runs] if flat[0] else runs, "size": list(mask.shape)}


def _coco_image(image_id: int, split: str, tile: NucleiTile) -> dict:
    h, w = tile.masks.shape[1:]
    file_name = f"{image_id:012d}.jpg"
    return {
        "license": 1,
        "file_name": file_name,
        "coco_url": f"http://images.cocodataset.org/{split}2017/{file_name}",
        "height": int(h),
        "width": int(w),
        "date_captured": "2013-11-14 11:18:45",
        "flickr_url": f"http://farm1.staticflickr.com/1/{image_id}_replica.jpg",
        "id": image_id,
    }


def _instances(tile: NucleiTile, image_id: int, first_id: int, category_ids, crowd: bool) -> list[dict]:
    anns = []
    masks = list(tile.masks)
    crowd_mask = None
    if crowd and len(masks) > 4:
        crowd_mask = masks.pop(0) | masks.pop(0)  # two nuclei, labelled as one crowd region
    for k, mask in enumerate(masks):
        segm = polygons(mask)
        if not segm:
            continue
        anns.append(
            {
                "segmentation": segm,
                "area": float(mask_util.area(mask_util.merge(mask_util.frPyObjects(segm, *mask.shape)))),
                "iscrowd": 0,
                "image_id": image_id,
                "bbox": _bbox(mask),
                "category_id": category_ids[k % len(category_ids)],
                "id": first_id + len(anns),
            }
        )
    if crowd_mask is not None:
        anns.append(
            {
                "segmentation": _uncompressed_rle(crowd_mask),
                "area": float(crowd_mask.sum()),
                "iscrowd": 1,
                "image_id": image_id,
                "bbox": _bbox(crowd_mask),
                "category_id": category_ids[0],
                "id": first_id + len(anns),
            }
        )
    return anns


def _coco_categories() -> list[dict]:
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    return [
        {"supercategory": "thing", "id": c["id"], "name": c["name"]} for c in COCO_CATEGORIES if c["isthing"]
    ]


def build_coco(datasets_root: Path, tiles: dict[str, list[NucleiTile]]) -> Path:
    """``coco/`` under ``datasets_root``: train2017 (the quadrants of the nuclei train tiles: 16
    images, so that 10 % of them is an image) and val2017 (the two val tiles)."""
    tiles = {"train": quadrants(tiles["train"]), "val": tiles["val"]}
    root = datasets_root / "coco"
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    next_image, next_ann = {"train": 9, "val": 139}, 1
    for split in ("train", "val"):
        (root / f"{split}2017").mkdir(exist_ok=True)
        images, annotations = [], []
        for i, tile in enumerate(tiles[split]):
            image_id = next_image[split] + 1000 * i
            img = _coco_image(image_id, split, tile)
            (root / f"{split}2017" / img["file_name"]).write_bytes(_jpeg(tile.image))
            anns = _instances(tile, image_id, next_ann, COCO_CATEGORY_IDS, crowd=split == "train")
            next_ann += len(anns)
            images.append(img)
            annotations += anns
        coco = {
            "info": {"description": f"point_sup test replica of COCO {split}2017", "version": "1.0"},
            "licenses": [
                {"url": "http://creativecommons.org/licenses/by/2.0/", "id": 1, "name": "CC BY 2.0"}
            ],
            "images": images,
            "annotations": annotations,
            "categories": _coco_categories(),
        }
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(coco))
    return root


def build_lvis(datasets_root: Path) -> Path:
    """``lvis/`` over the COCO replica's images (build_coco first): LVIS v1 JSON, coco_url only."""
    from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES

    by_frequency = {f: next(c["id"] for c in LVIS_CATEGORIES if c["frequency"] == f) for f in "rcf"}
    category_ids = (by_frequency["f"], by_frequency["c"], by_frequency["r"])
    root = datasets_root / "lvis"
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        coco = json.loads(
            (datasets_root / "coco" / "annotations" / f"instances_{split}2017.json").read_text()
        )
        images = []
        for img in coco["images"]:
            lvis_img = {k: v for k, v in img.items() if k != "file_name"}
            lvis_img["neg_category_ids"] = [by_frequency["r"] + 1]
            lvis_img["not_exhaustive_category_ids"] = []
            images.append(lvis_img)
        annotations = []
        for k, ann in enumerate(a for a in coco["annotations"] if not a["iscrowd"]):  # LVIS has no crowds
            annotations.append(
                {key: ann[key] for key in ("segmentation", "area", "image_id", "bbox", "id")}
                | {"category_id": category_ids[k % len(category_ids)]}
            )
        counts = {c: sum(a["category_id"] == c for a in annotations) for c in category_ids}
        image_counts = {
            c: len({a["image_id"] for a in annotations if a["category_id"] == c}) for c in category_ids
        }
        categories = [
            {**c, "image_count": image_counts.get(c["id"], 0), "instance_count": counts.get(c["id"], 0)}
            for c in LVIS_CATEGORIES
        ]
        lvis = {
            "info": {"description": f"point_sup test replica of LVIS v1 {split}"},
            "licenses": coco["licenses"],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        (root / f"lvis_v1_{split}.json").write_text(json.dumps(lvis))
    return root


def build_voc(datasets_root: Path, tiles: dict[str, list[NucleiTile]]) -> Path:
    """``voc_2012_instance/`` (SBD-style VOC 2012 instance masks exported to COCO JSON)."""
    from detectron2.data.datasets.pascal_voc import CLASS_NAMES

    root = datasets_root / "voc_2012_instance"
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    categories = [{"supercategory": "none", "id": i + 1, "name": n} for i, n in enumerate(CLASS_NAMES)]
    next_ann = 1
    for split, year in (("train", 2008), ("val", 2007)):
        images, annotations = [], []
        for i, tile in enumerate(tiles[split]):
            image_id = int(f"{year}{i + 8:06d}")
            file_name = f"{year}_{i + 8:06d}.jpg"
            (root / "JPEGImages" / file_name).write_bytes(_jpeg(tile.image))
            h, w = tile.masks.shape[1:]
            images.append({"id": image_id, "file_name": file_name, "height": int(h), "width": int(w)})
            anns = _instances(tile, image_id, next_ann, VOC_CATEGORY_IDS, crowd=False)
            next_ann += len(anns)
            annotations += anns
        coco = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"voc_2012_{split}_instance.json").write_text(json.dumps(coco))
    return root
