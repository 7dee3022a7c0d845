"""The answers so far: each object's labels, times and flag, the undo history, what is finished.

Pure state, no files and no locking (:class:`.session.AnnotationStore` adds both). The state is
built from the session's tasks (:mod:`.tasks`) and changed by the events of :mod:`.events`, live
(:meth:`Answers.record`, :meth:`Answers.take_back`) or replayed from a journal
(:meth:`Answers.replay`). Conventions:

* An object is *finished* when it is flagged or every one of its points is answered; an object
  whose box has no area in the image has no point and is finished from the start.
* An image is *complete* when every object of it is finished (an image without objects is
  complete); only complete images go into the training output (:mod:`.output`).
* The *cursor* is the first unfinished task: every task before it is finished. Answers and flags
  are only ever made for the task at the cursor, point by point (``index`` = the number of
  labels so far); an undo may move the cursor back.
* Point coordinates are ``[x, y]`` integer pixel indices (see :mod:`point_sup_labels.sampling`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .events import effective_history
from .tasks import Task

if TYPE_CHECKING:
    from .journal import TornLine

__all__ = ["Answers", "ObjectAnswers"]

logger = logging.getLogger(__name__)


@dataclass
class ObjectAnswers:
    """What one object has so far: a label (1 object, 0 background) and a time per answered point,
    and the flag reason if its box was flagged."""

    labels: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    flag: str | None = None


class Answers:
    """The answers to ``tasks``, whose images are ``image_ids`` (those of the shard, in file order)."""

    def __init__(self, tasks: list[Task], image_ids: list[int]) -> None:
        self.tasks = tasks
        self.by_ann = {t.ann_id: t for t in tasks}
        self.objects = {t.ann_id: ObjectAnswers() for t in tasks}
        self.stack: list[dict[str, Any]] = []  # applied answer/flag events, latest last (for undo)
        self.image_ids = image_ids
        self.remaining: dict[int, int] = {}  # image id -> objects not yet finished
        for t in tasks:
            self.remaining.setdefault(t.image_id, 0)
            self.remaining[t.image_id] += bool(t.points)
        for iid in image_ids:
            self.remaining.setdefault(iid, 0)
        self.cursor = 0

    # ------------------------------------------------------------------ queries

    def finished(self, task: Task) -> bool:
        st = self.objects[task.ann_id]
        return st.flag is not None or len(st.labels) == len(task.points)

    def current(self) -> Task | None:
        """The task at the cursor (the object asked now), or None when every object is finished."""
        return self.tasks[self.cursor] if self.cursor < len(self.tasks) else None

    def complete_images(self) -> set[int]:
        return {i for i in self.image_ids if self.remaining[i] == 0}

    # ------------------------------------------------------------------ changes

    def advance(self) -> None:
        # Invariant: every task before the cursor is finished.
        while self.cursor < len(self.tasks) and self.finished(self.tasks[self.cursor]):
            self.cursor += 1

    def _apply(self, ev: dict[str, Any]) -> Task:
        task = self.by_ann[ev["ann_id"]]
        st = self.objects[task.ann_id]
        if ev["op"] == "answer":
            st.labels.append(ev["label"])
            st.seconds.append(float(ev["seconds"]))
        else:
            st.flag = ev["reason"]
        if self.finished(task):
            self.remaining[task.image_id] -= 1
        self.stack.append(ev)
        return task

    def record(self, ev: dict[str, Any]) -> bool:
        """Apply a live answer or flag event for the current task; whether its image just became
        complete (so that the output is to be rewritten)."""
        task = self._apply(ev)
        if not self.finished(task):
            return False
        self.advance()
        return self.remaining[task.image_id] == 0

    def take_back(self) -> bool:
        """Undo the latest answer or flag (there must be one, see :attr:`stack`); whether its image
        just stopped being complete (so that the output is to be rewritten)."""
        ev = self.stack.pop()
        task = self.by_ann[ev["ann_id"]]
        was_finished = self.finished(task)
        st = self.objects[task.ann_id]
        if ev["op"] == "flag":
            st.flag = None
        else:
            st.labels.pop()
            st.seconds.pop()
        if was_finished:
            self.remaining[task.image_id] += 1
        self.cursor = min(self.cursor, task.position)
        return was_finished and self.remaining[task.image_id] == 1

    def replay(
        self, events: list[tuple[int, dict[str, Any]]], line_error: Callable[[int, str], Exception]
    ) -> None:
        """Rebuild the state from a journal's validated ``(line number, event)`` list.

        Undo pops the latest answer/flag, so the effective history is computed first; the events
        of objects whose box changed since (or that left the input) are then skipped as a whole,
        and those objects are asked again. ``line_error(n, message)`` makes the error raised for
        an event that contradicts the ones before it.
        """
        stale: set[int] = set()
        for n, ev in effective_history(events):
            task = self.by_ann.get(ev["ann_id"])
            if task is None or list(task.bbox) != ev["bbox"]:
                stale.add(ev["ann_id"])
                continue
            st = self.objects[task.ann_id]
            if ev["op"] == "answer":
                k = len(st.labels)
                if st.flag is not None or ev["index"] != k or k >= len(task.points):
                    raise line_error(
                        n,
                        f"inconsistent journal: answer to point index {ev['index']} of annotation "
                        f"{task.ann_id}, whose point index {k} comes next",
                    )
                if list(task.points[k]) != ev["point"]:
                    stale.add(task.ann_id)  # same box, other sampling: cannot happen with the same seed
                    continue
            elif self.finished(task):
                raise line_error(n, f"inconsistent journal: flag of the finished annotation {task.ann_id}")
            self._apply(ev)
        for ann_id in stale:
            if ann_id in self.objects:
                task = self.by_ann[ann_id]
                if self.finished(task):
                    self.remaining[task.image_id] += 1
                self.objects[ann_id] = ObjectAnswers()
        if stale:
            self.stack = [ev for ev in self.stack if ev["ann_id"] not in stale]
            logger.warning(
                "%d object(s) changed in the input since they were annotated (box edited or removed): "
                "their earlier answers are ignored and they are asked again",
                len(stale),
            )
        self.advance()

    # ------------------------------------------------------------------ a lost event, in words

    def describe_lost(self, torn: TornLine) -> str:
        """What the torn event ``torn`` was, in terms of the state it was made against (the
        replayed one): the current point is the one a torn answer was for. What the torn bytes
        still say is used where they say it (they are what was being written)."""
        task = self.current()
        ann_id = torn.ann_id if torn.ann_id is not None else (task.ann_id if task else None)
        where = self.by_ann.get(ann_id) if ann_id is not None else None
        obj = f"annotation {ann_id} (image {where.image_id})" if where else f"annotation {ann_id}"
        if torn.index is not None:
            k = torn.index
        elif task is not None and task.ann_id == ann_id:
            k = len(self.objects[task.ann_id].labels)
        else:
            k = None
        if torn.op == "answer" and ann_id is not None:
            point = f"point index {k}" if k is not None else "a point"
            return f"the answer to {point} of {obj} was lost; it is asked again"
        if torn.op == "flag" and ann_id is not None:
            return f"the bad-box flag of {obj} was lost; it is asked again"
        if torn.op == "undo":
            if not self.stack:
                return "an undo was lost (with nothing left to take back)"
            taken = self.describe_event(self.stack[-1])
            return f"an undo was lost: {taken} is still recorded; undo it again if needed"
        if task is None:
            return "a change after the last complete line was lost (every object is done now)"
        k = len(self.objects[task.ann_id].labels)
        return (
            "the answer (or flag or undo) after the last complete line was lost; the point asked next "
            f"is point index {k} of annotation {task.ann_id} (image {task.image_id})"
        )

    def describe_event(self, ev: dict[str, Any]) -> str:
        """An applied answer or flag event, in words."""
        task = self.by_ann[ev["ann_id"]]
        obj = f"annotation {task.ann_id} (image {task.image_id})"
        if ev["op"] == "flag":
            return f"the bad-box flag of {obj}"
        return f"the answer to point index {ev['index']} of {obj}"
