"""Cityscapes fine instance segmentation from the raw polygon files, with the public cityscapesscripts.

Detectron2 HEAD (since December 2024) imports cityscapesscripts from a Meta-internal path
(``deeplearning.projects.cityscapesApi``), so its builtin ``cityscapes_fine_instance_seg_{train,val,
test}`` datasets fail with ``No module named 'deeplearning'``. :func:`load_cityscapes_instances`
produces the same dataset dicts as Detectron2's ``load_cityscapes_instances(image_dir, gt_dir,
from_json=True, to_polygons=True)`` (the way those builtin datasets are registered), and
:func:`register_cityscapes_fallback` (called on ``import point_sup``) puts it behind the builtin names
where, and only where, Detectron2's own loader cannot import cityscapesscripts
(:func:`point_sup.compat.detectron2_cityscapes_usable`).

On-disk layout (``datasets/README.md``): ``leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png``
and, per image, ``gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_polygons.json`` with ``imgHeight``,
``imgWidth`` and ``objects``, each a ``label`` and a ``polygon`` of integer ``[x, y]`` pixel
coordinates. Only the JSON files are read; the ``*_gtFine_instanceIds.png`` that the evaluation uses
are rasterized from them by cityscapesscripts (``preparation/json2instanceImg.py``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from .. import compat

__all__ = [
    "CITYSCAPES_INSTANCE_DATASETS",
    "cityscapes_thing_labels",
    "load_cityscapes_instances",
    "register_cityscapes_fallback",
]

logger = logging.getLogger(__name__)

CITYSCAPES_INSTANCE_DATASETS = (
    "cityscapes_fine_instance_seg_train",
    "cityscapes_fine_instance_seg_val",
    "cityscapes_fine_instance_seg_test",
)
"""Detectron2's builtin Cityscapes instance segmentation datasets (``register_all_cityscapes``)."""

_IMAGE_SUFFIX = "leftImg8bit.png"
_POLYGONS_SUFFIX = "gtFine_polygons.json"
_GROUP_SUFFIX = "group"  # "cargroup", "persongroup", ...: a crowd of the class before the suffix
# Below this many images the loop is faster than starting worker processes.
_MIN_IMAGES_PER_POOL = 64


def _cityscapes_labels():
    try:
        from cityscapesscripts.helpers import labels
    except ImportError as e:
        raise ImportError(
            f"Loading Cityscapes needs the cityscapesscripts package ({e}): pip install cityscapesscripts"
        ) from e
    return labels


def cityscapes_thing_labels() -> list:
    """The 8 instance classes, in cityscapesscripts' label table order (person ... bicycle).

    Those with ``hasInstances`` and not ``ignoreInEval`` (``caravan`` and ``trailer`` have instances
    but are not evaluated). Their position in this list is the contiguous ``category_id`` and the
    index into Detectron2's Cityscapes ``thing_classes``. Returns cityscapesscripts ``Label`` tuples.
    """
    return [label for label in _cityscapes_labels().labels if label.hasInstances and not label.ignoreInEval]


def load_cityscapes_instances(
    image_dir: str | os.PathLike, gt_dir: str | os.PathLike, num_workers: int | None = None
) -> list[dict]:
    """Instance annotations of one Cityscapes split, read from its ``*_gtFine_polygons.json`` files.

    The same dicts as Detectron2's ``load_cityscapes_instances(image_dir, gt_dir, from_json=True,
    to_polygons=True)``, in the same order (cities and images in directory-listing order). Each is
    ``{"file_name": image path, "image_id": its base name, "height", "width" (from the JSON),
    "annotations": [...]}``, with one annotation per *visible* instance of the 8 evaluated classes,
    the topmost first (reverse file order):

    - ``segmentation``: polygons ``[[x0, y0, x1, y1, ...], ...]`` in absolute pixel coordinates
      (0 = left/top edge of the image), one per connected visible part, exterior rings only
      (closed: the first vertex is repeated at the end). cityscapesscripts rasterizes a file by
      drawing its objects in order, each overwriting the earlier ones, and PIL's polygon fill
      covers the pixels whose centre lies in or on the polygon; so each polygon is shifted by +0.5
      (integer coordinates are pixel centres) and grown by 0.5 px, and the part covered by any
      object drawn after it (instance or stuff) is removed. Holes are not represented (COCO
      polygons cannot), so an object entirely inside a later one is still covered by the earlier.
      Floating-point residue of these differences can leave parts of (almost) no area, even a
      whole annotation of an object hidden by later ones; they are kept, as Detectron2 keeps them.
    - ``bbox``: ``(x0, y0, x1, y1)`` of the visible part, ``bbox_mode`` ``BoxMode.XYXY_ABS``.
    - ``category_id``: contiguous index into :func:`cityscapes_thing_labels`.
    - ``iscrowd``: True for ``<class>group`` labels (e.g. ``cargroup``).

    Objects marked ``deleted``, with a negative label id (``license plate``: never drawn) or
    entirely covered by later objects are left out; stuff and non-evaluated classes are not
    annotated, but do cover the objects drawn before them.

    Args:
        image_dir: e.g. ``$DETECTRON2_DATASETS/cityscapes/leftImg8bit/train``.
        gt_dir: the matching ``.../cityscapes/gtFine/train``.
        num_workers: processes parsing the files in parallel; None: several for a large split
            (as Detectron2 does), none for fewer than 64 images; 0 or 1: in this process.

    Raises:
        FileNotFoundError: a folder, or the polygon file of an image, does not exist.
        ValueError: a file is not a ``*_leftImg8bit.png`` image, or an object has a label that
            cityscapesscripts does not know (the message names file and label).
        ImportError: cityscapesscripts (or shapely) is not installed.
    """
    image_dir, gt_dir = os.fspath(image_dir), os.fspath(gt_dir)
    files = _cityscapes_files(image_dir, gt_dir)
    category_ids = {label.id: index for index, label in enumerate(cityscapes_thing_labels())}
    parse = functools.partial(_image_record, category_ids=category_ids)
    if num_workers is None:
        # Every rank loads the dataset, so the cores are shared between ranks.
        cores = (os.cpu_count() or 1) // comm.get_world_size()
        num_workers = 0 if len(files) < _MIN_IMAGES_PER_POOL else min(8, max(1, cores // 2))
    if num_workers <= 1:
        records = [parse(f) for f in files]
    else:
        # The context manager waits for the workers and shuts them down, also on an error.
        with ProcessPoolExecutor(num_workers) as pool:
            records = list(pool.map(parse, files, chunksize=max(1, len(files) // (4 * num_workers))))
    logger.info(f"Loaded {len(records)} Cityscapes images from {image_dir}")
    return records


def _cityscapes_files(image_dir: str, gt_dir: str) -> list[tuple[str, str]]:
    """(image file, polygon JSON) of every image under ``image_dir/<city>/``."""
    for path, what in ((image_dir, "image"), (gt_dir, "annotation")):
        if not PathManager.isdir(path):
            raise FileNotFoundError(
                f"Cityscapes {what} folder {path} does not exist (expected cityscapes/leftImg8bit/<split>/"
                "<city>/*_leftImg8bit.png and cityscapes/gtFine/<split>/<city>/*_gtFine_polygons.json "
                "under $DETECTRON2_DATASETS, see datasets/README.md)"
            )
    files = []
    for city in PathManager.ls(image_dir):
        for name in PathManager.ls(os.path.join(image_dir, city)):
            image_file = os.path.join(image_dir, city, name)
            if not name.endswith(_IMAGE_SUFFIX):
                raise ValueError(f"{image_file} is not a Cityscapes image (*_{_IMAGE_SUFFIX})")
            json_file = os.path.join(gt_dir, city, name[: -len(_IMAGE_SUFFIX)] + _POLYGONS_SUFFIX)
            if not PathManager.isfile(json_file):
                raise FileNotFoundError(f"{json_file}, the annotation of {image_file}, does not exist")
            files.append((image_file, json_file))
    if not files:
        raise FileNotFoundError(f"No Cityscapes images in {image_dir}/<city>/")
    return files


def _image_record(files: tuple[str, str], category_ids: dict[int, int]) -> dict:
    """The dataset dict of one image (see :func:`load_cityscapes_instances`)."""
    try:
        from shapely.geometry import Polygon
    except ImportError as e:
        raise ImportError(f"Loading Cityscapes needs shapely ({e}): pip install shapely") from e
    name2label = _cityscapes_labels().name2label
    image_file, json_file = files
    with PathManager.open(json_file, "r") as f:
        content = json.load(f)

    annotations = []
    # Walking the objects from the last drawn to the first, `covered` is the area of those drawn
    # after the current one, i.e. what hides it in cityscapesscripts' images.
    covered = Polygon()
    for obj in reversed(content["objects"]):
        if obj.get("deleted"):
            continue
        label_name = obj["label"]
        is_group = label_name.endswith(_GROUP_SUFFIX)
        label = name2label.get(label_name)
        if label is None and is_group:
            label = name2label.get(label_name[: -len(_GROUP_SUFFIX)])
        if label is None:
            raise ValueError(f"{json_file}: unknown Cityscapes label '{label_name}'")
        if label.id < 0:  # not drawn by cityscapesscripts, so it hides nothing
            continue
        # float32 coordinates as Detectron2 reads them, so that the dicts agree to the bit (the
        # released files have integer coordinates, exact in either precision).
        vertices = np.asarray(obj["polygon"], dtype=np.float32) + 0.5
        # Grown by 0.5 px: PIL also fills the pixels whose centres lie on the outline. resolution=4:
        # 4 segments per quarter circle at the vertices, the same polygon Detectron2 builds.
        shape = Polygon(vertices).buffer(0.5, resolution=4)
        if label.id not in category_ids:  # stuff or a non-evaluated class: not annotated, but hides
            covered = covered.union(shape)
            continue
        visible = shape.difference(covered)
        if visible.is_empty:
            continue  # `covered` already contains the shape: the union would change nothing
        covered = covered.union(shape)
        parts = _polygon_parts(visible)
        bounds = np.array([part.bounds for part in parts])  # (P, 4) x0, y0, x1, y1
        annotations.append(
            {
                "iscrowd": is_group,
                "category_id": category_ids[label.id],
                "segmentation": [[c for xy in part.exterior.coords for c in xy] for part in parts],
                "bbox": (
                    float(bounds[:, 0].min()),
                    float(bounds[:, 1].min()),
                    float(bounds[:, 2].max()),
                    float(bounds[:, 3].max()),
                ),
                "bbox_mode": BoxMode.XYXY_ABS,
            }
        )
    return {
        "file_name": image_file,
        "image_id": os.path.basename(image_file),
        "height": content["imgHeight"],
        "width": content["imgWidth"],
        "annotations": annotations,
    }


def _polygon_parts(geometry) -> list:
    """The polygons of a shapely geometry (a Polygon, or the polygons of a collection)."""
    if geometry.geom_type == "Polygon":
        return [geometry]
    # MultiPolygon, or a GeometryCollection whose points and lines have no area.
    return [part for member in getattr(geometry, "geoms", ()) for part in _polygon_parts(member)]


_logged_why = False


@dataclass(frozen=True)
class _FallbackLoader:
    """The catalog entry of a builtin Cityscapes dataset whose Detectron2 loader is unusable."""

    image_dir: str
    gt_dir: str
    reason: str

    def __call__(self) -> list[dict]:
        global _logged_why
        if not _logged_why:
            # Logged on first use rather than on registration (``import point_sup``), when logging
            # is usually not configured yet.
            logger.info(f"Cityscapes is loaded by point_sup.data.cityscapes: {self.reason}")
            _logged_why = True
        return load_cityscapes_instances(self.image_dir, self.gt_dir)


def register_cityscapes_fallback() -> list[str]:
    """Load the builtin ``cityscapes_fine_instance_seg_*`` datasets with point_sup's loader if needed.

    Only where Detectron2's own Cityscapes code cannot import cityscapesscripts
    (:func:`point_sup.compat.detectron2_cityscapes_usable` is False, i.e. Detectron2 HEAD): each of
    :data:`CITYSCAPES_INSTANCE_DATASETS` is removed from the ``DatasetCatalog`` and registered again
    with :func:`load_cityscapes_instances` on the ``image_dir`` and ``gt_dir`` of its metadata. The
    ``MetadataCatalog`` entry (paths, ``evaluator_type``, ``thing_classes``, ...) stays Detectron2's.
    Names that are not registered, lack those paths or are already replaced are left as they are, so
    calling this again is harmless. The reason is logged once, when such a dataset is first loaded.
    Reads nothing from disk.

    Returns:
        The names replaced by this call.
    """
    reason = compat._detectron2_cityscapes_problem()
    if reason is None:
        return []
    replaced = []
    for name in CITYSCAPES_INSTANCE_DATASETS:
        if name not in DatasetCatalog or isinstance(DatasetCatalog[name], _FallbackLoader):
            continue
        meta = MetadataCatalog.get(name)
        image_dir, gt_dir = meta.get("image_dir"), meta.get("gt_dir")
        if image_dir is None or gt_dir is None:
            logger.debug(f"{name} has no image_dir/gt_dir metadata; left as it is")
            continue
        DatasetCatalog.remove(name)
        DatasetCatalog.register(name, _FallbackLoader(image_dir, gt_dir, reason))
        replaced.append(name)
    if replaced:
        logger.debug(f"Re-registered {replaced} with point_sup's Cityscapes loader: {reason}")
    return replaced
