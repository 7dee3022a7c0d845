"""Boxes and P_N points to and from annotation tools: CVAT, Label Studio, labelme.

One module per tool, each with a reader (file -> :class:`~.dataset.Dataset`) and a writer
(:class:`~.dataset.Dataset` -> ``{path: bytes}``):

* :mod:`.cvat` — "CVAT for images 1.1" XML, points grouped with their box by ``group_id``;
* :mod:`.label_studio` — Label Studio's JSON export, keypoints tied to rectangles by ``parentID``
  or by containment, values in percent;
* :mod:`.labelme` — a folder of labelme JSON files, points tied to rectangles by ``group_id``;
* :mod:`.coco` — the COCO P_N side (``coco``: COCO JSON with ``point_coords``/``point_labels``,
  read and validated by :mod:`point_sup_labels.coco_format`).

Shared by them: :mod:`.dataset`, the in-memory form; :mod:`.rules`, the pixel convention (a
continuous point is the pixel ``floor(c)``; a pixel is written at its centre ``index + 0.5``),
conversions and checks; :mod:`.outputs`, writing the files all or none.

The command line is ``tools/convert_annotations.py``. Standard library only (plus the project's
numpy/orjson); see ``docs/your_own_annotations.md`` for why not datumaro.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .coco import read_coco, write_coco
from .cvat import read_cvat, write_cvat
from .dataset import BoxObject, Dataset, FormatError, ImageRecord, Options
from .label_studio import read_label_studio, write_label_studio
from .labelme import read_labelme, write_labelme

__all__ = [
    "FORMATS",
    "READERS",
    "WRITERS",
    "BoxObject",
    "Dataset",
    "FormatError",
    "ImageRecord",
    "Options",
    "read_annotations",
    "write_annotations",
]

FORMATS = ("coco", "cvat", "label-studio", "labelme")

READERS: dict[str, Callable[..., Dataset]] = {
    "coco": read_coco,
    "cvat": read_cvat,
    "label-studio": read_label_studio,
    "labelme": read_labelme,
}

WRITERS: dict[str, Callable[..., dict[Path, bytes]]] = {
    "coco": write_coco,
    "cvat": write_cvat,
    "label-studio": write_label_studio,
    "labelme": write_labelme,
}


def read_annotations(path: str | Path, fmt: str, options: Options | None = None) -> Dataset:
    """Read ``path`` in format ``fmt`` (one of :data:`FORMATS`)."""
    return READERS[fmt](path, options or Options())


def write_annotations(
    dataset: Dataset, path: str | Path, fmt: str, options: Options | None = None, *, boxes_only: bool = False
) -> dict[Path, bytes]:
    """The files (``{path: bytes}``, not yet written) of ``dataset`` in format ``fmt``; with
    ``boxes_only``, without points (for ``coco``: a boxes-only COCO file, the annotation tool's
    input)."""
    if boxes_only:
        dataset = dataset.boxes_only()
    if fmt == "coco":
        return write_coco(dataset, Path(path), options or Options(), boxes_only=boxes_only)
    return WRITERS[fmt](dataset, Path(path), options or Options())
