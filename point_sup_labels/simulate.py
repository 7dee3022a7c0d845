"""The P_N simulator (paper §3.1, §3.3): one pipeline from a dataset's masks to the points of each
version, pixel-exactly and fast.

A P_N annotation of an object is its box plus N points sampled uniformly at random inside the box
(:mod:`point_sup_labels.sampling`), each labelled object (1) or background (0) by the ground-truth
mask *exactly as pycocotools rasterizes it*, without rasterizing whole masks
(:mod:`point_sup_labels.polygon_labels`, :mod:`point_sup_labels.rle_labels`); optionally a fraction
of the labels is flipped (:mod:`point_sup_labels.label_noise`).

The pipeline, for annotations taken in file order in chunks of a few thousand:

1. :func:`read_chunk` (main process): an :class:`AnnotationChunk`, the chunk's boxes, image sizes
   and masks as compact arrays. Workers never touch the loaded dataset (a forked worker reading
   Python objects would copy every page holding them).
2. :func:`label_chunk` (any process): :class:`LabelledPoints`, the points, labels (and boundary
   distances, for boundary noise) of each version.
3. :meth:`LabelledPoints.concatenate`: the chunks' results joined in file order.
4. :func:`finish`: the label noise (it needs every label of the dataset) and the counts of the
   closing summary.

Two drivers run it and differ only in where a chunk's bytes come from and where the points go:
:func:`simulate_point_annotations` reads the chunks of a dataset loaded in this process and has a
pool label them; :class:`point_sup_labels.sharded.ShardedSimulation` has each worker parse one
shard of the file and run steps 1-3 on it (:func:`label_annotations`), then does step 4 here.
Results are identical for any number of workers or shards.

Mixed supervision (:class:`SimulationOptions` ``keep_masks_fraction`` F, ``box_only_fraction`` G,
``fraction_of``): each object gets one kind of supervision, ``"points"`` (its P_N points, no mask:
the default), ``"mask"`` (its ``segmentation`` as read, no point fields) or ``"box"`` (neither).
The rule (:func:`supervision_kinds`): a draw ``u`` in [0, 1) is a hash of (seed, id), where id is
the annotation id, or with ``fraction_of="images"`` the image id (every object of an image gets
the image's kind); the object is ``"mask"`` if ``u < F``, ``"box"`` if ``F <= u < F + G``, else
``"points"``. Crowd objects (``iscrowd`` 1) are never selected: they get points as without the
fractions. Each object is decided on its own, so the counts are binomial (close to F and G of the
objects or images, not exact), and the selection depends on nothing but the seed and the ids (not
on workers, shards, chunks or file order). The draw has its own random stream: the points of every
object are those of a run without the fractions. The simulation still labels every object (the
arrays stay aligned with the file); :func:`apply_supervision` removes from each annotation the
fields its kind does not have, and label noise (:func:`finish`) is drawn among the points that are
written, i.e. those of the ``"points"`` objects.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain, compress, repeat
from operator import contains, itemgetter
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .coco_format import CocoFormatError, CocoInstances
from .json_values import is_finite_number, is_number
from .label_noise import NO_DISTANCE, NoiseMode, add_label_noise, boundary_sq_distances
from .polygon_labels import polygon_point_labels_batch, polygon_region
from .process import gc_paused, make_worker_pool
from .rle_labels import decode_rle_counts, rle_labels_at, rle_region
from .sampling import annotation_keys, sample_points, sampling_ranges

if TYPE_CHECKING:  # the pool module is imported only where a pool is made
    import multiprocessing.pool

__all__ = [
    "SUPERVISION_BOX",
    "SUPERVISION_KINDS",
    "SUPERVISION_MASK",
    "SUPERVISION_POINTS",
    "AnnotationChunk",
    "FractionOf",
    "LabelledPoints",
    "PointSamples",
    "SimulationOptions",
    "SimulationStats",
    "VersionPoints",
    "apply_supervision",
    "check_simulation_options",
    "check_supervision_fractions",
    "finish",
    "image_size_index",
    "label_annotations",
    "label_chunk",
    "read_chunk",
    "select_supervision",
    "simulate_point_annotations",
    "supervision_draws",
    "supervision_kind",
    "supervision_kinds",
]

_POLYGON, _RLE = 0, 1
_LOOKAHEAD = 8  # chunks in flight to the workers

FractionOf = Literal["objects", "images"]
# Codes of the kinds of supervision (int8 arrays), and their names: SUPERVISION_KINDS[code].
SUPERVISION_POINTS, SUPERVISION_MASK, SUPERVISION_BOX = 0, 1, 2
SUPERVISION_KINDS = ("points", "mask", "box")
# The draws' stream is annotation_keys(_SUPERVISION_STREAM, seed, id): the tag in the seed slot
# keeps it apart from every point stream annotation_keys(seed, version, id) ("SUPERVIS").
_SUPERVISION_STREAM = int.from_bytes(b"SUPERVIS", "big")
_FRACTION_SUM_SLACK = 1e-9  # 0.7 + 0.3 may round above 1 in binary floating point


def check_supervision_fractions(
    keep_masks_fraction: float, box_only_fraction: float, fraction_of: str = "objects"
) -> None:
    """ValueError unless both fractions are numbers in [0, 1] with a sum of at most 1 and
    ``fraction_of`` is ``"objects"`` or ``"images"``."""
    for name, value in (
        ("keep_masks_fraction", keep_masks_fraction),
        ("box_only_fraction", box_only_fraction),
    ):
        if not is_number(value) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if keep_masks_fraction + box_only_fraction > 1.0 + _FRACTION_SUM_SLACK:
        raise ValueError(
            f"keep_masks_fraction + box_only_fraction must be at most 1, got "
            f"{keep_masks_fraction} + {box_only_fraction}"
        )
    if fraction_of not in ("objects", "images"):
        raise ValueError(f"fraction_of must be 'objects' or 'images', got {fraction_of!r}")


def _uint64_ids(object_ids: np.ndarray | Sequence[int]) -> np.ndarray:
    """Integer ids as uint64, modulo 2**64 (image ids may be negative or beyond int64)."""
    if isinstance(object_ids, np.ndarray) and object_ids.dtype == np.uint64:
        return object_ids
    try:
        return np.asarray(object_ids, dtype=np.int64).view(np.uint64)  # two's complement = mod 2**64
    except OverflowError:
        return np.fromiter((int(i) % 2**64 for i in object_ids), np.uint64, len(object_ids))


def supervision_draws(seed: int, object_ids: np.ndarray | Sequence[int]) -> np.ndarray:
    """The draw ``u`` in [0, 1) (float64, a multiple of 2**-53) of each id, for ``seed``.

    ``u`` is a hash of (seed, id modulo 2**64) only, from a stream of its own: independent of the
    point sampler's streams (:func:`point_sup_labels.sampling.annotation_keys` of (seed, version,
    id)), so selecting objects never changes the points of the others.
    """
    keys = annotation_keys(_SUPERVISION_STREAM, seed, _uint64_ids(object_ids))
    return (keys >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def supervision_kinds(
    seed: int,
    object_ids: np.ndarray | Sequence[int],
    keep_masks_fraction: float,
    box_only_fraction: float,
) -> np.ndarray:
    """(len(object_ids),) int8 codes (:data:`SUPERVISION_KINDS`) of the rule of the module doc:
    ``SUPERVISION_MASK`` where ``u < F``, ``SUPERVISION_BOX`` where ``F <= u < F + G``, else
    ``SUPERVISION_POINTS``, with ``u`` from :func:`supervision_draws`. Crowd objects are the
    caller's to exclude (see :func:`select_supervision`)."""
    check_supervision_fractions(keep_masks_fraction, box_only_fraction)
    u = supervision_draws(seed, object_ids)
    kinds = np.full(len(u), SUPERVISION_POINTS, dtype=np.int8)
    kinds[u < keep_masks_fraction + box_only_fraction] = SUPERVISION_BOX
    kinds[u < keep_masks_fraction] = SUPERVISION_MASK
    return kinds


def supervision_kind(seed: int, object_id: int, keep_masks_fraction: float, box_only_fraction: float) -> str:
    """``"mask"``, ``"box"`` or ``"points"``: the kind of supervision of one object (or, with
    ``fraction_of="images"``, of every object of one image) by the rule of the module doc.

    ``object_id`` is the annotation id, or the image id when whole images are selected; crowd
    objects always get ``"points"`` (not decided here). The same answer as the simulator's for the
    same seed and fractions (``--seed``, ``--keep-masks-fraction``, ``--box-only-fraction``).
    """
    code = supervision_kinds(seed, [object_id], keep_masks_fraction, box_only_fraction)[0]
    return SUPERVISION_KINDS[code]


def select_supervision(
    annotations: Sequence[dict[str, Any]],
    seed: int,
    keep_masks_fraction: float,
    box_only_fraction: float,
    fraction_of: FractionOf = "objects",
) -> np.ndarray:
    """(len(annotations),) int8 codes (:data:`SUPERVISION_KINDS`) of COCO annotations: by
    :func:`supervision_kinds` of their ``id`` (or ``image_id`` with ``fraction_of="images"``),
    ``SUPERVISION_POINTS`` for crowd objects (``iscrowd`` 1)."""
    check_supervision_fractions(keep_masks_fraction, box_only_fraction, fraction_of)
    n = len(annotations)
    if keep_masks_fraction == 0 and box_only_fraction == 0:
        return np.zeros(n, dtype=np.int8)
    key = "id" if fraction_of == "objects" else "image_id"
    kinds = supervision_kinds(
        seed, list(map(itemgetter(key), annotations)), keep_masks_fraction, box_only_fraction
    )
    crowd = np.fromiter(map(dict.get, annotations, repeat("iscrowd"), repeat(0)), np.int64, n) == 1
    kinds[crowd] = SUPERVISION_POINTS
    return kinds


def apply_supervision(annotations: list[dict[str, Any]], supervision: np.ndarray | None) -> None:
    """Remove, in place, the fields that each annotation's kind of supervision does not have:
    ``point_coords``/``point_labels`` from ``"mask"`` and ``"box"`` objects, ``segmentation``
    from ``"box"`` objects. ``supervision``: (len(annotations),) int8 codes, or None (all
    ``"points"``: nothing to do). Run it after the point fields are set (for every annotation, by
    :func:`point_sup_labels.point_file.set_point_fields`) and before serializing."""
    if supervision is None:
        return
    for j in np.flatnonzero(supervision != SUPERVISION_POINTS).tolist():
        ann = annotations[j]
        ann.pop("point_coords", None)
        ann.pop("point_labels", None)
        if supervision[j] == SUPERVISION_BOX:
            ann.pop("segmentation", None)


def check_simulation_options(num_points: int, noise_rate: float, noise_mode: str) -> bool:
    """ValueError for impossible options; True when boundary distances are needed (boundary noise)."""
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}")
    if not 0.0 <= noise_rate <= 1.0:
        raise ValueError(f"noise_rate must be in [0, 1], got {noise_rate}")
    if noise_mode not in ("random", "boundary"):
        raise ValueError(f"noise_mode must be 'random' or 'boundary', got {noise_mode!r}")
    return noise_rate > 0 and noise_mode == "boundary"


@dataclass(frozen=True)
class SimulationOptions:
    """What to simulate (see :func:`simulate_point_annotations`); checked when made.

    ``keep_masks_fraction``, ``box_only_fraction`` and ``fraction_of`` select the objects that
    keep their mask instead of points, or keep only their box (the rule of the module doc); at 0,
    every object gets points.
    """

    num_points: int = 10
    seed: int = 0
    versions: tuple[int, ...] = (0,)
    noise_rate: float = 0.0
    noise_mode: NoiseMode = "random"
    keep_masks_fraction: float = 0.0
    box_only_fraction: float = 0.0
    fraction_of: FractionOf = "objects"

    def __post_init__(self) -> None:
        object.__setattr__(self, "versions", tuple(self.versions))
        check_simulation_options(self.num_points, self.noise_rate, self.noise_mode)
        check_supervision_fractions(self.keep_masks_fraction, self.box_only_fraction, self.fraction_of)

    @property
    def mixed(self) -> bool:
        """Whether some objects may get a mask or only a box instead of points."""
        return self.keep_masks_fraction > 0 or self.box_only_fraction > 0

    @property
    def boundary(self) -> bool:
        """Whether boundary distances are needed (boundary noise)."""
        return self.noise_rate > 0 and self.noise_mode == "boundary"


@dataclass
class AnnotationChunk:
    """Annotations ``start : start + a`` of a dataset as compact arrays (step 1's output).

    ``kind`` is 0 (polygon) or 1 (RLE) per annotation. Polygon parts of at least 3 vertices are
    concatenated: ``coords`` (V, 2) float64 ``[x, y]``, ``part_sizes`` (P,) vertices per part,
    ``part_owners`` (P,) position in the chunk of each part's annotation. ``rles`` maps a position to
    ``(counts, annotation id, image id)`` (counts: an int64 array, or the compressed string).
    ``error``: (position, error) of the first annotation with bad polygon coordinates, raised by
    :func:`label_chunk` after any RLE error before it. ``supervision``: (a,) int8 kind of
    supervision of each annotation (:data:`SUPERVISION_KINDS`; all ``"points"`` by default).
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


@dataclass
class VersionPoints:
    """One version's points of a run of ``a`` annotations: ``coords`` (a, N, 2) int64 ``[x, y]``,
    ``labels`` (a, N) uint8, ``boundary_dist`` (a, N) int64 squared distances to the boundary
    ((0, N) unless boundary noise is asked for); ``flipped`` is set by :func:`finish`. ``coords``
    is None where the points stay in a shard's worker (:meth:`LabelledPoints.without_coords`)."""

    coords: np.ndarray | None
    labels: np.ndarray
    boundary_dist: np.ndarray
    flipped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass
class LabelledPoints:
    """The labelled points of a run of annotations (a chunk, a shard or a dataset), per version.

    Every annotation is labelled, whatever its kind of supervision; ``supervision`` (a,) int8
    (:data:`SUPERVISION_KINDS`, all ``"points"`` when None is given) says whose points are written.
    """

    has_points: np.ndarray  # (a,) bool: False for zero-area boxes
    versions: list[VersionPoints]
    num_clipped: int = 0
    num_polygon: int = 0
    num_crowd: int = 0
    num_skipped_parts: int = 0
    supervision: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.supervision is None:
            self.supervision = np.zeros(len(self.has_points), dtype=np.int8)

    @staticmethod
    def concatenate(parts: Sequence[LabelledPoints], options: SimulationOptions) -> LabelledPoints:
        """Step 3: ``parts`` (consecutive runs, in file order) joined into one run."""
        N = options.num_points
        if not parts:
            empty = VersionPoints(
                coords=np.zeros((0, N, 2), dtype=np.int64),
                labels=np.zeros((0, N), dtype=np.uint8),
                boundary_dist=np.zeros((0, N), dtype=np.int64),
            )
            return LabelledPoints(np.zeros(0, dtype=bool), [empty] * len(options.versions))
        if len(parts) == 1:
            return parts[0]

        def join(arrays: list[np.ndarray | None]) -> np.ndarray | None:
            return None if arrays[0] is None else np.concatenate(arrays)

        versions = [
            VersionPoints(
                coords=join([p.versions[k].coords for p in parts]),
                labels=np.concatenate([p.versions[k].labels for p in parts]),
                boundary_dist=np.concatenate([p.versions[k].boundary_dist for p in parts]),
            )
            for k in range(len(options.versions))
        ]
        return LabelledPoints(
            has_points=np.concatenate([p.has_points for p in parts]),
            versions=versions,
            supervision=np.concatenate([p.supervision for p in parts]),
            **{key: sum(getattr(p, key) for p in parts) for key in _COUNTS},
        )

    def without_coords(self) -> LabelledPoints:
        """The same without the points' coordinates (what a shard's worker sends back)."""
        versions = [VersionPoints(None, v.labels, v.boundary_dist) for v in self.versions]
        return LabelledPoints(
            self.has_points,
            versions,
            supervision=self.supervision,
            **{key: getattr(self, key) for key in _COUNTS},
        )

    @property
    def written(self) -> np.ndarray:
        """(a,) bool: the annotations whose points are written (``"points"`` objects with points)."""
        return self.has_points & (self.supervision == SUPERVISION_POINTS)


_COUNTS = ("num_clipped", "num_polygon", "num_crowd", "num_skipped_parts")


@dataclass
class PointSamples:
    """Simulated points of one version of a dataset, aligned with its annotation list.

    ``coords[i]`` ((N, 2) ``[x, y]``) and ``labels[i]`` ((N,) 0/1) are meaningful where
    ``has_points[i]``; ``flipped`` are flat indices into ``labels.ravel()`` changed by noise.
    ``supervision`` (A,) int8 (:data:`SUPERVISION_KINDS`, None: all ``"points"``): the objects whose
    points are meant to be written; the others' points are simulated too, and left out of the
    output by :func:`apply_supervision`.
    """

    coords: np.ndarray  # (A, N, 2) int64
    labels: np.ndarray  # (A, N) uint8
    has_points: np.ndarray  # (A,) bool
    flipped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    supervision: np.ndarray | None = None

    def point_lists(self, i: int) -> tuple[list[list[int]], list[int]]:
        if not self.has_points[i]:
            return [], []
        return self.coords[i].tolist(), self.labels[i].tolist()


@dataclass
class SimulationStats:
    """Counts for the closing summary of a simulation run."""

    num_annotations: int = 0
    num_with_points: int = 0
    num_clipped: int = 0
    num_zero_area: int = 0
    num_polygon: int = 0
    num_rle: int = 0
    num_crowd: int = 0
    num_skipped_parts: int = 0  # polygon parts with fewer than 3 vertices
    num_flipped: list[int] = field(default_factory=list)  # per version
    # Kinds of supervision (SimulationOptions' fractions): "points" objects include crowd ones
    # and zero-area boxes (num_with_points counts only the "points" objects with points).
    num_mask_kept: int = 0
    num_box_only: int = 0
    num_point_objects: int = 0


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
    in a forked worker would copy every page holding them). Each field is read for the whole chunk
    with C-level iteration (``map``/``itemgetter``: after the first pass the chunk's objects are
    in cache), and all polygon coordinates of the chunk are unboxed by a single ``np.fromiter``
    over the chained parts. With ``drop_segmentation`` each segmentation is freed once read,
    except those of the objects that keep their mask (``options``' fractions; every annotation
    gets points when ``options`` is None).

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
    kind = np.where(is_polygon, _POLYGON, _RLE).astype(np.int8)
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
    for j in np.flatnonzero(kind == _RLE).tolist():
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


def label_chunk(c: AnnotationChunk, options: SimulationOptions) -> LabelledPoints:
    """Step 2 (worker side): points (§3.1), their exact labels and, for boundary noise, their
    boundary distances, for each version of ``options``.

    Raises:
        CocoFormatError: malformed RLE data, or the chunk's bad polygon coordinates (after the
            RLE of every annotation before them: the first problem in file order).
    """
    N, boundary = options.num_points, options.boundary
    heights, widths, kind = c.heights, c.widths, c.kind
    ranges, clipped, empty = sampling_ranges(c.bboxes, heights, widths)
    has = ~empty
    rle_ends: dict[int, np.ndarray] = {}
    for j, (counts, ann_id, image_id) in c.rles.items():  # in file order
        try:
            runs = counts if isinstance(counts, np.ndarray) else decode_rle_counts(counts)
        except ValueError as e:
            raise CocoFormatError(
                f"malformed compressed RLE: {e}",
                source=c.source,
                image_id=image_id,
                annotation_id=ann_id,
            ) from None
        ends = np.cumsum(runs)
        total = int(ends[-1]) if len(ends) else 0
        if total != heights[j] * widths[j]:
            raise CocoFormatError(
                f"RLE counts sum to {total}, expected height * width = {heights[j] * widths[j]}",
                source=c.source,
                image_id=image_id,
                annotation_id=ann_id,
            )
        rle_ends[j] = ends
    if c.error is not None:  # bad polygon coordinates, after every RLE before them
        raise c.error[1]

    poly = np.flatnonzero((kind == _POLYGON) & has)
    q_counts = np.where((kind == _POLYGON) & has, N, 0)
    q_starts = np.cumsum(q_counts) - q_counts
    part_start = np.cumsum(c.part_sizes) - c.part_sizes
    out = []
    for version in options.versions:
        pts = sample_points(annotation_keys(options.seed, version, c.ids), ranges, N)  # (a, N, 2)
        labels = np.zeros(pts.shape[:2], dtype=np.uint8)
        if len(poly):
            flat = pts[poly].reshape(-1, 2)
            lab = polygon_point_labels_batch(
                c.coords, c.part_sizes, c.part_owners, heights, flat, q_starts, q_counts
            )
            labels[poly] = lab.reshape(-1, N)
        for j, ends in rle_ends.items():
            if has[j]:
                labels[j] = rle_labels_at(ends, int(heights[j]), pts[j])
        dist = np.zeros((0, N), dtype=np.int64)
        if boundary:
            dist = np.full(pts.shape[:2], NO_DISTANCE, dtype=np.int64)
            for j in np.flatnonzero(has):
                H, W = int(heights[j]), int(widths[j])
                c0, c1, r0, r1 = (int(v) for v in ranges[j])
                # The box's pixels plus a one-pixel ring: when the mask lies inside its box, the
                # nearest pixel of the other label is always within this region.
                cols, rows = (max(c0 - 1, 0), min(c1 + 1, W)), (max(r0 - 1, 0), min(r1 + 1, H))
                if kind[j] == _RLE:
                    region = rle_region(rle_ends[j], H, cols, rows)
                else:
                    mine = np.flatnonzero(c.part_owners == j)
                    sz = c.part_sizes
                    vidx = [np.arange(part_start[p], part_start[p] + sz[p]) for p in mine]
                    coords = c.coords[np.concatenate(vidx)] if vidx else np.zeros((0, 2))
                    region = polygon_region(coords, sz[mine], H, cols, rows)
                dist[j] = boundary_sq_distances(region, (cols[0], rows[0]), pts[j])
        out.append(VersionPoints(coords=pts, labels=labels, boundary_dist=dist))
    return LabelledPoints(
        has_points=has,
        versions=out,
        num_clipped=int(clipped.sum()),
        num_polygon=int((kind == _POLYGON).sum()),
        num_crowd=c.num_crowd,
        num_skipped_parts=c.num_skipped_parts,
        supervision=c.supervision,
    )


def label_annotations(
    instances: CocoInstances,
    options: SimulationOptions,
    *,
    chunk_size: int = 2048,
    drop_segmentation: bool = False,
    progress: Callable[[int], None] | None = None,
) -> LabelledPoints:
    """Steps 1-3 in this process, chunk by chunk: the labelled points of every annotation."""
    sizes = image_size_index(instances)
    parts = []
    for s in range(0, len(instances.annotations), chunk_size):
        chunk = read_chunk(instances, s, s + chunk_size, drop_segmentation, sizes, options)
        parts.append(label_chunk(chunk, options))
        if progress:
            progress(len(chunk.ids))
    return LabelledPoints.concatenate(parts, options)


def finish(points: LabelledPoints, options: SimulationOptions) -> SimulationStats:
    """Step 4: the label noise of each version (in place; ``flipped`` set), and the run's counts.

    Noise is drawn among the points that are written (``"points"`` objects with points), so that
    ``noise_rate`` is the fraction of flipped labels in the output.
    """
    has = points.has_points
    written = points.written
    kinds = np.bincount(points.supervision, minlength=len(SUPERVISION_KINDS))
    stats = SimulationStats(
        num_annotations=len(has),
        num_with_points=int(written.sum()),
        num_clipped=points.num_clipped,
        num_zero_area=int((~has).sum()),
        num_polygon=points.num_polygon,
        num_rle=len(has) - points.num_polygon,
        num_crowd=points.num_crowd,
        num_skipped_parts=points.num_skipped_parts,
        num_mask_kept=int(kinds[SUPERVISION_MASK]),
        num_box_only=int(kinds[SUPERVISION_BOX]),
        num_point_objects=int(kinds[SUPERVISION_POINTS]),
    )
    for version, v in zip(options.versions, points.versions, strict=True):
        dist = v.boundary_dist if options.boundary else None
        v.flipped = add_label_noise(
            v.labels, written, dist, options.noise_rate, options.noise_mode, options.seed, version
        )
        stats.num_flipped.append(len(v.flipped))
    return stats


def simulate_point_annotations(
    instances: CocoInstances,
    *,
    num_points: int = 10,
    seed: int = 0,
    versions: Sequence[int] = (0,),
    noise_rate: float = 0.0,
    noise_mode: NoiseMode = "random",
    keep_masks_fraction: float = 0.0,
    box_only_fraction: float = 0.0,
    fraction_of: FractionOf = "objects",
    workers: int = 1,
    pool: multiprocessing.pool.Pool | None = None,
    chunk_size: int = 2048,
    drop_segmentation: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[PointSamples], SimulationStats]:
    """Simulate P_N annotations for every annotation of a validated dataset.

    Args:
        instances: from :func:`point_sup_labels.coco_format.load_coco_instances`.
        num_points: N, points per object.
        seed, versions: version ``v`` of seed ``s`` is the same whichever other versions are
            requested (the paper's sensitivity study uses 5 versions).
        noise_rate: fraction R of all points whose label is flipped, per version: exactly
            ``floor(R * T + 0.5)`` of the T points of the dataset.
        noise_mode: ``random`` (uniformly chosen points) or ``boundary`` (the points closest to
            the object boundary: smallest distance from the pixel centre to the nearest pixel centre
            of the other label within the box plus a one-pixel ring; ties broken at random).
            Drawn among the points of the ``"points"`` objects only.
        keep_masks_fraction, box_only_fraction, fraction_of: F, G and whether they select objects
            or whole images (the rule of the module doc): selected objects are ``"mask"``
            (segmentation, no points) or ``"box"`` (neither) in the returned samples'
            ``supervision``; :func:`apply_supervision` shapes the annotations accordingly.
        workers: processes (fork); results are identical for any value. The main process reads
            the annotations into arrays while the workers label earlier chunks.
        pool: a ``multiprocessing`` pool to use instead of forking ``workers`` processes here.
            Create it (:func:`point_sup_labels.process.make_worker_pool`) *before* loading the
            dataset: workers forked after it share its pages, and every page the main process then
            touches (reading the annotations does) is copied, up to doubling the memory.
        chunk_size: annotations per task (bounds the temporary memory of each worker).
        drop_segmentation: remove each annotation's ``segmentation`` from ``instances`` once
            read (what the output wants anyway; frees the masks early), except those of the
            ``"mask"`` objects. Otherwise unmodified (then the ``"points"`` objects keep their
            mask in the output too; :func:`apply_supervision` still removes it from ``"box"`` ones).
        progress: called with the number of annotations finished, chunk by chunk.

    Returns:
        One :class:`PointSamples` per version, and counts for the closing summary.

    Raises:
        CocoFormatError: a missing segmentation, bad polygon coordinates or RLE data, naming the
            first such annotation in file order (the same for any number of workers).
    """
    options = SimulationOptions(
        num_points,
        seed,
        tuple(versions),
        noise_rate,
        noise_mode,
        keep_masks_fraction,
        box_only_fraction,
        fraction_of,
    )
    anns = instances.annotations
    A = len(anns)
    if not all(map(contains, anns, repeat("segmentation"))):  # checked before anything is dropped
        ann = next(ann for ann in anns if "segmentation" not in ann)
        raise CocoFormatError(
            "no 'segmentation' (a mask is needed to label points)",
            source=instances.source,
            image_id=ann.get("image_id"),
            annotation_id=ann.get("id"),
        )
    num_chunks = -(-A // chunk_size)
    with gc_paused(), contextlib.ExitStack() as stack:
        if pool is None and workers > 1 and num_chunks > 1:
            pool = stack.enter_context(make_worker_pool(min(workers, num_chunks)))
        if pool is None:
            points = label_annotations(
                instances,
                options,
                chunk_size=chunk_size,
                drop_segmentation=drop_segmentation,
                progress=progress,
            )
        else:
            points = _label_in_pool(instances, options, pool, chunk_size, drop_segmentation, progress)
    stats = finish(points, options)
    supervision = points.supervision if options.mixed else None
    samples = [
        PointSamples(v.coords, v.labels, points.has_points, v.flipped, supervision) for v in points.versions
    ]
    return samples, stats


def _label_in_pool(
    instances: CocoInstances,
    options: SimulationOptions,
    pool: multiprocessing.pool.Pool,
    chunk_size: int,
    drop_segmentation: bool,
    progress: Callable[[int], None] | None,
) -> LabelledPoints:
    """Steps 1-3 with step 2 in ``pool``: this process reads chunk k+1 while the workers label k."""
    sizes = image_size_index(instances)
    parts: list[LabelledPoints] = []
    pending: collections.deque = collections.deque()

    def collect() -> None:
        parts.append(pending.popleft().get())
        if progress:
            progress(len(parts[-1].has_points))

    try:
        for s in range(0, len(instances.annotations), chunk_size):
            chunk = read_chunk(instances, s, s + chunk_size, drop_segmentation, sizes, options)
            pending.append(pool.apply_async(label_chunk, (chunk, options)))
            if chunk.error is not None:
                break  # raised by that chunk's task, after any error of an earlier one
            while len(pending) > _LOOKAHEAD:  # bounds the chunks held in memory
                collect()
        # Collected in file order: the first error raised is the first in the file.
        while pending:
            collect()
    finally:
        for task in pending:  # after an error: no task of ours is left running
            task.wait()
    return LabelledPoints.concatenate(parts, options)
