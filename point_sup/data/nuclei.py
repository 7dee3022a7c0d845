"""The small real dataset that ships offline: the 2018 Data Science Bowl nuclei image of ``stardist``.

The ``stardist`` wheel on PyPI carries ``stardist/data/images/img2d.tif``, a real 512x512
fluorescence microscopy image, and ``mask2d.tif``, its instance label image (125 nuclei; 0 is
background). The TIFFs are read straight from the wheel (importing stardist would pull in
TensorFlow). :func:`build_nuclei_coco` cuts the image into disjoint train and validation regions
and writes each as a COCO-format instance segmentation dataset (PNG tiles, compressed-RLE masks)
that every part of point_sup can consume: the P_N simulator, the dataset loaders, the demo and tests.

K-fold protocol (:func:`nuclei_folds`, :func:`build_nuclei_folds_coco`): fold k of K validates on
the horizontal band of rows ``[k * 512 / K, (k + 1) * 512 / K)`` (two tiles of 256 columns) and trains
on the rest of the image minus a gap: every row of every nucleus that intersects the band (read from
the label image), so that no nucleus and no pixel row is in both the training and the validation
tiles of a fold. The bands cover the image; each nucleus is *scored* in exactly one validation tile
of one fold, the one that holds most of its pixels (ties: the first fold, then the left tile). In the
other validation tiles that it reaches, its part is a crowd annotation (``iscrowd`` 1: COCO's
evaluation ignores detections on it rather than counting them as false positives). MIN_INSTANCE_AREA:
a nucleus whose part in its scoring tile is smaller than :data:`MIN_INSTANCE_AREA` is a crowd region
there too, so it is validated in no fold (:func:`unscored_nuclei` lists them; none on this image
for any allowed K: 2, 4, 8 or 16); training tiles drop slivers under that area as the single split
does.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from point_sup_labels.file_io import atomic_open, atomic_write_text

__all__ = [
    "DEFAULT_NUM_FOLDS",
    "NUCLEI_SPLITS",
    "NucleiFold",
    "build_nuclei_coco",
    "build_nuclei_folds_coco",
    "check_fold_indices",
    "check_num_folds",
    "default_cache_dir",
    "fetch_stardist_wheel",
    "fold_dataset_name",
    "load_nuclei",
    "nuclei_folds",
    "unscored_nuclei",
]

logger = logging.getLogger(__name__)

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

Region = tuple[int, int, int, int]  # (row0, row1, col0, col1), end exclusive

# The k-fold protocol (module docstring).
DEFAULT_NUM_FOLDS = 4
IMAGE_SIZE = 512  # rows = columns of the nuclei image
TILE_WIDTH = 256  # every tile, training or validation, is one of the two column halves
MAX_TRAIN_TILE_ROWS = 192  # a taller training row range is cut into equal tiles no taller (as the split)
MIN_TRAIN_TILE_ROWS = 32  # a shorter training row range (above or below the gap) is left unused
MIN_BAND_ROWS = 32  # validation bands are at least this tall: K <= 16


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


def _instance_annotations(
    labels: np.ndarray, image_id: int, first_ann_id: int, scored: Collection[int] | None = None
) -> list[dict]:
    """Annotations of the nuclei in a tile's ``labels`` (H, W). With ``scored``, every nucleus not in
    it becomes a crowd annotation, whatever its area; without, slivers under MIN_INSTANCE_AREA are
    dropped and none is crowd."""
    from pycocotools import mask as mask_util

    anns = []
    for k in np.unique(labels):
        if k == 0:
            continue
        mask = labels == k
        area = int(mask.sum())
        crowd = scored is not None and int(k) not in scored
        if area < MIN_INSTANCE_AREA and not crowd:
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
                "iscrowd": int(crowd),
                "segmentation": rle,
            }
        )
    return anns


def _output_dirs(out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``out_dir/images`` and ``out_dir/annotations``, created if missing."""
    out = Path(out_dir)
    image_root, ann_dir = out / "images", out / "annotations"
    image_root.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    return image_root, ann_dir


def build_nuclei_coco(
    out_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None
) -> dict[str, Path]:
    """Write the train and val splits of :data:`NUCLEI_SPLITS` as COCO datasets under ``out_dir``.

    Layout: ``out_dir/images/{split}_{i}.png`` and ``out_dir/annotations/nuclei_{split}.json``
    (one category, ``nucleus``, id 1). Idempotent; files are written to a temporary name first.

    Returns:
        ``{"train": json_path, "val": json_path, "image_root": images_dir}``.
    """
    image_root, ann_dir = _output_dirs(out_dir)
    image, labels = load_nuclei(cache_dir)
    result: dict[str, Path] = {"image_root": image_root}
    for split, regions in NUCLEI_SPLITS.items():
        path = ann_dir / f"nuclei_{split}.json"
        description = f"DSB2018 nuclei (stardist {STARDIST_VERSION} img2d.tif), {split} region"
        _write_coco_tiles(image, labels, regions, split, image_root, path, {"description": description})
        result[split] = path
    return result


def _write_coco_tiles(
    image: np.ndarray,
    labels: np.ndarray,
    regions: Iterable[Region],
    prefix: str,
    image_root: Path,
    path: Path,
    info: dict,
    record_regions: bool = False,
    scored: list[Collection[int]] | None = None,
) -> None:
    """Write the tiles ``regions`` of ``image`` (H, W, 3) as ``image_root/{prefix}_{i}.png`` and their
    nuclei (from ``labels``, (H, W)) as a COCO dataset at ``path``, each file atomically.
    ``record_regions``: each image records its ``region`` [row0, row1, col0, col1]. ``scored`` (one
    id collection per region): the nuclei not scored in a tile are crowd annotations there
    (:func:`_instance_annotations`)."""
    from PIL import Image

    images, annotations = [], []
    for i, (r0, r1, c0, c1) in enumerate(regions):
        image_id = len(images) + 1
        file_name = f"{prefix}_{i}.png"
        with atomic_open(image_root / file_name, "wb") as f:
            Image.fromarray(image[r0:r1, c0:c1]).save(f, format="PNG")
        record = {"id": image_id, "file_name": file_name, "height": r1 - r0, "width": c1 - c0}
        if record_regions:
            record["region"] = [r0, r1, c0, c1]
        images.append(record)
        annotations += _instance_annotations(
            labels[r0:r1, c0:c1], image_id, len(annotations) + 1, None if scored is None else scored[i]
        )
    dataset = {
        "info": info,
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "nucleus", "supercategory": "cell"}],
    }
    atomic_write_text(path, json.dumps(dataset))


@dataclass(frozen=True)
class NucleiFold:
    """Fold ``index`` of ``num_folds`` (:func:`nuclei_folds`); rows and columns are pixel indices of
    the 512x512 image, end exclusive.

    Attributes:
        band: (row0, row1), the validation rows.
        gap: (row0, row1), containing ``band``: the rows no training tile has, the band and every row
            of each nucleus that intersects the band.
        train_regions: training tiles (row0, row1, col0, col1), in the rows outside ``gap``.
        val_regions: the validation tiles (row0, row1, col0, col1): the band's two column halves.
        val_scored: per validation tile, the ids of the nuclei scored there (the others it reaches
            are crowd annotations).
    """

    index: int
    num_folds: int
    band: tuple[int, int]
    gap: tuple[int, int]
    train_regions: tuple[Region, ...]
    val_regions: tuple[Region, ...]
    val_scored: tuple[frozenset[int], ...]

    @property
    def name(self) -> str:
        """``fold{index}of{num_folds}``, the stem of the fold's file and dataset names."""
        return f"fold{self.index}of{self.num_folds}"


def fold_dataset_name(fold: int, num_folds: int, split: str = "train") -> str:
    """``nuclei_fold{fold}of{num_folds}_{split}``: the dataset name of a fold's ``split`` (``train``,
    ``val``; a suffix such as ``train_p10`` or ``train_boxes`` names the variants of
    :func:`point_sup.data.builtin.register_nuclei_folds`)."""
    return f"nuclei_fold{fold}of{num_folds}_{split}"


def check_num_folds(num_folds: int) -> None:
    """ValueError unless ``num_folds`` cuts the 512 rows into equal bands of at least
    :data:`MIN_BAND_ROWS` rows (K in {2, 4, 8, 16})."""
    if isinstance(num_folds, bool) or not isinstance(num_folds, (int, np.integer)):
        raise ValueError(f"number of folds must be an integer, got {num_folds!r}")
    if num_folds < 2:
        raise ValueError(f"number of folds must be at least 2, got {num_folds}")
    if IMAGE_SIZE % num_folds or IMAGE_SIZE // num_folds < MIN_BAND_ROWS:
        allowed = [k for k in range(2, IMAGE_SIZE // MIN_BAND_ROWS + 1) if IMAGE_SIZE % k == 0]
        raise ValueError(
            f"number of folds {num_folds} does not cut the {IMAGE_SIZE} image rows into equal bands of at "
            f"least {MIN_BAND_ROWS} rows; use one of {allowed}"
        )


def check_fold_indices(folds: Iterable[int] | None, num_folds: int) -> list[int]:
    """The fold indices ``folds`` (default: all), checked against ``num_folds``, without repeats."""
    check_num_folds(num_folds)
    if folds is None:
        return list(range(num_folds))
    selected = list(dict.fromkeys(folds))
    for k in selected:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < num_folds:
            raise ValueError(f"fold index {k!r} is out of range for {num_folds} folds (0..{num_folds - 1})")
    return [int(k) for k in selected]


def _train_regions(gap: tuple[int, int], height: int, width: int) -> list[Region]:
    regions = []
    for r0, r1 in ((0, gap[0]), (gap[1], height)):
        rows = r1 - r0
        if rows < MIN_TRAIN_TILE_ROWS:
            continue
        n = -(-rows // MAX_TRAIN_TILE_ROWS)
        cuts = [r0 + round(i * rows / n) for i in range(n + 1)]
        regions += [
            (a, b, c, c + TILE_WIDTH)
            for a, b in itertools.pairwise(cuts)
            for c in range(0, width, TILE_WIDTH)
        ]
    return regions


def nuclei_folds(labels: np.ndarray, num_folds: int = DEFAULT_NUM_FOLDS) -> list[NucleiFold]:
    """The K-fold layout of the module docstring, computed from the label image.

    Args:
        labels: (512, 512) int, 0 = background, k > 0 = nucleus k (:func:`load_nuclei`).
        num_folds: K (:func:`check_num_folds`).

    Returns:
        The K folds, in band order (fold k validates on rows [k * 512 / K, (k + 1) * 512 / K)).
    """
    check_num_folds(num_folds)
    if labels.shape != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"nuclei label image must be {IMAGE_SIZE}x{IMAGE_SIZE}, got shape {labels.shape}")
    height, width = labels.shape
    band_rows = height // num_folds
    num_ids = int(labels.max()) + 1
    ys, xs = np.nonzero(labels)
    ids = labels[ys, xs]
    top = np.full(num_ids, height)
    np.minimum.at(top, ids, ys)
    bottom = np.full(num_ids, -1)  # last row, inclusive
    np.maximum.at(bottom, ids, ys)

    bands, gaps, val_regions = [], [], []
    for k in range(num_folds):
        b0, b1 = k * band_rows, (k + 1) * band_rows
        crossing = np.unique(labels[b0:b1])
        crossing = crossing[crossing > 0]
        g0 = min(b0, int(top[crossing].min())) if crossing.size else b0
        g1 = max(b1, int(bottom[crossing].max()) + 1) if crossing.size else b1
        bands.append((b0, b1))
        gaps.append((g0, g1))
        val_regions.append([(b0, b1, c, c + TILE_WIDTH) for c in range(0, width, TILE_WIDTH)])

    # Each nucleus is scored in the validation tile (of all folds') holding most of its pixels.
    tiles = [region for regions in val_regions for region in regions]
    counts = np.stack(
        [np.bincount(labels[r0:r1, c0:c1].ravel(), minlength=num_ids) for r0, r1, c0, c1 in tiles]
    )  # (tiles, ids)
    owner = counts.argmax(axis=0)
    scored = [
        frozenset(int(i) for i in np.nonzero((owner == t) & (counts[t] >= MIN_INSTANCE_AREA))[0] if i > 0)
        for t in range(len(tiles))
    ]
    per_fold = len(val_regions[0])
    folds = []
    for k in range(num_folds):
        train = _train_regions(gaps[k], height, width)
        if not train:
            raise ValueError(f"fold {k} of {num_folds} has no training rows outside its gap {gaps[k]}")
        folds.append(
            NucleiFold(
                index=k,
                num_folds=num_folds,
                band=bands[k],
                gap=gaps[k],
                train_regions=tuple(train),
                val_regions=tuple(val_regions[k]),
                val_scored=tuple(scored[k * per_fold : (k + 1) * per_fold]),
            )
        )
    return folds


def unscored_nuclei(labels: np.ndarray, folds: list[NucleiFold]) -> list[int]:
    """Ids of the nuclei of ``labels`` (H, W) that no validation tile of ``folds`` scores: those
    whose part in the tile holding most of their pixels is smaller than MIN_INSTANCE_AREA."""
    scored = set().union(*(ids for fold in folds for ids in fold.val_scored))
    return sorted(int(i) for i in np.unique(labels) if i > 0 and int(i) not in scored)


def build_nuclei_folds_coco(
    out_dir: str | os.PathLike,
    num_folds: int = DEFAULT_NUM_FOLDS,
    folds: Iterable[int] | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> dict[int, dict[str, Path]]:
    """Write the folds ``folds`` (default all) of :func:`nuclei_folds` as COCO datasets under ``out_dir``.

    Layout, next to :func:`build_nuclei_coco`'s files: ``out_dir/images/fold{k}of{K}_{split}_{i}.png``
    and ``out_dir/annotations/nuclei_fold{k}of{K}_{split}.json`` for split ``train`` and ``val``. Each
    image records its ``region`` (row0, row1, col0, col1) in the 512x512 image, and ``info["fold"]``
    the fold's band and gap. The validation sets carry crowd annotations (module docstring).
    Idempotent; every file is written to a temporary name first.

    Raises:
        ValueError: ``num_folds`` or a fold index is not allowed (:func:`check_fold_indices`).

    Returns:
        ``{k: {"train": json_path, "val": json_path, "image_root": images_dir}}`` for each fold k written.
    """
    selected = check_fold_indices(folds, num_folds)
    image_root, ann_dir = _output_dirs(out_dir)
    image, labels = load_nuclei(cache_dir)
    layout = nuclei_folds(labels, num_folds)
    missing = unscored_nuclei(labels, layout)
    if missing:
        logger.warning(
            f"nuclei {missing} are scored in no validation fold of {num_folds}: their part in the "
            f"validation tile holding most of them is under {MIN_INSTANCE_AREA} pixels"
        )
    result: dict[int, dict[str, Path]] = {}
    for k in selected:
        fold = layout[k]
        info = {
            "fold": {"index": k, "num_folds": num_folds, "band": list(fold.band), "gap": list(fold.gap)},
        }
        paths: dict[str, Path] = {"image_root": image_root}
        for split in ("train", "val"):
            path = ann_dir / f"{fold_dataset_name(k, num_folds, split)}.json"
            description = (
                f"DSB2018 nuclei (stardist {STARDIST_VERSION} img2d.tif), fold {k} of {num_folds}, {split}: "
                f"validation rows [{fold.band[0]}, {fold.band[1]}), training rows outside "
                f"[{fold.gap[0]}, {fold.gap[1]})"
            )
            train = split == "train"
            _write_coco_tiles(
                image,
                labels,
                fold.train_regions if train else fold.val_regions,
                f"{fold.name}_{split}",
                image_root,
                path,
                {"description": description, **info},
                record_regions=True,
                scored=None if train else list(fold.val_scored),
            )
            paths[split] = path
        result[k] = paths
    return result
