"""The annotation report: measured speed against the paper's, and agreement with ground-truth masks.

Paper §3.1: classifying a point takes 0.9 s on average, so a P_N object costs 7 s (box, extreme
points) + 0.9 N s (16 s for P10), about 5x less than a 79.2 s COCO polygon; human point labels
agree with COCO ground-truth masks 90% of the time and with the more accurate LVIS masks 95%.
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..coco_format import CocoFormatError, load_coco_instances, read_json, segmentation_kind
from ..polygon_labels import polygon_labels
from ..rle_labels import rle_labels
from ..time_model import SECONDS_PER_BOX, SECONDS_PER_POINT, SECONDS_PER_POLYGON_MASK
from .output import FLAGGED_KEY

__all__ = ["Agreement", "AnnotationReport", "build_report"]

PAPER_AGREEMENT_COCO = 0.90
PAPER_AGREEMENT_LVIS = 0.95


@dataclass
class Agreement:
    """Human labels vs the mask's value at the same pixels."""

    num_objects: int = 0
    num_points: int = 0
    agreeing: int = 0
    # Confusion counts: human said object (1) / background (0), the mask says 1 / 0.
    human1_mask1: int = 0
    human1_mask0: int = 0
    human0_mask1: int = 0
    human0_mask0: int = 0
    skipped_objects: int = 0  # no mask, or the mask file's object has another image or box

    @property
    def rate(self) -> float:
        return self.agreeing / self.num_points if self.num_points else math.nan


@dataclass
class AnnotationReport:
    """Timing and quality numbers of a labelled file (see :func:`build_report`)."""

    source: str
    num_objects: int
    num_flagged: int
    num_points: int
    num_points_per_object: int
    seconds_per_point_median: float
    seconds_per_point_mean: float
    seconds_per_object_median: float  # point answers only; the box was drawn elsewhere
    seconds_per_object_mean: float
    agreement: Agreement | None = field(default=None)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.agreement is not None:
            d["agreement"]["rate"] = self.agreement.rate
        return d

    def summary(self) -> str:
        """Human-readable, with the paper's numbers beside the measured ones."""
        n = self.num_points_per_object
        paper_points = SECONDS_PER_POINT * n
        paper_object = SECONDS_PER_BOX + paper_points
        lines = [
            f"{self.source}: {self.num_objects} objects with {self.num_points} answered points "
            f"(P{n}), {self.num_flagged} flagged as bad boxes",
            f"seconds per point:  median {self.seconds_per_point_median:.2f}, mean "
            f"{self.seconds_per_point_mean:.2f}   (paper: {SECONDS_PER_POINT:g})",
            f"seconds per object, points only: median {self.seconds_per_object_median:.1f}, mean "
            f"{self.seconds_per_object_mean:.1f}   (paper: {paper_points:g} = {n} x {SECONDS_PER_POINT:g})",
        ]
        if not math.isnan(self.seconds_per_object_median):
            with_box = SECONDS_PER_BOX + self.seconds_per_object_median
            lines.append(
                f"with the paper's {SECONDS_PER_BOX:g} s per box: {with_box:.1f} s per object (median)   "
                f"(paper: {paper_object:g}); {SECONDS_PER_POLYGON_MASK / with_box:.1f}x faster than a "
                f"{SECONDS_PER_POLYGON_MASK:g} s polygon mask (paper: "
                f"{SECONDS_PER_POLYGON_MASK / paper_object:.1f}x)"
            )
        a = self.agreement
        if a is not None:
            if a.num_points:
                lines.append(
                    f"agreement with the ground-truth masks: {100 * a.rate:.1f}% of {a.num_points} points "
                    f"on {a.num_objects} objects   (paper: {100 * PAPER_AGREEMENT_COCO:.0f}% vs COCO "
                    f"polygons, {100 * PAPER_AGREEMENT_LVIS:.0f}% vs LVIS masks)"
                )
                lines.append(
                    f"  labelled object: {a.human1_mask1} on the mask, {a.human1_mask0} off it; labelled "
                    f"background: {a.human0_mask0} off the mask, {a.human0_mask1} on it"
                )
            else:
                lines.append("agreement with the ground-truth masks: no annotated object has a mask there")
            if a.skipped_objects:
                lines.append(
                    f"  {a.skipped_objects} objects skipped (no mask, or another image or box in the "
                    "mask file)"
                )
        return "\n".join(lines)


def _stats(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.median(values), statistics.fmean(values)


def build_report(
    points_file: str | os.PathLike, masks_file: str | os.PathLike | None = None
) -> AnnotationReport:
    """Speed (and, with ``masks_file``, label agreement) of a file written by the annotation tool.

    Only objects whose every point has a time (``point_seconds``) count for the timing.
    ``masks_file``: a COCO JSON with ``segmentation`` for the same annotation ids (polygons or
    RLE); its masks are read exactly as pycocotools rasterizes them. Objects whose mask file entry
    has another image or box, or no mask, are skipped and counted.
    """
    source = os.fspath(points_file)
    data = read_json(points_file)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise CocoFormatError("not a COCO JSON with an 'annotations' list", source=source)
    anns = [a for a in data["annotations"] if isinstance(a, dict) and a.get("point_labels")]
    per_point: list[float] = []
    per_object: list[float] = []
    sizes = []
    for a in anns:
        secs = a.get("point_seconds")
        sizes.append(len(a["point_labels"]))
        if isinstance(secs, list) and len(secs) == len(a["point_labels"]) and secs:
            per_point.extend(float(s) for s in secs)
            per_object.append(float(sum(secs)))
    pm, pmean = _stats(per_point)
    om, omean = _stats(per_object)
    report = AnnotationReport(
        source=source,
        num_objects=len(anns),
        num_flagged=len(data.get(FLAGGED_KEY, [])),
        num_points=sum(sizes),
        num_points_per_object=max(set(sizes), key=sizes.count) if sizes else 0,
        seconds_per_point_median=pm,
        seconds_per_point_mean=pmean,
        seconds_per_object_median=om,
        seconds_per_object_mean=omean,
    )
    if masks_file is not None:
        report.agreement = _agreement(anns, masks_file)
    return report


def _agreement(anns: list[dict[str, Any]], masks_file: str | os.PathLike) -> Agreement:
    gt = load_coco_instances(masks_file, require_segmentation=False, check_points=False)
    by_id = {a["id"]: a for a in gt.annotations}
    out = Agreement()
    for ann in anns:
        ref = by_id.get(ann.get("id"))
        if (
            ref is None
            or "segmentation" not in ref
            or ref["image_id"] != ann.get("image_id")
            or list(ref["bbox"]) != list(ann.get("bbox", []))
        ):
            out.skipped_objects += 1
            continue
        h, w = gt.image_size(ref)
        pts = np.asarray(ann["point_coords"], dtype=np.int64).reshape(-1, 2)
        segm = ref["segmentation"]
        if segmentation_kind(segm) == "polygon":
            mask = polygon_labels(segm, h, w, pts)
        else:
            mask = rle_labels(segm, pts)
        human = np.asarray(ann["point_labels"], dtype=np.uint8)
        out.num_objects += 1
        out.num_points += len(human)
        out.agreeing += int((human == mask).sum())
        out.human1_mask1 += int(((human == 1) & (mask == 1)).sum())
        out.human1_mask0 += int(((human == 1) & (mask == 0)).sum())
        out.human0_mask1 += int(((human == 0) & (mask == 1)).sum())
        out.human0_mask0 += int(((human == 0) & (mask == 0)).sum())
    return out
