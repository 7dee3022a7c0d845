"""Choosing what to ask: the objects of one annotator's shard, in asking order, with their points.

The points of an object are those the P_N simulator samples for it
(:func:`point_sup_labels.simulate.simulate_point_annotations`, same seed, version
:data:`SAMPLING_VERSION`): ``[x, y]`` integer pixel indices (column, row) inside the object's box,
drawn from the per-annotation random stream of :mod:`point_sup_labels.sampling`. So a perfect
annotator's file equals the simulated one, and a restart asks exactly the same points.

A shard ``(k, m)`` (``--shard K/M`` on the command line, ``k = K - 1``) is the images at positions
``k, k + m, k + 2m, ...`` of the input's ``images`` list; its objects are asked image by image in
file order, each image's objects in the order of ``annotations``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..coco_format import CocoInstances
from ..sampling import annotation_keys, sample_points, sampling_ranges

__all__ = ["SAMPLING_VERSION", "Task", "plan_tasks", "shard_image_ids"]

# The simulator's version index whose sampling a labelled file reproduces (its default, single version).
SAMPLING_VERSION = 0


@dataclass(frozen=True)
class Task:
    """One object to annotate: its box and the points to ask, in asking order."""

    position: int  # in the task order
    ann_id: int
    image_id: int
    bbox: tuple[float, ...]
    category_id: int
    points: tuple[tuple[int, int], ...]  # empty for a box of zero area in the image (nothing to ask)


def shard_image_ids(instances: CocoInstances, shard: tuple[int, int]) -> list[int]:
    """The ids of the images of ``shard = (k, m)``, in file order (see the module docstring)."""
    k, m = shard
    if not (m >= 1 and 0 <= k < m):
        raise ValueError(f"shard must be (k, m) with 0 <= k < m, got {shard}")
    return [img["id"] for pos, img in enumerate(instances.data["images"]) if pos % m == k]


def plan_tasks(
    instances: CocoInstances, num_points: int, seed: int, shard: tuple[int, int] = (0, 1)
) -> list[Task]:
    """The objects of ``instances`` to ask, image by image (file order), with their sampled points.

    Points come from the simulator's own functions with its per-annotation random stream
    ``(seed, version 0, annotation id)``, so they equal ``point_coords`` of a simulated file.
    ``shard=(k, m)`` keeps the images at positions ``k, k + m, k + 2m, ...`` of ``images``.
    """
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}")
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in instances.annotations:
        by_image.setdefault(ann["image_id"], []).append(ann)
    anns = [ann for iid in shard_image_ids(instances, shard) for ann in by_image.get(iid, [])]
    if not anns:
        return []
    heights = np.array([instances.images[a["image_id"]]["height"] for a in anns])
    widths = np.array([instances.images[a["image_id"]]["width"] for a in anns])
    bboxes = np.array([a["bbox"] for a in anns], dtype=np.float64)
    ranges, _, empty = sampling_ranges(bboxes, heights, widths)
    keys = annotation_keys(seed, SAMPLING_VERSION, [a["id"] for a in anns])
    pts = sample_points(keys, ranges, num_points).tolist()
    return [
        Task(
            position=i,
            ann_id=a["id"],
            image_id=a["image_id"],
            bbox=tuple(a["bbox"]),
            category_id=a["category_id"],
            points=() if empty[i] else tuple((p[0], p[1]) for p in pts[i]),
        )
        for i, a in enumerate(anns)
    ]
