"""What a P_N simulation returns (:mod:`point_sup_labels.simulate`): the points of each version,
:class:`PointSamples`, and the run's counts, :class:`SimulationStats`, whose ``str`` is the summary
printed for people.

Points are integer pixel indices ``[x, y]`` (column, row; :mod:`point_sup_labels.sampling`),
labels 1 (object) or 0 (background), in the order of the dataset's annotations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .time_model import AnnotationTime, annotation_time, format_duration

__all__ = ["PointSamples", "SimulationStats"]


@dataclass
class PointSamples:
    """Simulated points of one version of a dataset, aligned with its annotation list.

    ``coords[i]`` ((N, 2) ``[x, y]``) and ``labels[i]`` ((N,) 0/1) are meaningful where
    ``has_points[i]``; ``flipped`` are flat indices into ``labels.ravel()`` changed by noise.
    ``supervision`` (A,) int8 (:data:`~point_sup_labels.mixed_supervision.SUPERVISION_KINDS`,
    None: all ``"points"``): the objects whose points are meant to be written; the others' points
    are simulated too, and left out of the output by
    :func:`~point_sup_labels.mixed_supervision.apply_supervision`.
    """

    coords: np.ndarray  # (A, N, 2) int64
    labels: np.ndarray  # (A, N) uint8
    has_points: np.ndarray  # (A,) bool
    flipped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    supervision: np.ndarray | None = None

    def point_lists(self, i: int) -> tuple[list[list[int]], list[int]]:
        """Annotation ``i``'s points and labels as Python lists (empty lists where it has none)."""
        if not self.has_points[i]:
            return [], []
        return self.coords[i].tolist(), self.labels[i].tolist()


@dataclass
class SimulationStats:
    """The counts of a simulation run; ``str(stats)`` is a short summary in words.

    Lists hold one entry per version, in the order of the versions asked for. Label counts are
    those of the points written (``"points"`` objects with points), after label noise.
    """

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
    num_images: int = 0
    points_per_object: int = 0  # N
    num_object_labels: list[int] = field(default_factory=list)  # per version: labels 1
    num_background_labels: list[int] = field(default_factory=list)  # per version: labels 0

    @property
    def annotation_time(self) -> AnnotationTime:
        """What the written points cost to label, by the paper's time model (§3.1), vs polygons."""
        return annotation_time(self.num_with_points, self.points_per_object)

    def __str__(self) -> str:
        n = self.points_per_object
        zero = f", {self.num_zero_area:,} zero-area boxes without" if self.num_zero_area else ""
        lines = [
            f"P{n}: {self.num_images:,} images, {self.num_annotations:,} objects, "
            f"{self.num_with_points:,} with points{zero}"
        ]
        if self.num_mask_kept or self.num_box_only:
            lines.append(
                f"supervision: points on {self.num_point_objects:,} objects, mask on "
                f"{self.num_mask_kept:,}, box only on {self.num_box_only:,}"
            )
        counts = list(zip(self.num_object_labels, self.num_background_labels, self.num_flipped, strict=True))
        for k, (obj, bg, flipped) in enumerate(counts):
            which = "points" if len(counts) == 1 else f"points (version {k + 1} of {len(counts)})"
            noise = f"; {flipped:,} flipped by label noise" if flipped else ""
            lines.append(f"{which}: {obj + bg:,} ({obj:,} object, {bg:,} background{noise})")
        if self.num_with_points:
            t = self.annotation_time
            points, polygons = (
                format_duration(t.point_annotation_seconds),
                format_duration(t.polygon_mask_seconds),
            )
            lines.append(
                f"annotation time of these objects (paper's model): {points} as P{n} vs {polygons} as "
                f"polygon masks ({t.speedup:.1f}x faster)"
            )
        return "\n".join(lines)
