"""The small real dataset that ships offline: the 2018 Data Science Bowl nuclei image of ``stardist``.

The ``stardist`` wheel on PyPI carries ``stardist/data/images/img2d.tif``, a real 512x512
fluorescence microscopy image, and ``mask2d.tif``, its instance label image (125 nuclei; 0 is
background). The TIFFs are read straight from the wheel (importing stardist would pull in
TensorFlow). :func:`build_nuclei_coco` cuts the image into disjoint train and validation regions
and writes each as a COCO-format instance segmentation dataset (PNG tiles, compressed-RLE masks)
that every part of point_sup can consume: the P_N simulator, the dataset loaders, the demo and tests.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from point_sup_labels.file_io import atomic_open, atomic_write_text

__all__ = [
    "NUCLEI_SPLITS",
    "build_nuclei_coco",
    "default_cache_dir",
    "fetch_stardist_wheel",
    "load_nuclei",
]

STARDIST_VERSION = "0.9.2"
_IMAGE_MEMBER = "stardist/data/images/img2d.tif"
_MASK_MEMBER = "stardist/data/images/mask2d.tif"

# Disjoint regions of the 512x512 image, (row0, row1, col0, col1) in pixel indices, end exclusive.
# Training: the top three quarters in four 192x256 tiles; validation: the bottom quarter in two
# 128x256 tiles. Nuclei cut by a region border keep only their part inside the tile.
NUCLEI_SPLITS: dict[str, list[tuple[int, int, int, int]]] = {
    "train": [(0, 192, 0, 256), (0, 192, 256, 512), (192, 384, 0, 256), (192, 384, 256, 512)],
    "val": [(384, 512, 0, 256), (384, 512, 256, 512)],
}
MIN_INSTANCE_AREA = 16  # pixels; smaller slivers left by a tile border are dropped


def default_cache_dir() -> Path:
    """``$POINT_SUP_CACHE`` or ``~/.cache/point_sup``."""
    return Path(os.environ.get("POINT_SUP_CACHE", Path.home() / ".cache" / "point_sup"))


def fetch_stardist_wheel(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the cached ``stardist`` wheel, downloading it from PyPI (3 MB) if it is not cached.

    Only the wheel file is fetched (``pip download --no-deps``), never installed. Any platform's
    wheel carries the same data, so one fixed platform is requested.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    found = sorted(cache.glob(f"stardist-{STARDIST_VERSION}-*.whl"))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
            "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64",
            "-d", tmp, f"stardist=={STARDIST_VERSION}",
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("stardist-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not download stardist=={STARDIST_VERSION} from PyPI (it carries the nuclei "
                f"image): {proc.stderr.strip()[-500:]}\nPut the wheel into {cache} by hand to work offline."
            )
        target = cache / wheels[0].name
        os.replace(wheels[0], target)  # atomic: a concurrent reader never sees a partial wheel
    return target


def load_nuclei(cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The nuclei image and its instance labels.

    Returns:
        image: (512, 512, 3) uint8, grey replicated to three channels (intensities 0..235 in the file).
        labels: (512, 512) int32, 0 = background, k > 0 = nucleus k.
    """
    import tifffile

    with zipfile.ZipFile(fetch_stardist_wheel(cache_dir)) as wheel:
        image = tifffile.imread(io.BytesIO(wheel.read(_IMAGE_MEMBER)))
        labels = tifffile.imread(io.BytesIO(wheel.read(_MASK_MEMBER)))
    if image.max() > 255:
        raise ValueError(f"{_IMAGE_MEMBER}: unexpected intensity range up to {image.max()}")
    grey = image.astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2), labels.astype(np.int32)


def _instance_annotations(labels: np.ndarray, image_id: int, first_ann_id: int) -> list[dict]:
    from pycocotools import mask as mask_util

    anns = []
    for k in np.unique(labels):
        if k == 0:
            continue
        mask = labels == k
        area = int(mask.sum())
        if area < MIN_INSTANCE_AREA:
            continue
        ys, xs = np.nonzero(mask)
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        anns.append(
            {
                "id": first_ann_id + len(anns),
                "image_id": image_id,
                "category_id": 1,
                # Tight box in continuous coordinates: pixel i covers [i, i + 1).
                "bbox": [
                    int(xs.min()),
                    int(ys.min()),
                    int(xs.max() - xs.min() + 1),
                    int(ys.max() - ys.min() + 1),
                ],
                "area": area,
                "iscrowd": 0,
                "segmentation": rle,
            }
        )
    return anns


def build_nuclei_coco(
    out_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None
) -> dict[str, Path]:
    """Write the train and val splits of :data:`NUCLEI_SPLITS` as COCO datasets under ``out_dir``.

    Layout: ``out_dir/images/{split}_{i}.png`` and ``out_dir/annotations/nuclei_{split}.json``
    (one category, ``nucleus``, id 1). Idempotent; files are written to a temporary name first.

    Returns:
        ``{"train": json_path, "val": json_path, "image_root": images_dir}``.
    """
    from PIL import Image

    out = Path(out_dir)
    image_root = out / "images"
    ann_dir = out / "annotations"
    image_root.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    image, labels = load_nuclei(cache_dir)
    result: dict[str, Path] = {"image_root": image_root}
    for split, regions in NUCLEI_SPLITS.items():
        images, annotations = [], []
        for i, (r0, r1, c0, c1) in enumerate(regions):
            image_id = len(images) + 1
            file_name = f"{split}_{i}.png"
            with atomic_open(image_root / file_name, "wb") as f:
                Image.fromarray(image[r0:r1, c0:c1]).save(f, format="PNG")
            images.append({"id": image_id, "file_name": file_name, "height": r1 - r0, "width": c1 - c0})
            annotations += _instance_annotations(labels[r0:r1, c0:c1], image_id, len(annotations) + 1)
        dataset = {
            "info": {
                "description": f"DSB2018 nuclei (stardist {STARDIST_VERSION} img2d.tif), {split} region"
            },
            "images": images,
            "annotations": annotations,
            "categories": [{"id": 1, "name": "nucleus", "supercategory": "cell"}],
        }
        path = ann_dir / f"nuclei_{split}.json"
        atomic_write_text(path, json.dumps(dataset))
        result[split] = path
    return result
