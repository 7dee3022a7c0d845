"""The journal ``OUTPUT.journal``: the append-only, crash-safe record of one session's events.

Format: JSON Lines (one compact JSON object per line, ``\\n``-terminated, UTF-8). The first line is
the header::

    {"op": "header", "format": 1, "num_points": N, "seed": S, "version": 0, "shard": [k, m],
     "input": "boxes.json", "time": 1700000000.0}

(``version`` is the simulator's sampling version, :data:`.tasks.SAMPLING_VERSION`; ``shard`` is
0-based, ``--shard 1/2`` is ``[0, 2]``). Every further line is an answer, flag or undo event of
:mod:`.events` (points are ``[x, y]`` integer pixel indices).

Conventions:

* Each event is written as one whole line and fsynced *before* it is acknowledged; the journal is
  the source of truth, ``OUTPUT`` is rebuilt from it.
* An exclusive ``flock`` on the open journal keeps a second process off the same output
  (:class:`OutputInUseError`).
* On a start every complete line is parsed and validated (types, ranges, labels; a bool is not an
  integer) and the header must match the session's N, seed and shard; a bad line stops the start
  with a :class:`~point_sup_labels.coco_format.CocoFormatError` naming the journal, the line
  (1-based) and the field, and leaves the file exactly as it was.
* Each event stores the object's box: if the box has changed in the input since (e.g. a flagged
  box was fixed), that object's old events are ignored and it is asked again (see
  :meth:`.answers.Answers.replay`).
* A last line without its newline was torn by a crash while being written (never acknowledged):
  it is cut off once the rest has been replayed, with a warning that says what was lost.
* A start that fails removes the journal and output it created, never those of an earlier session.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from ..coco_format import CocoFormatError
from .events import event_problem, is_integer
from .tasks import SAMPLING_VERSION

__all__ = [
    "JOURNAL_FORMAT",
    "JOURNAL_SUFFIX",
    "Journal",
    "OutputInUseError",
    "Recorded",
    "TornLine",
    "journal_path",
]

logger = logging.getLogger(__name__)

JOURNAL_SUFFIX = ".journal"
JOURNAL_FORMAT = 1
_OPTIONS = {"num_points": "--num-points", "seed": "--seed", "shard": "--shard"}


class OutputInUseError(RuntimeError):
    """Another process is annotating into the same output."""


def journal_path(output: str | os.PathLike) -> Path:
    """The journal that belongs to ``output``."""
    p = Path(output)
    return p.with_name(p.name + JOURNAL_SUFFIX)


@dataclass(frozen=True)
class TornLine:
    """What the bytes of a torn last line still say (None where they do not say it)."""

    op: str | None
    ann_id: int | None
    index: int | None

    @classmethod
    def parse(cls, torn: bytes) -> TornLine:
        def found(pattern: bytes) -> bytes | None:
            # A value counts only if followed by ',' or '}': '"ann_id":1' might have been 12.
            m = re.search(pattern + rb"[,}]", torn)
            return m.group(1) if m else None

        op = found(rb'"op":"(answer|flag|undo)"')
        ann = found(rb'"ann_id":(-?[0-9]+)')
        index = found(rb'"index":([0-9]+)')
        return cls(
            op=op.decode() if op is not None else None,
            ann_id=int(ann) if ann is not None else None,
            index=int(index) if index is not None else None,
        )


@dataclass(frozen=True)
class Recorded:
    """The content of a journal as read at a start (see :meth:`Journal.read`)."""

    has_header: bool  # the first line is complete (and matches the session)
    events: list[tuple[int, dict[str, Any]]]  # (1-based line number, validated event) after the header
    complete: int  # bytes of complete lines; what follows is the torn last line
    torn: bytes
    empty: bool  # the file had not a byte


class Journal:
    """The open, locked journal of one output (see the module docstring).

    Opening refuses an existing ``output`` without a journal (``FileExistsError``: not written by
    this tool) and a journal locked by another process (:class:`OutputInUseError`), and creates the
    journal file if it is missing (:attr:`created`).
    """

    def __init__(
        self, output: str | os.PathLike, *, num_points: int, seed: int, shard: tuple[int, int], source: str
    ) -> None:
        self.output = Path(output)
        self.path = journal_path(output)
        self.num_points = num_points
        self.seed = seed
        self.shard = shard
        self.source = source
        if not self.path.exists() and self.output.exists():
            raise FileExistsError(
                f"{self.output} exists but has no journal {self.path.name}: it was not written by "
                "this tool (or its journal was removed); choose another --output instead of overwriting it"
            )
        self.created = not self.path.exists()
        # "a+b": created if missing, never truncated by opening; reads from the start.
        fh = open(self.path, "a+b")  # noqa: SIM115  (kept open for the journal's lifetime)
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # Not ours to remove even if we created it: the process holding the lock uses it.
            fh.close()
            raise OutputInUseError(
                f"{self.output} is being annotated by another process (lock on {self.path})"
            ) from None
        self._fh: IO[bytes] | None = fh

    @property
    def closed(self) -> bool:
        return self._fh is None

    def header(self) -> dict[str, Any]:
        """The first line of a new journal."""
        return {
            "op": "header",
            "format": JOURNAL_FORMAT,
            "num_points": self.num_points,
            "seed": self.seed,
            "version": SAMPLING_VERSION,
            "shard": list(self.shard),
            "input": self.source,
            "time": time.time(),
        }

    def line_error(self, n: int, message: str) -> CocoFormatError:
        """The error for line ``n`` (1-based) of this journal."""
        return CocoFormatError(f"line {n}: {message} (corrupted journal)", source=str(self.path))

    def read(self) -> Recorded:
        """Every complete line parsed and validated, the header checked; the file is not changed.

        Raises:
            CocoFormatError: a line is not JSON or not an event of this tool (see :mod:`.events`).
            ValueError: the header's N, seed or shard is not this session's.
        """
        assert self._fh is not None
        self._fh.seek(0)
        raw = self._fh.read()
        # A crash while a line was being written leaves it without its newline: that change was
        # never acknowledged. It is cut off (by :meth:`repair`) only once the rest has been
        # validated and replayed, so that a start refused for any reason leaves the journal as it was.
        cut = raw.rfind(b"\n") + 1
        lines: list[tuple[int, Any]] = []
        for n, line in enumerate(raw[:cut].splitlines(), 1):
            try:
                lines.append((n, orjson.loads(line)))
            except orjson.JSONDecodeError:
                raise CocoFormatError(
                    f"line {n} is not valid JSON (corrupted journal)", source=str(self.path)
                ) from None
        if lines:
            self._check_header(lines[0][1])
        events = []
        for n, ev in lines[1:]:
            problem = event_problem(ev, self.num_points)
            if problem is not None:
                raise self.line_error(n, problem)
            events.append((n, ev))
        return Recorded(has_header=bool(lines), events=events, complete=cut, torn=raw[cut:], empty=not raw)

    def _check_header(self, header: Any) -> None:
        if (
            not isinstance(header, dict)
            or header.get("op") != "header"
            or header.get("format") != JOURNAL_FORMAT
        ):
            raise CocoFormatError("first line is not a journal header of this tool", source=str(self.path))
        for key, mine in (("num_points", self.num_points), ("seed", self.seed), ("shard", list(self.shard))):
            theirs = header.get(key)
            well_formed = (
                isinstance(theirs, list) and len(theirs) == 2 and all(is_integer(v) for v in theirs)
                if key == "shard"
                else is_integer(theirs)
            )
            if not well_formed:
                raise self.line_error(1, f"'{key}' of the header is malformed: {theirs!r}")
            if theirs != mine:
                if key == "shard":
                    theirs, mine = f"{theirs[0] + 1}/{theirs[1]}", f"{mine[0] + 1}/{mine[1]}"
                raise ValueError(
                    f"{self.output} was started with {_OPTIONS[key]} {theirs}, not {mine}: resume with "
                    "the same value, or choose another --output"
                )

    def repair(self, recorded: Recorded, describe_lost: Callable[[TornLine], str]) -> None:
        """After the replay of ``recorded``: cut off its torn last line and write a missing header.

        ``describe_lost`` says, from the replayed state, what a torn event was (for the warning).
        """
        assert self._fh is not None
        if recorded.empty:
            self.append(self.header())
            _fsync_dir(self.path.parent)
            logger.info("started a new journal %s", self.path)
            return
        if recorded.torn:
            lost = (
                describe_lost(TornLine.parse(recorded.torn))
                if recorded.has_header
                else "it was the journal's header; no answer was lost"
            )
            logger.warning(
                "%s: discarding a torn last line (%d bytes) left by a crash: %s",
                self.path,
                len(recorded.torn),
                lost,
            )
            self._fh.truncate(recorded.complete)
            os.fsync(self._fh.fileno())
        if not recorded.has_header:  # created but the header never (completely) reached the disk
            self.append(self.header())

    def append(self, event: dict[str, Any]) -> None:
        """One write of one whole line, then fsync: the event is on disk before it is acknowledged."""
        assert self._fh is not None
        self._fh.write(orjson.dumps(event) + b"\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Release the journal and its lock."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def abandon(self) -> None:
        """A failed start: release the lock and remove the files this start created.

        The output cannot predate a journal this start created (refused on opening), so it is
        this start's too.
        """
        self.close()
        if self.created:
            for path in (self.path, self.output):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def _fsync_dir(path: Path) -> None:
    # Makes a newly created file's directory entry durable (POSIX); best effort elsewhere.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
