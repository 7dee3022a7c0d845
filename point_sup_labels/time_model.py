"""The annotation-time model of the paper (§3.1, §3.3.3): what a P_N dataset costs to label.

A box takes 7 s [41], each object/background point 0.9 s, a polygon mask 79.2 s [33] per object,
so P10 is 16 s per object, about 5x faster than polygons. The simulator's summary, the annotation
tool's report and the budget tool all use these numbers from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "SECONDS_PER_BOX",
    "SECONDS_PER_POINT",
    "SECONDS_PER_POLYGON_MASK",
    "AnnotationTime",
    "annotation_time",
    "format_duration",
]

SECONDS_PER_BOX = 7.0
SECONDS_PER_POINT = 0.9
SECONDS_PER_POLYGON_MASK = 79.2


@dataclass(frozen=True)
class AnnotationTime:
    """Annotation time of a dataset under the paper's model (seconds)."""

    num_instances: int
    num_points: int
    box_seconds: float
    points_seconds: float
    polygon_mask_seconds: float

    @property
    def point_annotation_seconds(self) -> float:
        return self.box_seconds + self.points_seconds

    @property
    def speedup(self) -> float:
        return self.polygon_mask_seconds / self.point_annotation_seconds if self.num_instances else math.nan

    def summary(self) -> str:
        def hours(s: float) -> str:
            return f"{s / 3600:,.1f} h"

        n = self.num_instances
        per = SECONDS_PER_BOX + self.num_points * SECONDS_PER_POINT
        return (
            f"annotation time for {n:,} objects (paper's model: {SECONDS_PER_BOX:g} s per box + "
            f"{SECONDS_PER_POINT:g} s per point, {SECONDS_PER_POLYGON_MASK:g} s per polygon mask): "
            f"P{self.num_points} {hours(self.point_annotation_seconds)} ({per:g} s/object) vs "
            f"polygon masks {hours(self.polygon_mask_seconds)}: {self.speedup:.1f}x faster"
        )


def annotation_time(num_instances: int, num_points: int) -> AnnotationTime:
    """Time to annotate ``num_instances`` objects with a box and ``num_points`` points, vs polygons."""
    return AnnotationTime(
        num_instances=num_instances,
        num_points=num_points,
        box_seconds=num_instances * SECONDS_PER_BOX,
        points_seconds=num_instances * num_points * SECONDS_PER_POINT,
        polygon_mask_seconds=num_instances * SECONDS_PER_POLYGON_MASK,
    )


def format_duration(seconds: float) -> str:
    """A duration for people: minutes below an hour (``"33.6 min"``), else hours (``"1,234.5 h"``)."""
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:,.1f} h"
