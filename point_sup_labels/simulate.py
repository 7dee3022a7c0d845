"""The P_N simulator (paper §3.1, §3.3): one pipeline from a dataset's masks to the points of each
version, pixel-exactly and fast.

A P_N annotation of an object is its box plus N points sampled uniformly at random inside the box
(:mod:`point_sup_labels.sampling`), each labelled object (1) or background (0) by the ground-truth
mask *exactly as pycocotools rasterizes it*, without rasterizing whole masks
(:mod:`point_sup_labels.polygon_labels`, :mod:`point_sup_labels.rle_labels`); optionally a fraction
of the labels is flipped (:mod:`point_sup_labels.label_noise`).

The pipeline, for annotations taken in file order in chunks of a few thousand:

1. :func:`point_sup_labels.chunks.read_chunk` (main process): the chunk's boxes, image sizes and
   masks as compact arrays.
2. :func:`label_chunk` (any process): :class:`LabelledPoints`, the points, labels (and boundary
   distances, for boundary noise) of each version.
3. :meth:`LabelledPoints.concatenate`: the chunks' results joined in file order.
4. :func:`finish`: the label noise (it needs every label of the dataset) and the run's
   :class:`~point_sup_labels.simulation_results.SimulationStats`.

Two drivers run it and differ only in where a chunk's bytes come from and where the points go:
:func:`simulate_point_annotations` reads the chunks of a dataset loaded in this process and has a
pool label them; :class:`point_sup_labels.sharded.ShardedSimulation` has each worker parse one
shard of the file and run steps 1-3 on it (:func:`label_annotations`), then does step 4 here.
Results are identical for any number of workers or shards. Mixed supervision (which objects keep a
mask or only a box) is :mod:`point_sup_labels.mixed_supervision`'s rule; every object is labelled
whatever its kind, and noise is drawn among the points that are written. How each step is made
fast, and why its results do not depend on the workers: ``docs/labels_implementation.md``.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import contains
from typing import TYPE_CHECKING

import numpy as np

from . import chunks, mixed_supervision, simulation_results
from ._deprecation import moved_names
from .coco_format import CocoFormatError, CocoInstances
from .label_noise import NO_DISTANCE, NoiseMode, add_label_noise, boundary_sq_distances
from .polygon_labels import polygon_point_labels_batch, polygon_region
from .process import gc_paused, make_worker_pool
from .rle_labels import decode_rle_counts, rle_labels_at, rle_region
from .sampling import annotation_keys, sample_points, sampling_ranges

if TYPE_CHECKING:  # the pool module is imported only where a pool is made
    import multiprocessing.pool

__all__ = [
    "LabelledPoints",
    "SimulationOptions",
    "VersionPoints",
    "check_simulation_options",
    "finish",
    "label_annotations",
    "label_chunk",
    "simulate_point_annotations",
]

_LOOKAHEAD = 8  # chunks in flight to the workers

# Names that lived here before the mixed-supervision draws, step 1 and the results got modules of
# their own: still importable from here, with a DeprecationWarning, until the next release.
__getattr__ = moved_names(
    __name__,
    {
        **dict.fromkeys(mixed_supervision.__all__, mixed_supervision.__name__),
        **dict.fromkeys(("AnnotationChunk", "image_size_index", "read_chunk"), chunks.__name__),
        **dict.fromkeys(simulation_results.__all__, simulation_results.__name__),
    },
)


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
    keep their mask instead of points, or keep only their box
    (:mod:`point_sup_labels.mixed_supervision`'s rule); at 0, every object gets points.
    """

    num_points: int = 10
    seed: int = 0
    versions: tuple[int, ...] = (0,)
    noise_rate: float = 0.0
    noise_mode: NoiseMode = "random"
    keep_masks_fraction: float = 0.0
    box_only_fraction: float = 0.0
    fraction_of: mixed_supervision.FractionOf = "objects"

    def __post_init__(self) -> None:
        object.__setattr__(self, "versions", tuple(self.versions))
        check_simulation_options(self.num_points, self.noise_rate, self.noise_mode)
        mixed_supervision.check_supervision_fractions(
            self.keep_masks_fraction, self.box_only_fraction, self.fraction_of
        )

    @property
    def mixed(self) -> bool:
        """Whether some objects may get a mask or only a box instead of points."""
        return self.keep_masks_fraction > 0 or self.box_only_fraction > 0

    @property
    def boundary(self) -> bool:
        """Whether boundary distances are needed (boundary noise)."""
        return self.noise_rate > 0 and self.noise_mode == "boundary"


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
    (:data:`~point_sup_labels.mixed_supervision.SUPERVISION_KINDS`, all ``"points"`` when None is
    given) says whose points are written.
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
        return self.has_points & (self.supervision == mixed_supervision.SUPERVISION_POINTS)


_COUNTS = ("num_clipped", "num_polygon", "num_crowd", "num_skipped_parts")


def label_chunk(c: chunks.AnnotationChunk, options: SimulationOptions) -> LabelledPoints:
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

    poly = np.flatnonzero((kind == chunks.POLYGON) & has)
    q_counts = np.where((kind == chunks.POLYGON) & has, N, 0)
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
                if kind[j] == chunks.RLE:
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
        num_polygon=int((kind == chunks.POLYGON).sum()),
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
    sizes = chunks.image_size_index(instances)
    parts = []
    for s in range(0, len(instances.annotations), chunk_size):
        chunk = chunks.read_chunk(instances, s, s + chunk_size, drop_segmentation, sizes, options)
        parts.append(label_chunk(chunk, options))
        if progress:
            progress(len(chunk.ids))
    return LabelledPoints.concatenate(parts, options)


def finish(
    points: LabelledPoints, options: SimulationOptions, num_images: int = 0
) -> simulation_results.SimulationStats:
    """Step 4: the label noise of each version (in place; ``flipped`` set), and the run's counts
    (``num_images``: the dataset's, for them).

    Noise is drawn among the points that are written (``"points"`` objects with points), so that
    ``noise_rate`` is the fraction of flipped labels in the output.
    """
    has = points.has_points
    written = points.written
    kinds = np.bincount(points.supervision, minlength=len(mixed_supervision.SUPERVISION_KINDS))
    stats = simulation_results.SimulationStats(
        num_annotations=len(has),
        num_with_points=int(written.sum()),
        num_clipped=points.num_clipped,
        num_zero_area=int((~has).sum()),
        num_polygon=points.num_polygon,
        num_rle=len(has) - points.num_polygon,
        num_crowd=points.num_crowd,
        num_skipped_parts=points.num_skipped_parts,
        num_mask_kept=int(kinds[mixed_supervision.SUPERVISION_MASK]),
        num_box_only=int(kinds[mixed_supervision.SUPERVISION_BOX]),
        num_point_objects=int(kinds[mixed_supervision.SUPERVISION_POINTS]),
        num_images=num_images,
        points_per_object=options.num_points,
    )
    for version, v in zip(options.versions, points.versions, strict=True):
        dist = v.boundary_dist if options.boundary else None
        v.flipped = add_label_noise(
            v.labels, written, dist, options.noise_rate, options.noise_mode, options.seed, version
        )
        stats.num_flipped.append(len(v.flipped))
        num_object = int(np.count_nonzero(v.labels[written]))
        stats.num_object_labels.append(num_object)
        stats.num_background_labels.append(stats.num_with_points * options.num_points - num_object)
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
    fraction_of: mixed_supervision.FractionOf = "objects",
    workers: int = 1,
    pool: multiprocessing.pool.Pool | None = None,
    chunk_size: int = 2048,
    drop_segmentation: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[simulation_results.PointSamples], simulation_results.SimulationStats]:
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
            or whole images (:mod:`point_sup_labels.mixed_supervision`'s rule): selected objects
            are ``"mask"`` (segmentation, no points) or ``"box"`` (neither) in the returned
            samples' ``supervision``; :func:`~point_sup_labels.mixed_supervision.apply_supervision`
            shapes the annotations accordingly.
        workers: processes (fork); results are identical for any value. The main process reads
            the annotations into arrays while the workers label earlier chunks.
        pool: a ``multiprocessing`` pool to use instead of forking ``workers`` processes here.
            Create it (:func:`point_sup_labels.process.make_worker_pool`) *before* loading the
            dataset: workers forked later share its pages, which then get copied.
        chunk_size: annotations per task (bounds the temporary memory of each worker).
        drop_segmentation: remove each annotation's ``segmentation`` from ``instances`` once
            read (what the output wants anyway; frees the masks early), except those of the
            ``"mask"`` objects. Otherwise unmodified (then the ``"points"`` objects keep their
            mask in the output too; :func:`~point_sup_labels.mixed_supervision.apply_supervision`
            still removes it from ``"box"`` ones).
        progress: called with the number of annotations finished, chunk by chunk.

    Returns:
        One :class:`~point_sup_labels.simulation_results.PointSamples` per version, and the run's
        :class:`~point_sup_labels.simulation_results.SimulationStats`.

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
    stats = finish(points, options, num_images=len(instances.images))
    supervision = points.supervision if options.mixed else None
    samples = [
        simulation_results.PointSamples(v.coords, v.labels, points.has_points, v.flipped, supervision)
        for v in points.versions
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
    sizes = chunks.image_size_index(instances)
    parts: list[LabelledPoints] = []
    pending: collections.deque = collections.deque()

    def collect() -> None:
        parts.append(pending.popleft().get())
        if progress:
            progress(len(parts[-1].has_points))

    try:
        for s in range(0, len(instances.annotations), chunk_size):
            chunk = chunks.read_chunk(instances, s, s + chunk_size, drop_segmentation, sizes, options)
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
