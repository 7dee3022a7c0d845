"""Step 1 of the P_N simulator (:mod:`point_sup_labels.simulate`): a run of annotations read into
compact arrays, an :class:`AnnotationChunk`.

Runs in the main process, on a dataset loaded there; the labelling (step 2) then works on the
chunk's arrays alone, in any process. Frames: boxes are COCO ``[x, y, w, h]`` and polygon vertices
``[x, y]``, both in continuous image coordinates; RLE counts are column-major run lengths
(:mod:`point_sup_labels.coco_format`). How the reading is made fast: ``docs/labels_implementation.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain, compress, repeat
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import numpy as np

from .coco_format import CocoFormatError, CocoInstances
from .json_values import is_finite_number, is_number
from .mixed_supervision import SUPERVISION_MASK, select_supervision

if TYPE_CHECKING:  # the options type lives with the pipeline, which imports this module
    from .simulate import SimulationOptions

__all__ = ["POLYGON", "RLE", "AnnotationChunk", "image_size_index", "read_chunk"]

POLYGON, RLE = 0, 1  # AnnotationChunk.kind of each annotation


@dataclass
class AnnotationChunk:
    """Annotations ``start : start + a`` of a dataset as compact arrays (step 1's output).

    ``kind`` is :data:`POLYGON` or :data:`RLE` per annotation. Polygon parts of at least 3 vertices are
    concatenated: ``coords`` (V, 2) float64 ``[x, y]``, ``part_sizes`` (P,) vertices per part,
    ``part_owners`` (P,) position in the chunk of each part's annotation. ``rles`` maps a position to
    ``(counts, annotation id, image id)`` (counts: an int64 array, or the compressed string).
    ``error``: (position, error) of the first annotation with bad polygon coordinates, raised by
    :func:`point_sup_labels.simulate.label_chunk` after any RLE error before it. ``supervision``:
    (a,) int8 kind of supervision of each annotation
    (:data:`point_sup_labels.mixed_supervision.SUPERVISION_KINDS`; all ``"points"`` by default).
    """

    start: int
    ids: np.ndarray  # (a,) uint64
    heights: np.ndarray  # (a,) int64
    widths: np.ndarray  # (a,) int64
    bboxes: np.ndarray  # (a, 4) float64 [x, y, w, h]
    kind: np.ndarray  # (a,) int8
    coords: np.ndarray
    part_sizes: np.ndarray
    part_owners: np.ndarray
    rles: dict[int, tuple[Any, Any, Any]]
    num_skipped_parts: int  # polygon parts under 3 vertices
    num_crowd: int
    source: str
    error: tuple[int, CocoFormatError] | None = None
    supervision: np.ndarray | None = None  # None: all "points"

    def __post_init__(self) -> None:
        if self.supervision is None:
            self.supervision = np.zeros(len(self.ids), dtype=np.int8)


def image_size_index(instances: CocoInstances) -> tuple[dict[Any, int], np.ndarray]:
    """Image id -> row of the (images, 2) int64 array of ``[height, width]``."""
    index = {iid: k for k, iid in enumerate(instances.images)}
    hw = np.array([(img["height"], img["width"]) for img in instances.images.values()], dtype=np.int64)
    return index, hw.reshape(-1, 2)


def read_chunk(
    instances: CocoInstances,
    start: int,
    stop: int,
    drop_segmentation: bool,
    image_sizes: tuple[dict[Any, int], np.ndarray] | None = None,
    options: SimulationOptions | None = None,
) -> AnnotationChunk:
    """Step 1: everything the labelling needs about annotations ``start:stop``, as compact arrays.

    Runs in the main process: workers then never touch the loaded dataset (reading Python floats
    in a forked worker would copy every page holding them). With ``drop_segmentation`` each
    segmentation is freed once read, except those of the objects that keep their mask
    (``options``' fractions; every annotation gets points when ``options`` is None).

    Bad polygon coordinates are not raised here but recorded as ``error`` = (position in the
    chunk, error): the worker raises it after the RLE checks of the annotations before it, so that
    the error reported is the first in file order.
    """
    chunk = instances.annotations[start:stop]
    a = len(chunk)
    index, sizes = image_sizes if image_sizes is not None else image_size_index(instances)
    hw = sizes[np.fromiter(map(index.__getitem__, map(itemgetter("image_id"), chunk)), np.int64, a)]
    boxes = np.fromiter(chain.from_iterable(map(itemgetter("bbox"), chunk)), np.float64, 4 * a)
    crowd = list(map(dict.get, chunk, repeat("iscrowd"), repeat(0))).count(1)
    supervision = None
    if options is not None and options.mixed:
        supervision = select_supervision(
            chunk, options.seed, options.keep_masks_fraction, options.box_only_fraction, options.fraction_of
        )
    if drop_segmentation and supervision is not None and (supervision == SUPERVISION_MASK).any():
        masks = (supervision == SUPERVISION_MASK).tolist()
        segms = [
            ann["segmentation"] if m else ann.pop("segmentation") for ann, m in zip(chunk, masks, strict=True)
        ]
    elif drop_segmentation:
        segms = list(map(dict.pop, chunk, repeat("segmentation")))
    else:
        segms = list(map(itemgetter("segmentation"), chunk))
    is_polygon = np.fromiter(map(isinstance, segms, repeat(list)), bool, a)
    kind = np.where(is_polygon, POLYGON, RLE).astype(np.int8)
    poly = np.flatnonzero(is_polygon)
    polygons = list(compress(segms, is_polygon.tolist())) if len(poly) < a else segms
    parts = list(chain.from_iterable(polygons))
    part_len = np.fromiter(map(len, parts), np.int64, len(parts))
    part_ann = np.repeat(poly, np.fromiter(map(len, polygons), np.int64, len(polygons)))
    error = None
    # Coordinates must be JSON numbers: numpy would read "3.5" or true as 3.5 or 1.0, and a part of
    # nested [x, y] pairs would look like a part under 3 vertices. One pass at C speed.
    if not set(map(type, chain.from_iterable(parts))) <= {int, float}:  # else: a subclass, or bad
        bad = next((k for k, part in enumerate(parts) if not all(map(is_number, part))), None)
        error = None if bad is None else int(part_ann[bad])
    keep = part_len >= 6  # at least 3 vertices
    kept = list(compress(parts, keep.tolist())) if not keep.all() else parts
    part_len, owners = part_len[keep], part_ann[keep]
    try:
        coords = np.fromiter(chain.from_iterable(kept), np.float64, int(part_len.sum()))
        finite = np.isfinite(coords)
        if not finite.all():  # inf/NaN can come from a Python dict (or the standard JSON parser)
            bad = np.searchsorted(np.cumsum(part_len), np.flatnonzero(~finite)[0], side="right")
            error = int(owners[bad]) if error is None else min(error, int(owners[bad]))
    except (TypeError, ValueError):  # a non-number (found above): the first bad part may be earlier
        coords = np.zeros(0)
        first = next(
            int(j) for j, part in zip(owners, kept, strict=True) if not all(map(is_finite_number, part))
        )
        error = first if error is None else min(error, first)
    rles = {}
    for j in np.flatnonzero(kind == RLE).tolist():
        if error is not None and j > error:
            break  # never looked at
        counts = segms[j]["counts"]
        rles[j] = (
            np.asarray(counts, dtype=np.int64) if type(counts) is list else counts,
            chunk[j].get("id"),
            chunk[j].get("image_id"),
        )
    return AnnotationChunk(
        start=start,
        ids=np.fromiter(map(itemgetter("id"), chunk), np.uint64, a),
        heights=hw[:, 0],
        widths=hw[:, 1],
        bboxes=boxes.reshape(-1, 4),
        kind=kind,
        coords=coords.reshape(-1, 2),
        part_sizes=part_len // 2,
        part_owners=owners,
        rles=rles,
        num_skipped_parts=int(len(keep) - keep.sum()),
        num_crowd=crowd,
        source=instances.source,
        error=None if error is None else (error, _bad_coordinates(instances, chunk[error], segms[error])),
        supervision=supervision,
    )


def _bad_coordinates(instances: CocoInstances, ann: dict[str, Any], segm: list[Any]) -> CocoFormatError:
    """The error of an annotation whose polygon coordinates ``segm`` are not all finite JSON numbers."""
    detail = "polygon coordinates must be finite numbers"
    for part in segm:
        culprit = next((v for v in part if not is_finite_number(v)), None)
        if isinstance(culprit, list):
            detail += f" in flat lists [x0, y0, x1, y1, ...], got a part of {len(part)} [x, y] pairs"
            break
        if culprit is not None:
            detail += f", got {type(culprit).__name__} {culprit!r}"
            break
    return CocoFormatError(
        detail, source=instances.source, image_id=ann.get("image_id"), annotation_id=ann.get("id")
    )
