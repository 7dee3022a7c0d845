"""The annotator's actions as recorded: answer, flag and undo events, and the rules their values obey.

An event is a JSON object (one journal line, see :mod:`.journal`):

``{"op": "answer", "ann_id", "index", "point", "label", "seconds", "bbox", "time"}``
    The label of point ``index`` (in ``[0, N)``) of annotation ``ann_id``: ``1`` object, ``0``
    background. ``point`` is the point asked, ``[x, y]`` integer pixel indices (column, row; see
    :mod:`point_sup_labels.sampling`); ``seconds`` the time the annotator took, a number in
    ``[0, MAX_SECONDS_PER_ANSWER]``, rounded to 4 decimals.
``{"op": "flag", "ann_id", "reason", "bbox", "time"}``
    The object's box is wrong (``reason`` one of :data:`FLAG_REASONS`); its answers are set aside.
``{"op": "undo", "time"}``
    Takes back the latest answer or flag not taken back yet (see :func:`effective_history`).

``bbox`` is the object's COCO box ``[x, y, width, height]`` when the event was made (so that a box
edited since is noticed); ``time`` is the Unix time of the event. Numbers are JSON numbers as
:func:`point_sup_labels.json_values.is_number` defines them, and an integer is one of those that
is an ``int`` (:func:`is_integer`): ``true``/``false`` are never 1/0.

The same rules check the arguments of a live answer (:func:`check_answer`, :func:`check_flag`) and
every line replayed from a journal (:func:`event_problem`); only the wording of the errors differs.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from ..json_values import is_finite_number, is_integer
from .tasks import Task

__all__ = [
    "FLAG_BAD_BOX",
    "FLAG_REASONS",
    "MAX_SECONDS_PER_ANSWER",
    "answer_event",
    "check_answer",
    "check_flag",
    "effective_history",
    "event_problem",
    "flag_event",
    "undo_event",
]

FLAG_BAD_BOX = "bad_box"
FLAG_REASONS = (FLAG_BAD_BOX,)
# The longest time one answer may record, in seconds. The page does not count time with its tab
# hidden and caps what it sends here; anything longer is an annotator who walked away, not a
# measurement, and would only distort the report's means.
MAX_SECONDS_PER_ANSWER = 3600.0


def _is_label(v: Any) -> bool:
    return is_integer(v) and v in (0, 1)


def _is_index(v: Any, num_points: int) -> bool:
    return is_integer(v) and 0 <= v < num_points


def _is_seconds(v: Any) -> bool:
    return is_finite_number(v) and 0 <= v <= MAX_SECONDS_PER_ANSWER


def check_answer(ann_id: Any, index: Any, label: Any, seconds: Any, num_points: int) -> None:
    """``ValueError`` unless these are the values of an answer (see the module docstring)."""
    if not is_integer(ann_id):
        raise ValueError(f"ann_id must be an integer, got {ann_id!r}")
    if not _is_index(index, num_points):
        raise ValueError(f"index must be an integer in [0, {num_points}), got {index!r}")
    if not _is_label(label):
        raise ValueError(f"label must be 0 or 1, got {label!r}")
    if not is_finite_number(seconds):
        raise ValueError(f"seconds must be a finite number, got {seconds!r}")
    if not _is_seconds(seconds):
        raise ValueError(f"seconds must be in [0, {MAX_SECONDS_PER_ANSWER:g}], got {seconds!r}")


def check_flag(ann_id: Any, reason: Any) -> None:
    """``ValueError`` unless these are the values of a flag."""
    if reason not in FLAG_REASONS:
        raise ValueError(f"flag reason must be one of {FLAG_REASONS}, got {reason!r}")
    if not is_integer(ann_id):
        raise ValueError(f"ann_id must be an integer, got {ann_id!r}")


def answer_event(task: Task, index: int, label: int, seconds: float) -> dict[str, Any]:
    """The event recording ``label`` for point ``index`` of ``task`` (values checked already)."""
    return {
        "op": "answer",
        "ann_id": task.ann_id,
        "index": index,
        "point": list(task.points[index]),
        "label": label,
        "seconds": round(float(seconds), 4),
        "bbox": list(task.bbox),
        "time": time.time(),
    }


def flag_event(task: Task, reason: str) -> dict[str, Any]:
    """The event flagging the box of ``task``."""
    return {
        "op": "flag",
        "ann_id": task.ann_id,
        "reason": reason,
        "bbox": list(task.bbox),
        "time": time.time(),
    }


def undo_event() -> dict[str, Any]:
    """The event taking back the latest answer or flag."""
    return {"op": "undo", "time": time.time()}


def _as_json(v: Any, limit: int = 80) -> str:
    # Values are quoted as the file has them (true, null, "x"), cut to a readable length.
    text = orjson.dumps(v).decode()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def event_problem(ev: Any, num_points: int) -> str | None:
    """What makes ``ev`` (a parsed journal line) not an event of this tool, or None if it is one.

    The message names the field and quotes its value as JSON (``true``, ``null``, ``"x"``).
    """
    if not isinstance(ev, dict):
        return f"expected a JSON object, got {_as_json(ev)}"
    op = ev.get("op")
    if op not in ("answer", "flag", "undo"):
        return f'\'op\' must be "answer", "flag" or "undo", got {_as_json(op)}'
    checks: list[tuple[str, bool, str]] = [("time", is_finite_number(ev.get("time")), "a finite number")]
    if op != "undo":
        bbox = ev.get("bbox")
        checks += [
            ("ann_id", is_integer(ev.get("ann_id")) and abs(ev["ann_id"]) < 2**63, "a 64-bit integer"),
            (
                "bbox",
                isinstance(bbox, list) and len(bbox) == 4 and all(map(is_finite_number, bbox)),
                "[x, y, width, height] (4 finite numbers)",
            ),
        ]
    if op == "flag":
        checks.append(("reason", ev.get("reason") in FLAG_REASONS, f"one of {list(FLAG_REASONS)}"))
    if op == "answer":
        point = ev.get("point")
        checks += [
            ("index", _is_index(ev.get("index"), num_points), f"an integer in [0, {num_points})"),
            (
                "point",
                isinstance(point, list)
                and len(point) == 2
                and all(is_integer(v) and 0 <= v < 2**63 for v in point),
                "[x, y] (2 non-negative integers)",
            ),
            ("label", _is_label(ev.get("label")), "0 or 1"),
            ("seconds", _is_seconds(ev.get("seconds")), f"a number in [0, {MAX_SECONDS_PER_ANSWER:g}]"),
        ]
    for key, ok, expected in checks:
        if not ok:
            shown = _as_json(ev[key]) if key in ev else "missing"
            return f"'{key}' of this {op} must be {expected}, got {shown}"
    return None


def effective_history(events: list[tuple[int, dict[str, Any]]]) -> list[tuple[int, dict[str, Any]]]:
    """The answers and flags of ``events`` (line number, event) that no later undo took back."""
    effective: list[tuple[int, dict[str, Any]]] = []
    for n, ev in events:
        if ev["op"] == "undo":
            if effective:
                effective.pop()
        else:
            effective.append((n, ev))
    return effective
