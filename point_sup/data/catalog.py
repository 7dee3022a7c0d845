"""A dataset registered in Detectron2's catalogs, written back as a COCO instances dict.

The P_N tools read COCO files; Detectron2 users often have datasets only as registered names (the
builtin Cityscapes loader, pseudo masks made in memory). This module turns those into COCO dicts
with :mod:`point_sup_labels.coco_format`'s conventions: ``file_name`` relative to the dataset's
image root, integer image ids, JSON-serializable RLE.
"""

from __future__ import annotations

import os
from typing import Any

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_dict

from point_sup_labels.coco_format import CocoFormatError, integer_image_ids, relative_image_paths

__all__ = ["catalog_image_root", "coco_dict_from_catalog"]


def catalog_image_root(dataset_name: str) -> str | None:
    """The image directory that the metadata of a registered dataset names, or None.

    ``image_root`` (COCO-style datasets, :func:`detectron2.data.datasets.register_coco_instances`)
    or ``image_dir`` (Detectron2's builtin Cityscapes datasets).
    """
    meta = MetadataCatalog.get(dataset_name)
    for key in ("image_root", "image_dir"):
        root = meta.get(key, None)
        if isinstance(root, str | os.PathLike) and os.fspath(root):
            return os.fspath(root)
    return None


def coco_dict_from_catalog(dataset_name: str, records: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A dataset registered in Detectron2's ``DatasetCatalog`` (or ``records``, Detectron2-format
    dicts described by ``dataset_name``'s metadata) as a COCO instances dict.

    Uses Detectron2's own ``convert_to_coco_dict`` (boxes to XYWH, dataset category ids restored
    through ``thing_dataset_id_to_contiguous_id`` when the metadata has it; ``records`` go through a
    transient dataset name carrying that metadata); RLE ``counts`` held as bytes are decoded to str
    so that the result is JSON-serializable.

    Detectron2's loaders give each image's full path (e.g.
    ``datasets/cityscapes/leftImg8bit/train/aachen/x.png``), but a COCO file's ``file_name`` is
    read relative to the image root it is registered with. So ``file_name`` is written relative to
    the image directory of the dataset's metadata (:func:`catalog_image_root`) for images under
    it, and as an absolute path otherwise (no image directory, or an image outside it). Image ids
    that are not integers (Detectron2's Cityscapes file names) become 1..N
    (:func:`point_sup_labels.coco_format.integer_image_ids`).
    """
    if records is None:
        if dataset_name not in DatasetCatalog.list():
            raise CocoFormatError(f"no dataset named {dataset_name!r} is registered in DatasetCatalog")
        coco = convert_to_coco_dict(dataset_name)
    else:
        coco = _records_to_coco(dataset_name, records)
    relative_image_paths(coco["images"], catalog_image_root(dataset_name))
    integer_image_ids(coco)
    for ann in coco["annotations"]:
        segm = ann.get("segmentation")
        if isinstance(segm, dict) and isinstance(segm.get("counts"), bytes):
            segm["counts"] = segm["counts"].decode("ascii")
        if isinstance(segm, dict) and isinstance(segm.get("size"), tuple):
            segm["size"] = list(segm["size"])
    return coco


def _records_to_coco(dataset_name: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    tmp_name = f"{dataset_name}__point_sup_records"
    if tmp_name in DatasetCatalog.list():
        DatasetCatalog.remove(tmp_name)
        MetadataCatalog.remove(tmp_name)
    DatasetCatalog.register(tmp_name, lambda: records)
    meta = MetadataCatalog.get(dataset_name)
    for key in ("thing_classes", "thing_dataset_id_to_contiguous_id"):
        if meta.get(key, None) is not None:
            MetadataCatalog.get(tmp_name).set(**{key: meta.get(key)})
    try:
        return convert_to_coco_dict(tmp_name)
    finally:
        DatasetCatalog.remove(tmp_name)
        MetadataCatalog.remove(tmp_name)
