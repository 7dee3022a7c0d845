"""One annotation session: answer, flag and undo, versioned and serialized, persisted before acknowledged.

:class:`AnnotationStore` is the facade the server and the command line use. It ties together the
concepts that each have their own module:

* :mod:`.tasks`: which objects and points are asked (``[x, y]`` integer pixel indices, the
  simulator's points for the same seed);
* :mod:`.events` and :mod:`.journal`: every change is an event appended to ``OUTPUT.journal`` and
  fsynced before it is acknowledged; a restart with the same ``OUTPUT`` replays the journal and
  resumes at the first unfinished object;
* :mod:`.answers`: the state the events build; :mod:`.view`: what the page is sent;
* :mod:`.output`: the training file ``OUTPUT``, rewritten whenever the set of complete images
  changes (:mod:`.merge` joins several annotators' files).

What this module adds is the session's rules: one lock, so that concurrent requests are applied
one at a time and the journal order is the order in which they were applied; a :attr:`version`
counting the events, against which every change may be checked (a change made against another
version, or for a point other than the one asked, is refused with :class:`ConflictError` and
recorded nowhere: the server's 409).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from ..coco_format import CocoInstances
from ..json_values import is_integer
from .answers import Answers
from .events import FLAG_BAD_BOX, answer_event, check_answer, check_flag, flag_event, undo_event
from .journal import Journal, journal_path
from .output import build_output, write_output
from .tasks import Task, plan_tasks, shard_image_ids
from .view import page_view, progress

__all__ = ["AnnotationStore", "ConflictError"]

logger = logging.getLogger(__name__)


class ConflictError(RuntimeError):
    """An answer or flag for an object/point that is not the one currently asked (a stale page,
    a second tab, a double key press). Nothing was recorded."""


class AnnotationStore:
    """The answers of one annotation session, persisted to ``OUTPUT.journal`` and ``OUTPUT``.

    Thread-safe: every method takes one lock, so concurrent requests are applied one at a time and
    the journal order is the order in which they were applied. An exclusive ``flock`` on the
    journal keeps a second process away from the same output for as long as the store is open.

    :attr:`version` counts the answers, flags and undos recorded in the journal (this session and
    earlier ones; it is not the sampling ``version`` of the header). A change made against a
    version other than the current one (``version=`` of :meth:`answer`, :meth:`flag`,
    :meth:`undo`) is refused with :class:`ConflictError`: a stale page or a replayed request
    cannot take back or record more than its sender saw.

    Constructing a store creates ``OUTPUT.journal`` and ``OUTPUT`` if they do not exist yet; if
    the construction fails after that, it removes what it created (never files of an earlier
    session). Validate everything else first (see :meth:`AnnotationServer.open_session`).
    """

    def __init__(
        self,
        instances: CocoInstances,
        output: str | os.PathLike,
        *,
        num_points: int = 10,
        seed: int = 0,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.instances = instances
        self.output = Path(output)
        self.journal = journal_path(output)
        self.num_points = num_points
        self.seed = seed
        self.shard = shard
        self.tasks = plan_tasks(instances, num_points, seed, shard)
        self._answers = Answers(self.tasks, shard_image_ids(instances, shard))
        self._lock = threading.Lock()
        self._version = 0
        self._journal = Journal(
            output, num_points=num_points, seed=seed, shard=shard, source=instances.source
        )
        try:
            recorded = self._journal.read()
            if recorded.has_header:
                self._version = len(recorded.events)
                self._answers.replay(recorded.events, self._journal.line_error)
                logger.info(
                    "resumed from %s: %d answers and flags replayed", self.journal, len(self._answers.stack)
                )
            self._journal.repair(recorded, self._answers.describe_lost)
            self._answers.advance()
            self.write_output()
        except BaseException:
            self._journal.abandon()
            raise

    @property
    def version(self) -> int:
        """The number of answers, flags and undos recorded so far (see the class docstring)."""
        with self._lock:
            return self._version

    def close(self) -> None:
        """Write the output a last time and release the journal (and its lock)."""
        with self._lock:
            if self._journal.closed:
                return
            self._write_output_locked()
            self._journal.close()

    def __enter__(self) -> AnnotationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ changes

    def _record(self, event: dict[str, Any]) -> None:
        # On disk first: a change is applied (and acknowledged) only once the journal holds it.
        self._journal.append(event)
        self._version += 1

    def _expect_version(self, version: int | None) -> None:
        if version is None:
            return
        if not is_integer(version):
            raise ValueError(f"version must be an integer, got {version!r}")
        if version != self._version:
            raise ConflictError(
                f"stale request: made against version {version}, but the answers are at version "
                f"{self._version} (changed by another tab or a repeated request); nothing was recorded"
            )

    def _expect_current(self, ann_id: int) -> Task:
        task = self._answers.current()
        if task is None:
            raise ConflictError("every object is done")
        if task.ann_id != ann_id:
            raise ConflictError(f"annotation {ann_id} is not the current object ({task.ann_id} is)")
        return task

    def answer(
        self, ann_id: int, index: int, label: int, seconds: float, *, version: int | None = None
    ) -> None:
        """Record the label (1 object, 0 background) of point ``index`` of the current object.

        ``seconds`` is the time the annotator took, in ``[0, MAX_SECONDS_PER_ANSWER]``. ``version``
        (optional here, sent by the page) is the :attr:`version` the answer was made against.

        Raises:
            ConflictError: ``ann_id``/``index`` is not the point currently asked, or ``version`` is
                not the current one (nothing recorded).
            ValueError: a label other than 0/1, an index outside ``[0, num_points)``, a time out of
                range, or a bool where an integer is expected.
        """
        check_answer(ann_id, index, label, seconds, self.num_points)
        with self._lock:
            self._expect_version(version)
            task = self._expect_current(ann_id)
            asked = len(self._answers.objects[ann_id].labels)
            if index != asked:
                raise ConflictError(f"point {index} of annotation {ann_id} is not the one asked ({asked} is)")
            event = answer_event(task, index, label, seconds)
            self._record(event)
            if self._answers.record(event):
                self._write_output_locked()  # the image just became complete

    def flag(self, ann_id: int, reason: str = FLAG_BAD_BOX, *, version: int | None = None) -> None:
        """Flag the current object (its box is wrong) and move on; its answers so far are set aside.

        Raises :class:`ConflictError` (nothing recorded) for another object or a stale ``version``.
        """
        check_flag(ann_id, reason)
        with self._lock:
            self._expect_version(version)
            task = self._expect_current(ann_id)
            event = flag_event(task, reason)
            self._record(event)
            if self._answers.record(event):
                self._write_output_locked()  # the image just became complete

    def undo(self, *, version: int | None = None) -> bool:
        """Take back the latest answer or flag (across objects and restarts). False if none.

        With ``version`` (the page always sends it), only if nothing changed since that version:
        five replays of one undo take back one answer, the other four raise :class:`ConflictError`.
        """
        with self._lock:
            self._expect_version(version)
            if not self._answers.stack:
                return False
            self._record(undo_event())
            if self._answers.take_back():
                self._write_output_locked()  # the image just stopped being complete
            return True

    # ------------------------------------------------------------------ views and output

    def snapshot(self) -> dict[str, Any]:
        """The current object and point, and the progress (the page's view; JSON-ready)."""
        with self._lock:
            return page_view(self._answers, self.instances, version=self._version)

    def progress(self) -> dict[str, Any]:
        """Counts of objects, points and images done, and the estimated seconds left."""
        with self._lock:
            return progress(self._answers)

    def build_output(self) -> dict[str, Any]:
        """The training file's content (see :mod:`.output`)."""
        with self._lock:
            return self._build_output_locked()

    def _build_output_locked(self) -> dict[str, Any]:
        return build_output(
            self.instances, self._answers, num_points=self.num_points, seed=self.seed, shard=self.shard
        )

    def write_output(self) -> None:
        """Rewrite ``OUTPUT`` atomically from the current answers."""
        with self._lock:
            self._write_output_locked()

    def _write_output_locked(self) -> None:
        write_output(self.output, self._build_output_locked())
