"""Merging annotators' outputs (e.g. ``--shard 1/2`` and ``--shard 2/2``) into one training file.

Inputs and result are training files of :mod:`.output` (COCO JSON with ``point_coords`` as
``[x, y]`` integer pixel indices, ``point_labels``, ``point_seconds``, the flagged objects under
``point_sup_flagged`` and the session record under ``point_sup_annotation``). The merged file's
record says ``"shard": "merged"`` and lists ``merged_from``; per-shard totals are dropped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..coco_format import CocoFormatError, read_json
from .output import FLAG_FIELD, FLAGGED_KEY, META_KEY, write_output

__all__ = ["MergeStats", "merge_outputs"]

logger = logging.getLogger(__name__)


@dataclass
class MergeStats:
    """What :func:`merge_outputs` joined."""

    num_files: int
    num_images: int
    num_annotations: int
    num_flagged: int
    overlapping: int = 0  # objects present in more than one file (the first file's answers kept)
    overlap_points: int = 0
    overlap_agreeing: int = 0  # points of overlapping objects labelled the same in both

    def summary(self) -> str:
        text = (
            f"merged {self.num_files} files: {self.num_images} images, {self.num_annotations} annotated "
            f"objects, {self.num_flagged} flagged"
        )
        if self.overlapping:
            text += (
                f"; {self.overlapping} objects annotated in more than one file (first kept), "
                f"{self.overlap_agreeing}/{self.overlap_points} of their points labelled alike"
            )
        return text


def merge_outputs(paths: Sequence[str | os.PathLike], output: str | os.PathLike) -> MergeStats:
    """Join the outputs of several annotators (e.g. shards) into one training file.

    All inputs must come from this tool with the same N and seed and have the same categories.
    Images and objects are taken in the order of first appearance; an object present in several
    files (annotated or flagged) is taken from the first, and the agreement of overlapping point
    labels is reported. The result is written atomically.

    Raises:
        CocoFormatError: an input is not an output of this tool, or inputs are inconsistent.
    """
    if not paths:
        raise ValueError("nothing to merge")
    if Path(output).resolve() in {Path(p).resolve() for p in paths}:
        raise ValueError(f"the merged output {output} must not be one of the inputs")
    merged: dict[str, Any] | None = None
    images: dict[int, dict[str, Any]] = {}
    taken: dict[int, dict[str, Any]] = {}  # ann id -> annotation (annotated or flagged), first wins
    stats = MergeStats(num_files=len(paths), num_images=0, num_annotations=0, num_flagged=0)
    for path in paths:
        source = os.fspath(path)
        data = read_json(path)
        meta = data.get(META_KEY) if isinstance(data, dict) else None
        if not isinstance(meta, dict):
            raise CocoFormatError(f"not an output of tools/annotate.py (no '{META_KEY}')", source=source)
        if merged is None:
            merged = {k: v for k, v in data.items() if k not in ("images", "annotations", FLAGGED_KEY)}
        else:
            ref = merged[META_KEY]
            for key in ("num_points", "seed", "version"):
                if meta.get(key) != ref.get(key):
                    raise CocoFormatError(
                        f"{key} {meta.get(key)!r} differs from {ref.get(key)!r} of {paths[0]}", source=source
                    )
            if data.get("categories") != merged.get("categories"):
                raise CocoFormatError(f"categories differ from those of {paths[0]}", source=source)
        for img in data.get("images", []):
            prev = images.setdefault(img["id"], img)
            if prev != img:
                raise CocoFormatError(
                    f"image differs from the one in an earlier file: {img}", source=source, image_id=img["id"]
                )
        for ann in [*data.get("annotations", []), *data.get(FLAGGED_KEY, [])]:
            first = taken.get(ann["id"])
            if first is None:
                taken[ann["id"]] = ann
                continue
            stats.overlapping += 1
            if (
                "point_labels" in first
                and "point_labels" in ann
                and first["point_coords"] == ann["point_coords"]
            ):
                stats.overlap_points += len(ann["point_labels"])
                stats.overlap_agreeing += sum(
                    a == b for a, b in zip(first["point_labels"], ann["point_labels"], strict=True)
                )
            logger.warning(
                "%s: annotation %s is also in an earlier file; the earlier one is kept", source, ann["id"]
            )
    assert merged is not None
    merged["images"] = list(images.values())
    merged["annotations"] = [a for a in taken.values() if FLAG_FIELD not in a]
    merged[FLAGGED_KEY] = [a for a in taken.values() if FLAG_FIELD in a]
    meta = dict(merged[META_KEY])
    meta.update(
        shard="merged",
        merged_from=[os.fspath(p) for p in paths],
        images_complete=len(images),
        objects_done=len(taken),
        objects_flagged=len(merged[FLAGGED_KEY]),
    )
    for key in ("images_total", "objects_total", "complete"):
        meta.pop(key, None)  # per-shard totals do not add up to anything meaningful
    merged[META_KEY] = meta
    stats.num_images = len(images)
    stats.num_annotations = len(merged["annotations"])
    stats.num_flagged = len(merged[FLAGGED_KEY])
    write_output(output, merged)
    return stats
