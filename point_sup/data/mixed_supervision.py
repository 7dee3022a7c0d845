"""Per-object supervision in one dataset (``MODEL.MIXED_SUP``): the kinds and how an annotation gets one.

A mixed dataset is one COCO JSON whose annotations carry, each, a mask (``segmentation``), P_N points
(``point_coords`` / ``point_labels``, any N >= 1, N may differ), both, or neither (box only). With
``MODEL.MIXED_SUP.ENABLED`` every object trains from its own kind (:class:`Supervision`):

``MASK``
    the mask head's loss from masks (Mask R-CNN's ``mask_rcnn_loss``, PointRend's and Implicit
    PointRend's mask recipes, CondInst's dice);
``POINTS``
    the one point loss at its labelled points (point_sup.modeling.common.point_loss), point-based
    augmentation (``INPUT.SAMPLE_POINTS``) applied to these objects only;
``BOX``
    no mask loss: the object supervises detection only (and BoxInst's box losses in a CondInst
    config with ``MODEL.BOXINST.ENABLED``).

An object with both a mask and points is ``MODEL.MIXED_SUP.BOTH`` (``"mask"`` by default: masks
win). An empty ``point_labels`` counts as no points (the simulator gives degenerate boxes none).
The dataset mapper stores the kind of every instance as ``gt_supervision`` (R,) int64; how the heads
combine the per-kind losses is point_sup.modeling.common.mixed_loss.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from enum import IntEnum

from point_sup_labels.point_fields import POINT_FIELDS

__all__ = ["Supervision", "annotation_supervision", "count_supervision"]


class Supervision(IntEnum):
    """The supervision of one object (``gt_supervision`` values)."""

    BOX = 0
    POINTS = 1
    MASK = 2


def _has_mask(anno: Mapping) -> bool:
    segm = anno.get("segmentation")
    if segm is None:
        return False
    # COCO polygons are a list of polygons (empty = no mask); RLE is a dict; arrays are bit masks.
    return len(segm) > 0 if isinstance(segm, list | tuple) else True


def annotation_supervision(anno: Mapping, both: str = "mask") -> Supervision:
    """The kind of one (non-crowd) annotation.

    Args:
        anno: a dataset-dict annotation.
        both: ``MODEL.MIXED_SUP.BOTH``, the kind of an object with both (``"mask"`` or ``"points"``).

    Returns:
        ``MASK`` if it has a non-empty ``segmentation`` (and no points, or ``both == "mask"``),
        ``POINTS`` if it has at least one labelled point, ``BOX`` otherwise. A half-present pair of
        point fields is not decided here: the loader already rejects it, naming the annotation.
    """
    has_mask = _has_mask(anno)
    has_points = all(key in anno for key in POINT_FIELDS) and len(anno["point_labels"]) > 0
    if has_mask and (not has_points or both == "mask"):
        return Supervision.MASK
    if has_points:
        return Supervision.POINTS
    return Supervision.BOX


def count_supervision(records: Iterable[Mapping], both: str = "mask") -> dict[str, int]:
    """How many non-crowd objects of the records have each kind: ``{"mask": n, "points": n, "box": n,
    "mask and points": n}`` (the last counts objects with both, whichever kind ``both`` gives them)."""
    counts: Counter[str] = Counter({"mask": 0, "points": 0, "box": 0, "mask and points": 0})
    for record in records:
        for anno in record.get("annotations", ()):
            if anno.get("iscrowd", 0):
                continue
            kind = annotation_supervision(anno, both)
            counts[kind.name.lower()] += 1
            if _has_mask(anno) and all(key in anno for key in POINT_FIELDS) and len(anno["point_labels"]):
                counts["mask and points"] += 1
    return dict(counts)
