"""The in-memory form of boxes and P_N points that every format reader returns and every writer
takes (:mod:`point_sup_labels.formats`): a :class:`Dataset` of images (file name, size) with their
objects, each a :class:`BoxObject` (category name, box, points).

Frames (the rules are :mod:`.rules`'): a box is COCO's ``[x, y, w, h]`` in continuous image
coordinates (the image covers ``[0, width] x [0, height]``); a point is an integer pixel index
``(x, y)`` (column, row), labelled 1 (object) or 0 (background).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

from ..coco_format import CocoFormatError, CocoInstances

__all__ = ["BACKGROUND", "OBJECT", "BoxObject", "Dataset", "FormatError", "ImageRecord", "Options"]

OBJECT, BACKGROUND = 1, 0


class FormatError(CocoFormatError):
    """Bad input: ``"<file>: <where>: <reason>"`` on one line.

    Attributes:
        source: the file; where: the record in it (e.g. ``"image 'a.jpg': shapes[3] <points>"``),
            or None; reason: what is wrong.
    """

    def __init__(self, source: str | os.PathLike, reason: str, where: str | None = None) -> None:
        super().__init__(f"{where}: {reason}" if where else reason, source=os.fspath(source))
        self.where = where
        self.reason = reason


@dataclass(frozen=True)
class Options:
    """What the readers and writers are told beyond the file itself.

    Attributes:
        object_label, background_label: the names that mark a point object (1) or background (0):
            a CVAT points shape's label (or attribute, see ``point_attribute``), a Label Studio
            keypoint's label, a labelme point shape's label.
        point_attribute: CVAT only: a points shape with an ``<attribute name=point_attribute>``
            takes its object/background from that attribute's value instead of its label.
        image_url_prefix: Label Studio only: written before each file name in ``data.image``, and
            removed from ``data.image`` when reading (e.g. ``/data/local-files/?d=images/``).
        reference: COCO only, when writing: take image ids and categories from this COCO file
            (images matched by file name, categories by name).
    """

    object_label: str = "object"
    background_label: str = "background"
    point_attribute: str = "label"
    image_url_prefix: str = ""
    reference: CocoInstances | None = None

    def point_label(self, name: Any) -> int | None:
        """1 for the object name, 0 for the background name, None for anything else."""
        if name == self.object_label:
            return OBJECT
        if name == self.background_label:
            return BACKGROUND
        return None

    def label_name(self, label: int) -> str:
        return self.object_label if label == OBJECT else self.background_label

    def point_label_problem(self, name: Any) -> str:
        return (
            f"point label {name!r} is neither {self.object_label!r} (object) nor "
            f"{self.background_label!r} (background)"
        )


@dataclass(frozen=True)
class BoxObject:
    """One object: a box and its P_N points.

    Attributes:
        category: the category name.
        box_xywh: COCO ``[x, y, w, h]``, continuous image coordinates (see :mod:`.rules`).
        points: ``(x, y)`` integer pixel indices; labels: 1 object / 0 background, one per point.
        source_id: where the object was read (for messages), e.g. ``"shapes[2] <box>"``; not
            compared (two objects are equal if their contents are).
    """

    category: str
    box_xywh: tuple[float, float, float, float]
    points: tuple[tuple[int, int], ...] = ()
    labels: tuple[int, ...] = ()
    source_id: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if len(self.points) != len(self.labels):
            raise ValueError(f"{len(self.points)} points but {len(self.labels)} labels")


@dataclass(frozen=True)
class ImageRecord:
    """One image: ``file_name`` (relative to the image folder, ``/``-separated), its size in
    pixels, and its objects in file order. ``source_id`` says where it was read."""

    file_name: str
    width: int
    height: int
    objects: tuple[BoxObject, ...] = ()
    source_id: str = field(default="", compare=False)


@dataclass(frozen=True)
class Dataset:
    """What a reader returns: images in file order and the category names (in the order that
    gives their COCO ids 1, 2, ... when no reference file says otherwise)."""

    images: tuple[ImageRecord, ...]
    categories: tuple[str, ...]
    source: str = field(default="<memory>", compare=False)

    @property
    def num_objects(self) -> int:
        return sum(len(img.objects) for img in self.images)

    @property
    def num_points(self) -> int:
        return sum(len(obj.points) for img in self.images for obj in img.objects)

    def boxes_only(self) -> Dataset:
        """The same boxes without their points."""
        images = tuple(
            replace(img, objects=tuple(replace(o, points=(), labels=()) for o in img.objects))
            for img in self.images
        )
        return replace(self, images=images)
