"""The training file ``OUTPUT`` (e.g. ``points.json``), built from the answers so far.

Format: the P_N simulator's. The input COCO JSON with, on every finished annotation,
``point_coords`` (``[x, y]`` integer pixel indices, column and row, sampled exactly as
:func:`point_sup_labels.simulate.simulate_point_annotations` samples them for the same seed,
version 0; see :mod:`point_sup_labels.sampling`) and ``point_labels`` (1 object, 0 background),
plus ``point_seconds``: the seconds the annotator took for each answer (from 0 to
``MAX_SECONDS_PER_ANSWER``, an hour). It only ever describes finished work:

* ``images`` holds the *complete* images (every object answered or flagged); an image with
  objects still to do is left out, with its finished objects, so that training never treats an
  unannotated object as background. ``annotations`` holds the answered objects of those images
  (``segmentation``, if the input had any, is dropped as the simulator drops it).
* Objects flagged as having a wrong box are not in ``annotations`` (training on a wrong box is
  worse than not training on it) but in the top-level list ``point_sup_flagged``
  (:data:`FLAGGED_KEY`), each with ``"point_sup_flag": "bad_box"`` (:data:`FLAG_FIELD`), so they
  can be fixed.
* ``point_sup_annotation`` (:data:`META_KEY`, top level) records N, the seed, the shard (``"K/M"``,
  1-based) and the progress.

Detectron2's and point_sup's loaders ignore the extra keys. The file is written atomically; a
session rewrites it whenever the set of complete images changes. :mod:`.merge` joins several.
"""

from __future__ import annotations

import os
from typing import Any

from ..coco_format import CocoInstances, dumps_json
from ..file_io import atomic_write_bytes
from .answers import Answers
from .tasks import SAMPLING_VERSION
from .view import progress

__all__ = ["FLAGGED_KEY", "FLAG_FIELD", "META_KEY", "build_output", "write_output"]

META_KEY = "point_sup_annotation"
FLAGGED_KEY = "point_sup_flagged"
FLAG_FIELD = "point_sup_flag"  # on each object of FLAGGED_KEY: the flag reason
TOOL = "point_sup_labels.annotation"


def build_output(
    instances: CocoInstances, answers: Answers, *, num_points: int, seed: int, shard: tuple[int, int]
) -> dict[str, Any]:
    """The training file's content (see the module docstring)."""
    complete = answers.complete_images()
    images = [img for img in instances.data["images"] if img["id"] in complete]
    annotations, flagged = [], []
    for ann in instances.annotations:
        if ann["image_id"] not in complete or ann["id"] not in answers.by_ann:
            continue
        out = {k: v for k, v in ann.items() if k not in ("segmentation", "point_coords", "point_labels")}
        st = answers.objects[ann["id"]]
        if st.flag is not None:
            flagged.append({**out, FLAG_FIELD: st.flag})
            continue
        task = answers.by_ann[ann["id"]]
        out["point_coords"] = [list(p) for p in task.points]
        out["point_labels"] = list(st.labels)
        out["point_seconds"] = list(st.seconds)
        annotations.append(out)
    data = {k: v for k, v in instances.data.items() if k not in (META_KEY, FLAGGED_KEY)}
    data["images"] = images
    data["annotations"] = annotations
    data[FLAGGED_KEY] = flagged
    counts = progress(answers)
    data[META_KEY] = {
        "tool": TOOL,
        "num_points": num_points,
        "seed": seed,
        "version": SAMPLING_VERSION,
        "shard": f"{shard[0] + 1}/{shard[1]}",
        "input": instances.source,
        "images_total": counts["images_total"],
        "images_complete": counts["images_complete"],
        "objects_total": counts["objects_total"],
        "objects_done": counts["objects_done"],
        "objects_flagged": counts["objects_flagged"],
        "complete": counts["images_complete"] == counts["images_total"],
    }
    return data


def write_output(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write a training file (or a merged one) atomically, in the one serialization of P_N files."""
    atomic_write_bytes(path, dumps_json(data))
