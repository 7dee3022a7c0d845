"""The crash-safe store of human P_N answers: journal, resume, training output, merge.

One annotation session writes two files:

``OUTPUT`` (e.g. ``points.json``)
    The training file, in the P_N simulator's format: the input COCO JSON with, on every finished
    annotation, ``point_coords`` (``[x, y]`` integer pixel indices, sampled exactly as
    :func:`point_sup_labels.simulate.simulate_point_annotations` samples them for the same
    seed, version 0) and ``point_labels`` (1 object, 0 background), plus ``point_seconds``: the
    seconds the annotator took for each answer (from 0 to ``MAX_SECONDS_PER_ANSWER``, an hour).
    It only ever describes finished work:

    * ``images`` holds the *complete* images (every object answered or flagged); an image with
      objects still to do is left out, with its finished objects, so that training never treats an
      unannotated object as background. ``annotations`` holds the answered objects of those images
      (``segmentation``, if the input had any, is dropped as the simulator drops it).
    * Objects flagged as having a wrong box are not in ``annotations`` (training on a wrong box is
      worse than not training on it) but in the top-level list ``point_sup_flagged``, each with
      ``"point_sup_flag": "bad_box"``, so they can be fixed.
    * ``point_sup_annotation`` (top level) records N, the seed and the progress.

    Detectron2's and point_sup's loaders ignore the extra keys. The file is rewritten atomically
    whenever the set of complete images changes.

``OUTPUT.journal``
    The record of every answer, flag and undo, one JSON object per line, appended and fsynced
    *before* the answer is acknowledged. It is the source of truth: restarting with the same
    ``OUTPUT`` replays it and resumes at the first unfinished object. Every line is validated on
    replay (types, ranges, labels; a bool is not an integer) and a bad one stops the start with an
    error naming the journal, the line (1-based) and the field. A line torn by a crash while
    being written is discarded on the next start, with a warning naming the answer (object and
    point index) that was lost. Each event stores the object's box; if the box has changed in the
    input since (e.g. a flagged box was fixed), that object's old events are ignored and it is
    asked again.

Several annotators work on separate outputs (e.g. ``--shard 1/2`` and ``--shard 2/2``) and
:func:`merge_outputs` joins them.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..coco_format import CocoFormatError, CocoInstances, dumps_json, is_finite_number, read_json
from ..file_io import atomic_write_bytes
from ..sampling import annotation_keys, sample_points, sampling_ranges
from ..time_model import SECONDS_PER_POINT

__all__ = [
    "FLAGGED_KEY",
    "FLAG_BAD_BOX",
    "JOURNAL_SUFFIX",
    "MAX_SECONDS_PER_ANSWER",
    "META_KEY",
    "AnnotationStore",
    "ConflictError",
    "MergeStats",
    "OutputInUseError",
    "Task",
    "journal_path",
    "merge_outputs",
    "plan_tasks",
]

logger = logging.getLogger(__name__)

JOURNAL_SUFFIX = ".journal"
META_KEY = "point_sup_annotation"
FLAGGED_KEY = "point_sup_flagged"
FLAG_BAD_BOX = "bad_box"
FLAG_REASONS = (FLAG_BAD_BOX,)
JOURNAL_FORMAT = 1
# The simulator's version index whose sampling a labelled file reproduces (its default, single version).
SAMPLING_VERSION = 0
# The longest time one answer may record, in seconds. The page does not count time with its tab
# hidden and caps what it sends here; anything longer is an annotator who walked away, not a
# measurement, and would only distort the report's means.
MAX_SECONDS_PER_ANSWER = 3600.0


class ConflictError(RuntimeError):
    """An answer or flag for an object/point that is not the one currently asked (a stale page,
    a second tab, a double key press). Nothing was recorded."""


class OutputInUseError(RuntimeError):
    """Another process is annotating into the same output."""


def _is_int(v: Any) -> bool:
    # JSON's true/false arrive as Python bools, which are ints: never accepted as one.
    return isinstance(v, int) and not isinstance(v, bool)


def _as_json(v: Any, limit: int = 80) -> str:
    # Journal values are quoted as the file has them (true, null, "x"), cut to a readable length.
    text = orjson.dumps(v).decode()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def journal_path(output: str | os.PathLike) -> Path:
    """The journal that belongs to ``output``."""
    p = Path(output)
    return p.with_name(p.name + JOURNAL_SUFFIX)


@dataclass(frozen=True)
class Task:
    """One object to annotate: its box and the points to ask, in asking order."""

    position: int  # in the task order
    ann_id: int
    image_id: int
    bbox: tuple[float, ...]
    category_id: int
    points: tuple[tuple[int, int], ...]  # empty for a box of zero area in the image (nothing to ask)


@dataclass
class _ObjectState:
    labels: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    flag: str | None = None


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
    k, m = shard
    if not (m >= 1 and 0 <= k < m):
        raise ValueError(f"shard must be (k, m) with 0 <= k < m, got {shard}")
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in instances.annotations:
        by_image.setdefault(ann["image_id"], []).append(ann)
    anns = [
        ann
        for pos, img in enumerate(instances.data["images"])
        if pos % m == k
        for ann in by_image.get(img["id"], [])
    ]
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
        self._by_ann = {t.ann_id: t for t in self.tasks}
        self._state = {t.ann_id: _ObjectState() for t in self.tasks}
        self._stack: list[dict[str, Any]] = []  # applied answer/flag events, for undo
        self._remaining: dict[int, int] = {}  # image id -> objects not yet finished
        for t in self.tasks:
            self._remaining.setdefault(t.image_id, 0)
            self._remaining[t.image_id] += bool(t.points)
        shard_images = [
            img["id"] for pos, img in enumerate(instances.data["images"]) if pos % shard[1] == shard[0]
        ]
        for iid in shard_images:
            self._remaining.setdefault(iid, 0)
        self._image_order = shard_images
        self._lock = threading.Lock()
        self._cursor = 0
        self._version = 0
        self._fh = None
        created = self._open_journal()
        try:
            self._advance()
            self.write_output()
        except BaseException:
            self._abandon(created)
            raise

    @property
    def version(self) -> int:
        """The number of answers, flags and undos recorded so far (see the class docstring)."""
        with self._lock:
            return self._version

    # ------------------------------------------------------------------ journal

    def _header(self) -> dict[str, Any]:
        return {
            "op": "header",
            "format": JOURNAL_FORMAT,
            "num_points": self.num_points,
            "seed": self.seed,
            "version": SAMPLING_VERSION,
            "shard": list(self.shard),
            "input": self.instances.source,
            "time": time.time(),
        }

    def _open_journal(self) -> bool:
        """Lock the journal (creating it if missing), then start it or resume from it.

        Returns whether this call created the journal file (so that a failed start removes it).
        """
        if not self.journal.exists() and self.output.exists():
            raise FileExistsError(
                f"{self.output} exists but has no journal {self.journal.name}: it was not written by "
                "this tool (or its journal was removed); choose another --output instead of overwriting it"
            )
        created = not self.journal.exists()
        # "a+b": created if missing, never truncated by opening; reads from the start.
        fh = open(self.journal, "a+b")  # noqa: SIM115  (kept open for the store's lifetime)
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # Not ours to remove even if we created it: the process holding the lock uses it.
            fh.close()
            raise OutputInUseError(
                f"{self.output} is being annotated by another process (lock on {self.journal})"
            ) from None
        self._fh = fh
        try:
            self._load_journal()
        except BaseException:
            self._abandon(created)
            raise
        return created

    def _abandon(self, created: bool) -> None:
        # A failed start: release the lock and remove the files this start created. The output
        # cannot predate a journal this start created (refused above), so it is ours too.
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if created:
            for path in (self.journal, self.output):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def _load_journal(self) -> None:
        assert self._fh is not None
        self._fh.seek(0)
        raw = self._fh.read()
        if not raw:
            self._append(self._header())
            _fsync_dir(self.journal.parent)
            logger.info("started a new journal %s", self.journal)
            return
        # A crash while a line was being written leaves it without its newline: that change was
        # never acknowledged. It is cut off only once the rest has been validated and replayed,
        # so that a start refused for any reason leaves the journal exactly as it was.
        cut = raw.rfind(b"\n") + 1
        torn = raw[cut:]
        events: list[tuple[int, dict[str, Any]]] = []
        for n, line in enumerate(raw[:cut].splitlines(), 1):
            try:
                ev = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise CocoFormatError(
                    f"line {n} is not valid JSON (corrupted journal)", source=str(self.journal)
                ) from None
            events.append((n, ev))
        if events:
            self._check_header(events[0][1])
            self._replay([(n, self._validated(n, ev)) for n, ev in events[1:]])
        if torn:
            logger.warning(
                "%s: discarding a torn last line (%d bytes) left by a crash: %s",
                self.journal,
                len(torn),
                self._describe_torn(torn, has_header=bool(events)),
            )
            self._fh.truncate(cut)
            os.fsync(self._fh.fileno())
        if not events:  # created but the header never (completely) reached the disk
            self._append(self._header())

    def _journal_error(self, n: int, message: str) -> CocoFormatError:
        return CocoFormatError(f"line {n}: {message} (corrupted journal)", source=str(self.journal))

    def _check_header(self, header: Any) -> None:
        if (
            not isinstance(header, dict)
            or header.get("op") != "header"
            or header.get("format") != JOURNAL_FORMAT
        ):
            raise CocoFormatError("first line is not a journal header of this tool", source=str(self.journal))
        for key, mine in (("num_points", self.num_points), ("seed", self.seed), ("shard", list(self.shard))):
            theirs = header.get(key)
            well_formed = (
                isinstance(theirs, list) and len(theirs) == 2 and all(_is_int(v) for v in theirs)
                if key == "shard"
                else _is_int(theirs)
            )
            if not well_formed:
                raise self._journal_error(1, f"'{key}' of the header is malformed: {theirs!r}")
            if theirs != mine:
                flag = {"num_points": "--num-points", "seed": "--seed", "shard": "--shard"}[key]
                if key == "shard":
                    theirs, mine = f"{theirs[0] + 1}/{theirs[1]}", f"{mine[0] + 1}/{mine[1]}"
                raise ValueError(
                    f"{self.output} was started with {flag} {theirs}, not {mine}: resume with the same "
                    "value, or choose another --output"
                )

    def _validated(self, n: int, ev: Any) -> dict[str, Any]:
        """``ev`` (journal line ``n``, 1-based) if it is an event this tool writes; else a
        :class:`CocoFormatError` naming the journal, the line and the field."""
        if not isinstance(ev, dict):
            raise self._journal_error(n, f"expected a JSON object, got {_as_json(ev)}")
        op = ev.get("op")
        if op not in ("answer", "flag", "undo"):
            raise self._journal_error(n, f'\'op\' must be "answer", "flag" or "undo", got {_as_json(op)}')

        def field(key: str, ok: bool, expected: str) -> None:
            if not ok:
                shown = _as_json(ev[key]) if key in ev else "missing"
                raise self._journal_error(n, f"'{key}' of this {op} must be {expected}, got {shown}")

        t = ev.get("time")
        field("time", is_finite_number(t), "a finite number")
        if op == "undo":
            return ev
        field("ann_id", _is_int(ev.get("ann_id")) and abs(ev["ann_id"]) < 2**63, "a 64-bit integer")
        bbox = ev.get("bbox")
        field(
            "bbox",
            isinstance(bbox, list) and len(bbox) == 4 and all(map(is_finite_number, bbox)),
            "[x, y, width, height] (4 finite numbers)",
        )
        if op == "flag":
            field("reason", ev.get("reason") in FLAG_REASONS, f"one of {list(FLAG_REASONS)}")
            return ev
        index = ev.get("index")
        field(
            "index", _is_int(index) and 0 <= index < self.num_points, f"an integer in [0, {self.num_points})"
        )
        point = ev.get("point")
        field(
            "point",
            isinstance(point, list) and len(point) == 2 and all(_is_int(v) and 0 <= v < 2**63 for v in point),
            "[x, y] (2 non-negative integers)",
        )
        field("label", _is_int(ev.get("label")) and ev["label"] in (0, 1), "0 or 1")
        s = ev.get("seconds")
        field(
            "seconds",
            is_finite_number(s) and 0 <= s <= MAX_SECONDS_PER_ANSWER,
            f"a number in [0, {MAX_SECONDS_PER_ANSWER:g}]",
        )
        return ev

    def _describe_torn(self, torn: bytes, *, has_header: bool) -> str:
        # Called after the replay: the state is the one the torn change was made against, so the
        # current point is the one a torn answer was for. What the torn bytes still say is used
        # where they say it (they are what was being written).
        if not has_header:
            return "it was the journal's header; no answer was lost"

        def found(pattern: bytes) -> bytes | None:
            # A value counts only if followed by ',' or '}': '"ann_id":1' might have been 12.
            m = re.search(pattern + rb"[,}]", torn)
            return m.group(1) if m else None

        op = found(rb'"op":"(answer|flag|undo)"')
        task = self._current()
        ann = found(rb'"ann_id":(-?[0-9]+)')
        index = found(rb'"index":([0-9]+)')
        ann_id = int(ann) if ann is not None else (task.ann_id if task else None)
        where = self._by_ann.get(ann_id) if ann_id is not None else None
        obj = f"annotation {ann_id} (image {where.image_id})" if where else f"annotation {ann_id}"
        if index is not None:
            k = int(index)
        elif task is not None and task.ann_id == ann_id:
            k = len(self._state[task.ann_id].labels)
        else:
            k = None
        if op == b"answer" and ann_id is not None:
            point = f"point index {k}" if k is not None else "a point"
            return f"the answer to {point} of {obj} was lost; it is asked again"
        if op == b"flag" and ann_id is not None:
            return f"the bad-box flag of {obj} was lost; it is asked again"
        if op == b"undo":
            last = self._stack[-1] if self._stack else None
            if last is None:
                return "an undo was lost (with nothing left to take back)"
            taken = self._describe_event(last)
            return f"an undo was lost: {taken} is still recorded; undo it again if needed"
        if task is None:
            return "a change after the last complete line was lost (every object is done now)"
        k = len(self._state[task.ann_id].labels)
        return (
            "the answer (or flag or undo) after the last complete line was lost; the point asked next "
            f"is point index {k} of annotation {task.ann_id} (image {task.image_id})"
        )

    def _describe_event(self, ev: dict[str, Any]) -> str:
        task = self._by_ann[ev["ann_id"]]
        obj = f"annotation {task.ann_id} (image {task.image_id})"
        if ev["op"] == "flag":
            return f"the bad-box flag of {obj}"
        return f"the answer to point index {ev['index']} of {obj}"

    def _replay(self, events: list[tuple[int, dict[str, Any]]]) -> None:
        # Events come validated (types and ranges) with their line numbers. Undo pops the latest
        # answer/flag, so the effective history is computed first; events of objects whose box
        # changed since (or that left the input) are then skipped as a whole.
        self._version = len(events)
        effective: list[tuple[int, dict[str, Any]]] = []
        for n, ev in events:
            if ev["op"] == "undo":
                if effective:
                    effective.pop()
            else:
                effective.append((n, ev))
        stale: set[int] = set()
        for n, ev in effective:
            task = self._by_ann.get(ev["ann_id"])
            if task is None or list(task.bbox) != ev["bbox"]:
                stale.add(ev["ann_id"])
                continue
            st = self._state[task.ann_id]
            if ev["op"] == "answer":
                k = len(st.labels)
                if st.flag is not None or ev["index"] != k or k >= len(task.points):
                    raise self._journal_error(
                        n,
                        f"inconsistent journal: answer to point index {ev['index']} of annotation "
                        f"{task.ann_id}, whose point index {k} comes next",
                    )
                if list(task.points[k]) != ev["point"]:
                    stale.add(task.ann_id)  # same box, other sampling: cannot happen with the same seed
                    continue
                st.labels.append(ev["label"])
                st.seconds.append(float(ev["seconds"]))
            else:
                if self._finished(task):
                    raise self._journal_error(
                        n, f"inconsistent journal: flag of the finished annotation {task.ann_id}"
                    )
                st.flag = ev["reason"]
            if self._finished(task):
                self._remaining[task.image_id] -= 1
            self._stack.append(ev)
        for ann_id in stale:
            if ann_id in self._state:
                task = self._by_ann[ann_id]
                if self._finished(task):
                    self._remaining[task.image_id] += 1
                self._state[ann_id] = _ObjectState()
        if stale:
            self._stack = [ev for ev in self._stack if ev["ann_id"] not in stale]
            logger.warning(
                "%d object(s) changed in the input since they were annotated (box edited or removed): "
                "their earlier answers are ignored and they are asked again",
                len(stale),
            )
        self._advance()  # the torn-line report asks for the current point
        logger.info("resumed from %s: %d answers and flags replayed", self.journal, len(self._stack))

    def _append(self, event: dict[str, Any]) -> None:
        # One write of one whole line, then fsync: the answer is on disk before it is acknowledged.
        assert self._fh is not None
        self._fh.write(orjson.dumps(event) + b"\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Write the output a last time and release the journal (and its lock)."""
        with self._lock:
            if self._fh is None:
                return
            self._write_output_locked()
            self._fh.close()
            self._fh = None

    def __enter__(self) -> AnnotationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ state

    def _finished(self, task: Task) -> bool:
        st = self._state[task.ann_id]
        return st.flag is not None or len(st.labels) == len(task.points)

    def _advance(self) -> None:
        # Invariant: every task before the cursor is finished.
        while self._cursor < len(self.tasks) and self._finished(self.tasks[self._cursor]):
            self._cursor += 1

    def _current(self) -> Task | None:
        return self.tasks[self._cursor] if self._cursor < len(self.tasks) else None

    def _expect_version(self, version: int | None) -> None:
        if version is None:
            return
        if not _is_int(version):
            raise ValueError(f"version must be an integer, got {version!r}")
        if version != self._version:
            raise ConflictError(
                f"stale request: made against version {version}, but the answers are at version "
                f"{self._version} (changed by another tab or a repeated request); nothing was recorded"
            )

    def _expect_current(self, ann_id: int) -> Task:
        task = self._current()
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
        if not _is_int(ann_id):
            raise ValueError(f"ann_id must be an integer, got {ann_id!r}")
        if not _is_int(index) or not 0 <= index < self.num_points:
            raise ValueError(f"index must be an integer in [0, {self.num_points}), got {index!r}")
        if label not in (0, 1) or not _is_int(label):
            raise ValueError(f"label must be 0 or 1, got {label!r}")
        if not is_finite_number(seconds):
            raise ValueError(f"seconds must be a finite number, got {seconds!r}")
        if not 0 <= seconds <= MAX_SECONDS_PER_ANSWER:
            raise ValueError(f"seconds must be in [0, {MAX_SECONDS_PER_ANSWER:g}], got {seconds!r}")
        with self._lock:
            self._expect_version(version)
            task = self._expect_current(ann_id)
            st = self._state[ann_id]
            if index != len(st.labels):
                raise ConflictError(
                    f"point {index} of annotation {ann_id} is not the one asked ({len(st.labels)} is)"
                )
            event = {
                "op": "answer",
                "ann_id": ann_id,
                "index": index,
                "point": list(task.points[index]),
                "label": label,
                "seconds": round(float(seconds), 4),
                "bbox": list(task.bbox),
                "time": time.time(),
            }
            self._append(event)
            self._version += 1
            st.labels.append(label)
            st.seconds.append(event["seconds"])
            self._stack.append(event)
            self._after_change(task, was_finished=False)

    def flag(self, ann_id: int, reason: str = FLAG_BAD_BOX, *, version: int | None = None) -> None:
        """Flag the current object (its box is wrong) and move on; its answers so far are set aside.

        Raises :class:`ConflictError` (nothing recorded) for another object or a stale ``version``.
        """
        if reason not in FLAG_REASONS:
            raise ValueError(f"flag reason must be one of {FLAG_REASONS}, got {reason!r}")
        if not _is_int(ann_id):
            raise ValueError(f"ann_id must be an integer, got {ann_id!r}")
        with self._lock:
            self._expect_version(version)
            task = self._expect_current(ann_id)
            event = {
                "op": "flag",
                "ann_id": ann_id,
                "reason": reason,
                "bbox": list(task.bbox),
                "time": time.time(),
            }
            self._append(event)
            self._version += 1
            self._state[ann_id].flag = reason
            self._stack.append(event)
            self._after_change(task, was_finished=False)

    def undo(self, *, version: int | None = None) -> bool:
        """Take back the latest answer or flag (across objects and restarts). False if none.

        With ``version`` (the page always sends it), only if nothing changed since that version:
        five replays of one undo take back one answer, the other four raise :class:`ConflictError`.
        """
        with self._lock:
            self._expect_version(version)
            if not self._stack:
                return False
            self._append({"op": "undo", "time": time.time()})
            self._version += 1
            ev = self._stack.pop()
            task = self._by_ann[ev["ann_id"]]
            was_finished = self._finished(task)
            st = self._state[task.ann_id]
            if ev["op"] == "flag":
                st.flag = None
            else:
                st.labels.pop()
                st.seconds.pop()
            if was_finished:
                self._remaining[task.image_id] += 1
            self._cursor = min(self._cursor, task.position)
            if was_finished and self._remaining[task.image_id] == 1:
                self._write_output_locked()  # the image just stopped being complete
            return True

    def _after_change(self, task: Task, *, was_finished: bool) -> None:
        if not was_finished and self._finished(task):
            self._remaining[task.image_id] -= 1
            self._advance()
            if self._remaining[task.image_id] == 0:
                self._write_output_locked()  # the image just became complete

    # ------------------------------------------------------------------ views

    def snapshot(self) -> dict[str, Any]:
        """The current object and point, and the progress (the page's view; JSON-ready)."""
        with self._lock:
            task = self._current()
            view: dict[str, Any] = {"finished": task is None, "task": None, "progress": self._progress()}
            view["can_undo"] = bool(self._stack)
            # Sent back with every change, so that a change made on an outdated view is refused.
            view["version"] = self._version
            view["max_seconds"] = MAX_SECONDS_PER_ANSWER
            if task is not None:
                st = self._state[task.ann_id]
                img = self.instances.images[task.image_id]
                cat = self.instances.categories.get(task.category_id, {})
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
                        {"point": list(p), "label": lab}
                        for p, lab in zip(task.points, st.labels, strict=False)
                    ],
                }
                nxt = next((t for t in self.tasks[self._cursor + 1 :] if t.image_id != task.image_id), None)
                view["next_image_id"] = nxt.image_id if nxt else None
            return view

    def _progress(self) -> dict[str, Any]:
        with_points = [t for t in self.tasks if t.points]
        flagged = sum(self._state[t.ann_id].flag is not None for t in with_points)
        done = sum(self._finished(t) for t in with_points)
        active = [t for t in with_points if self._state[t.ann_id].flag is None]
        points_total = sum(len(t.points) for t in active)
        points_done = sum(len(self._state[t.ann_id].labels) for t in active)
        seconds = [s for t in active for s in self._state[t.ann_id].seconds]
        # Until a few answers exist, the paper's 0.9 s per point is the best estimate.
        per_point = statistics.median(seconds) if len(seconds) >= 5 else SECONDS_PER_POINT
        return {
            "objects_total": len(with_points),
            "objects_done": done,
            "objects_flagged": flagged,
            "objects_without_points": len(self.tasks) - len(with_points),
            "points_total": points_total,
            "points_done": points_done,
            "images_total": len(self._image_order),
            "images_complete": sum(self._remaining[i] == 0 for i in self._image_order),
            "seconds_per_point": per_point,
            "seconds_per_point_measured": len(seconds) >= 5,
            "eta_seconds": (points_total - points_done) * per_point,
        }

    def progress(self) -> dict[str, Any]:
        """Counts of objects, points and images done, and the estimated seconds left."""
        with self._lock:
            return self._progress()

    # ------------------------------------------------------------------ output

    def build_output(self) -> dict[str, Any]:
        """The training file's content (see the module docstring)."""
        with self._lock:
            return self._build_output_locked()

    def _build_output_locked(self) -> dict[str, Any]:
        complete = {i for i in self._image_order if self._remaining[i] == 0}
        images = [img for img in self.instances.data["images"] if img["id"] in complete]
        annotations, flagged = [], []
        for ann in self.instances.annotations:
            if ann["image_id"] not in complete or ann["id"] not in self._by_ann:
                continue
            out = {k: v for k, v in ann.items() if k not in ("segmentation", "point_coords", "point_labels")}
            st = self._state[ann["id"]]
            if st.flag is not None:
                flagged.append({**out, "point_sup_flag": st.flag})
                continue
            task = self._by_ann[ann["id"]]
            out["point_coords"] = [list(p) for p in task.points]
            out["point_labels"] = list(st.labels)
            out["point_seconds"] = list(st.seconds)
            annotations.append(out)
        data = {k: v for k, v in self.instances.data.items() if k not in (META_KEY, FLAGGED_KEY)}
        data["images"] = images
        data["annotations"] = annotations
        data[FLAGGED_KEY] = flagged
        progress = self._progress()
        data[META_KEY] = {
            "tool": "point_sup_labels.annotation",
            "num_points": self.num_points,
            "seed": self.seed,
            "version": SAMPLING_VERSION,
            "shard": f"{self.shard[0] + 1}/{self.shard[1]}",
            "input": self.instances.source,
            "images_total": progress["images_total"],
            "images_complete": progress["images_complete"],
            "objects_total": progress["objects_total"],
            "objects_done": progress["objects_done"],
            "objects_flagged": progress["objects_flagged"],
            "complete": progress["images_complete"] == progress["images_total"],
        }
        return data

    def write_output(self) -> None:
        """Rewrite ``OUTPUT`` atomically from the current answers."""
        with self._lock:
            self._write_output_locked()

    def _write_output_locked(self) -> None:
        atomic_write_bytes(self.output, dumps_json(self._build_output_locked()))


def _fsync_dir(path: Path) -> None:
    # Makes a newly created file's directory entry durable (POSIX); best effort elsewhere.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------- merge


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
    merged["annotations"] = [a for a in taken.values() if "point_sup_flag" not in a]
    merged[FLAGGED_KEY] = [a for a in taken.values() if "point_sup_flag" in a]
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
    atomic_write_bytes(output, dumps_json(merged))
    return stats
