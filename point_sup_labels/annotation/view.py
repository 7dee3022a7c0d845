"""The page's view model: what the browser page is sent (``GET /api/state`` and every change's reply).

A view is a JSON object::

    {"finished": false, "can_undo": true, "version": 7, "max_seconds": 3600.0,
     "progress": {...},                     # see progress()
     "task": {"ann_id", "image_id", "file_name", "width", "height", "bbox", "category_id",
              "category", "object_number", "num_points", "index", "point",
              "answered": [{"point": [x, y], "label": 0 or 1}, ...]},
     "next_image_id": 3}                    # the image after this one, for preloading; or null

``task`` is null (and ``next_image_id`` absent) once every object is finished. ``point`` is the
point asked now, point ``index`` of the object: ``[x, y]`` integer pixel indices (column, row,
see :mod:`point_sup_labels.sampling`; the page draws it at the pixel's centre, ``x + 0.5``).
``bbox`` is COCO's ``[x, y, width, height]``. ``version`` is sent back with every change so that
one made on an outdated view is refused (409); ``max_seconds`` caps the time the page sends.
The time estimate uses the paper's seconds per point (:mod:`point_sup_labels.time_model`) until
five answers have been timed, then their median.
"""

from __future__ import annotations

import statistics
from typing import Any

from ..coco_format import CocoInstances
from ..time_model import SECONDS_PER_POINT
from .answers import Answers
from .events import MAX_SECONDS_PER_ANSWER

__all__ = ["page_view", "progress"]

# Answers timed before their median replaces the paper's seconds per point in the estimate.
_MEASURED_AFTER = 5


def page_view(answers: Answers, instances: CocoInstances, *, version: int) -> dict[str, Any]:
    """The current object and point, and the progress (JSON-ready; see the module docstring)."""
    task = answers.current()
    view: dict[str, Any] = {"finished": task is None, "task": None, "progress": progress(answers)}
    view["can_undo"] = bool(answers.stack)
    view["version"] = version
    view["max_seconds"] = MAX_SECONDS_PER_ANSWER
    if task is not None:
        st = answers.objects[task.ann_id]
        img = instances.images[task.image_id]
        cat = instances.categories.get(task.category_id, {})
        k = len(st.labels)
        view["task"] = {
            "ann_id": task.ann_id,
            "image_id": task.image_id,
            "file_name": img.get("file_name"),
            "width": img["width"],
            "height": img["height"],
            "bbox": list(task.bbox),
            "category_id": task.category_id,
            "category": cat.get("name", str(task.category_id)),
            "object_number": task.position + 1,
            "num_points": len(task.points),
            "index": k,
            "point": list(task.points[k]),
            "answered": [
                {"point": list(p), "label": lab} for p, lab in zip(task.points, st.labels, strict=False)
            ],
        }
        later = answers.tasks[answers.cursor + 1 :]
        nxt = next((t for t in later if t.image_id != task.image_id), None)
        view["next_image_id"] = nxt.image_id if nxt else None
    return view


def progress(answers: Answers) -> dict[str, Any]:
    """Counts of objects, points and images done, and the estimated seconds left.

    Objects without points (a box of no area in the image) count apart; flagged objects' points
    count neither as done nor as to do.
    """
    with_points = [t for t in answers.tasks if t.points]
    objects = answers.objects
    flagged = sum(objects[t.ann_id].flag is not None for t in with_points)
    done = sum(answers.finished(t) for t in with_points)
    active = [t for t in with_points if objects[t.ann_id].flag is None]
    points_total = sum(len(t.points) for t in active)
    points_done = sum(len(objects[t.ann_id].labels) for t in active)
    seconds = [s for t in active for s in objects[t.ann_id].seconds]
    measured = len(seconds) >= _MEASURED_AFTER
    # Until a few answers exist, the paper's 0.9 s per point is the best estimate.
    per_point = statistics.median(seconds) if measured else SECONDS_PER_POINT
    return {
        "objects_total": len(with_points),
        "objects_done": done,
        "objects_flagged": flagged,
        "objects_without_points": len(answers.tasks) - len(with_points),
        "points_total": points_total,
        "points_done": points_done,
        "images_total": len(answers.image_ids),
        "images_complete": len(answers.complete_images()),
        "seconds_per_point": per_point,
        "seconds_per_point_measured": measured,
        "eta_seconds": (points_total - points_done) * per_point,
    }
