"""P_N simulation of a COCO JSON file with the parsing split across worker processes.

:func:`~point_sup_labels.simulate.simulate_point_annotations` works on a dataset already loaded in
the main process, whose parsing, checking and reading are serial. Here the text of the
``annotations`` array is cut at element boundaries into one byte range (*shard*) per worker; each
worker reads, parses, checks, labels and serializes its own shard, and keeps it between these
steps. The main process parses only the rest of the file (``images``, ``categories``, ...), draws
the label noise (which needs every label of the dataset) and joins the serialized shards. The
output is byte-identical to the whole-file path's (same per-annotation random streams, same
serializer, same key order, the same kinds of supervision drawn per annotation or image id).

A cut is guessed from the text (``},{"id":``) and verified by the parsers themselves: the head
before the array must parse as an object whose last key is ``annotations``, and each shard as an
array, so a cut inside a string or a nested array cannot go unnoticed (the argument:
``docs/labels_implementation.md``). Whenever anything does not fit (a piece that does not parse,
any problem in the data, duplicate annotation ids across shards, an input that is not a regular
file), :class:`NotShardableError` is raised and the caller takes the whole-file path, which
reports problems with its usual messages naming the annotation.
"""

from __future__ import annotations

import contextlib
import gc
import mmap
import multiprocessing
import os
import re
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from operator import itemgetter
from typing import Any

import numpy as np
import orjson

from .coco_format import (
    CocoFormatError,
    CocoInstances,
    check_unique_top_level_keys,
    dumps_json,
    validate_annotations,
    validate_coco_instances,
)
from .mixed_supervision import apply_supervision
from .point_file import set_point_fields
from .process import die_with_parent, forking_workers, keep_freed_memory
from .simulate import LabelledPoints, SimulationOptions, finish, label_annotations
from .simulation_results import PointSamples, SimulationStats

__all__ = [
    "MIN_SHARD_BYTES",
    "NotShardableError",
    "ShardLayout",
    "ShardWorkers",
    "ShardedSimulation",
    "plan_shards",
]

MIN_SHARD_BYTES = 1 << 20  # smaller files are not worth cutting
_ANNOTATIONS = b'"annotations"'
_ANNOTATIONS_VALUE = re.compile(rb'"annotations"\s*:\s*\[\s*')
_ELEMENT_GAP = re.compile(rb"\}\s*,\s*\{")
_FIRST_KEY = re.compile(rb'\{\s*("[^"\\]*")\s*:')  # '{"id":' (a key with escapes is not used)
_LAST_PREFIX = b'{"annotations":['


class NotShardableError(Exception):
    """The input does not fit the sharded path; the message says why (take the whole-file path)."""


class ShardLayout:
    """Where the ``annotations`` array of a COCO JSON text is cut.

    Attributes:
        head_end: byte offset just after the ``[`` (and any whitespace) opening the array.
        pieces: one ``(start, stop)`` byte range per shard. Each holds whole array elements
            ``{...},...,{...}``; the separators between shards are left out, and the last
            piece runs to the end of the text (closing bracket and following keys included).
    """

    def __init__(self, head_end: int, pieces: list[tuple[int, int]]) -> None:
        self.head_end = head_end
        self.pieces = pieces

    def __repr__(self) -> str:
        return f"ShardLayout(head_end={self.head_end}, pieces={self.pieces})"


def plan_shards(text: bytes | mmap.mmap, num_shards: int, min_shard_bytes: int | None = None) -> ShardLayout:
    """Cut the ``annotations`` array of ``text`` into up to ``num_shards`` pieces of similar size.

    Pieces are at least about ``min_shard_bytes`` long (default :data:`MIN_SHARD_BYTES`; fewer
    pieces for small files). The cuts are guesses, verified when the pieces are parsed (see the
    module docstring).

    Raises:
        NotShardableError: ``"annotations"`` does not occur exactly once, is not followed by ``: [``, or the
            array is empty.
    """
    key = text.find(_ANNOTATIONS)
    if key < 0 or text.find(_ANNOTATIONS, key + 1) >= 0:
        raise NotShardableError('the name "annotations" does not occur exactly once in the file')
    m = _ANNOTATIONS_VALUE.match(text, key)
    if m is None:
        raise NotShardableError('"annotations" is not followed by an array')
    head_end = m.end()
    if text[head_end : head_end + 1] != b"{":
        raise NotShardableError("the annotations array is empty or does not start with an object")
    size = len(text) - head_end
    if min_shard_bytes is None:
        min_shard_bytes = MIN_SHARD_BYTES
    n = max(1, min(num_shards, size // max(min_shard_bytes, 1)))
    # Serializers write every annotation's keys in the same order: a gap followed by the first
    # element's first key (e.g. '},{"id":') is almost surely between two annotations, whereas a
    # bare '},{' also occurs between objects nested in an annotation.
    first_key = _FIRST_KEY.match(text, head_end)
    gaps = [_ELEMENT_GAP]
    if first_key is not None:
        key = re.escape(first_key.group(1))
        gaps.insert(0, re.compile(_ELEMENT_GAP.pattern + rb"(?=\s*" + key + rb"\s*:)"))
    pieces, start = [], head_end
    for i in range(1, n):
        target = max(head_end + i * size // n, start)
        gap = next(filter(None, (g.search(text, target) for g in gaps)), None)
        if gap is None:
            break
        pieces.append((start, gap.start() + 1))
        start = gap.end() - 1
    pieces.append((start, len(text)))
    return ShardLayout(head_end, pieces)


# --------------------------------------------------------------------------------------------
# Worker side: one shard per process, kept between requests
# --------------------------------------------------------------------------------------------


class _Shard:
    """The annotations of one shard and their simulated points (lives in a worker process)."""

    def __init__(self) -> None:
        self.anns: list[Any] = []
        self.images: dict[int, dict[str, int]] = {}
        self.coords: list[np.ndarray] = []  # per version, (A_i, N, 2)
        self.has = np.zeros(0, dtype=bool)
        self.supervision: np.ndarray | None = None  # None: every annotation gets points
        self.text = b""  # serialized, waiting for write()

    def parse(self, path: str, start: int, stop: int, last: bool) -> tuple[int, dict[str, Any] | None]:
        """Read and parse bytes ``start:stop`` of ``path``; returns (annotations, tail keys)."""
        prefix, suffix = (_LAST_PREFIX, b"") if last else (b"[", b"]")
        n = stop - start
        buf = bytearray(len(prefix) + n + len(suffix))  # one buffer: no copy of the text to wrap it
        buf[: len(prefix)] = prefix
        with open(path, "rb") as f, memoryview(buf) as view:
            f.seek(start)
            if f.readinto(view[len(prefix) : len(prefix) + n]) != n:
                raise NotShardableError("the file changed while it was read")
        buf[len(prefix) + n :] = suffix
        try:
            value = orjson.loads(buf)
        except orjson.JSONDecodeError as e:
            raise NotShardableError(f"a shard does not parse on its own ({e})") from None
        tail = None
        if last:
            if not (isinstance(value, dict) and next(iter(value), None) == "annotations"):
                raise NotShardableError("the end of the file is not the rest of the top-level object")
            try:
                check_unique_top_level_keys(buf, value, path)
            except CocoFormatError:
                raise NotShardableError("a top-level key occurs twice") from None
            self.anns, tail = value.pop("annotations"), value
        else:
            self.anns = value
        del buf
        return len(self.anns), tail

    def validate(self, images: list[tuple[int, int, int]], category_ids: list[int]) -> np.ndarray:
        """The annotation checks of ``validate_coco_instances``; returns the (A_i,) uint64 ids."""
        self.images = {iid: {"height": h, "width": w} for iid, h, w in images}
        try:
            validate_annotations(self.anns, self.images, dict.fromkeys(category_ids))
        except CocoFormatError:
            raise NotShardableError(
                "an annotation fails the checks"
            ) from None  # named by the whole-file path
        return np.fromiter(map(itemgetter("id"), self.anns), np.uint64, len(self.anns))

    def simulate(
        self,
        options: SimulationOptions,
        drop_segmentation: bool,
        chunk_size: int,
        progress: Callable[[int], None],
    ) -> LabelledPoints:
        """Steps 1-3 of the simulator's pipeline on this shard; the points' coordinates stay here
        for :meth:`serialize`, the rest goes back to the main process for step 4."""
        inst = CocoInstances(data={"annotations": self.anns}, source="", images=self.images, categories={})
        try:
            points = label_annotations(
                inst, options, chunk_size=chunk_size, drop_segmentation=drop_segmentation, progress=progress
            )
        except CocoFormatError:
            raise NotShardableError("bad polygon coordinates or RLE data") from None
        self.has = points.has_points
        self.coords = [v.coords for v in points.versions]
        self.supervision = points.supervision if options.mixed else None
        return points.without_coords()

    def serialize(self, k: int, labels: np.ndarray, keep: bool) -> bytes | int:
        """The JSON text of this shard's annotations with version ``k``'s points, brackets removed.

        With ``keep``, the text stays here for :meth:`write` and only its length is returned.
        """
        set_point_fields(self.anns, PointSamples(coords=self.coords[k], labels=labels, has_points=self.has))
        apply_supervision(self.anns, self.supervision)
        text = dumps_json(self.anns)[1:-1]
        if not keep:
            return text
        self.text = text
        return len(text)

    def write(self, path: str, offset: int, separator: bytes) -> None:
        """Write ``separator`` and the kept text at ``offset`` of the (existing) file ``path``."""
        text, self.text = self.text, b""
        fd = os.open(path, os.O_WRONLY)
        try:
            _pwrite_all(fd, separator, offset)
            _pwrite_all(fd, text, offset + len(separator))
        finally:
            os.close(fd)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _serve(conn: Connection, inherited: Sequence[Connection], parent_pid: int) -> None:
    """A worker's loop: run the requests ``(method, args)`` of :class:`_Shard` until ``None``.

    ``inherited``: the main process's ends of this and the earlier workers' pipes, which the fork
    copied here. They are closed first: while any process holds the main end of this pipe, the
    worker would never see it close, and so would outlive a main process that was killed.
    """
    for other in inherited:
        other.close()
    die_with_parent(parent_pid)
    gc.disable()  # parsed JSON holds no cycles; collections would only traverse millions of objects
    keep_freed_memory()
    shard = _Shard()
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        name, args = request
        try:
            if name == "simulate":
                result = shard.simulate(*args, progress=lambda n: conn.send(("progress", n)))
            else:
                result = getattr(shard, name)(*args)
            conn.send(("ok", result))
        except NotShardableError as e:
            conn.send(("unfit", str(e)))
        except Exception:
            conn.send(("error", traceback.format_exc()))


class ShardWorkers:
    """``n`` forked worker processes, each holding one shard of a dataset between requests.

    Like :func:`~point_sup_labels.process.make_worker_pool`, create it before loading
    anything large (workers forked later would share, then copy, the parent's pages). Use it as a
    context manager: leaving it stops the workers. A worker dies with the main process however
    that ends (SIGKILL included): it holds no end of the main process's pipes, and Linux kills it
    when its parent dies (:func:`~point_sup_labels.process.die_with_parent`).
    """

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"need at least one worker, got {n}")
        ctx = multiprocessing.get_context("fork")
        self._conns: list[Connection] = []
        self._procs = []
        with forking_workers():
            for _ in range(n):
                parent, child = ctx.Pipe()
                inherited = [*self._conns, parent]
                proc = ctx.Process(target=_serve, args=(child, inherited, os.getpid()), daemon=True)
                proc.start()
                child.close()
                self._conns.append(parent)
                self._procs.append(proc)
        self._busy = 0
        self._closed = False

    def __len__(self) -> int:
        return len(self._conns)

    def send(self, name: str, args_per_shard: Sequence[tuple]) -> None:
        """Start ``name(*args)`` on the first ``len(args_per_shard)`` workers (one shard each)."""
        if self._busy:
            raise RuntimeError("the previous request was not collected")
        for conn, args in zip(self._conns[: len(args_per_shard)], args_per_shard, strict=True):
            conn.send((name, tuple(args)))
        self._busy = len(args_per_shard)

    def collect(self, progress: Callable[[int], None] | None = None) -> list[Any]:
        """Wait for every worker of the last :meth:`send`; their results in shard order.

        Raises:
            NotShardableError: a worker found its shard unfit (the first such shard's reason).
            RuntimeError: a worker failed (its traceback) or died.
        """
        conns = self._conns[: self._busy]
        results: list[Any] = [None] * len(conns)
        pending = {conn: i for i, conn in enumerate(conns)}
        unfit: dict[int, str] = {}
        errors: list[str] = []
        while pending:
            for conn in wait(list(pending)):
                try:
                    kind, value = conn.recv()
                except EOFError:
                    self._busy = 0
                    raise RuntimeError("a simulation worker process died") from None
                if kind == "progress":
                    if progress is not None:
                        progress(value)
                    continue
                i = pending.pop(conn)
                if kind == "ok":
                    results[i] = value
                elif kind == "unfit":
                    unfit[i] = value
                else:
                    errors.append(value)
        self._busy = 0
        if errors:
            raise RuntimeError("a simulation worker failed:\n" + errors[0])
        if unfit:
            i = min(unfit)
            raise NotShardableError(f"shard {i}: {unfit[i]}")
        return results

    def request(
        self, name: str, args_per_shard: Sequence[tuple], progress: Callable[[int], None] | None = None
    ) -> list[Any]:
        """:meth:`send` then :meth:`collect`."""
        self.send(name, args_per_shard)
        return self.collect(progress)

    def close(self, wait: bool = True) -> None:
        """Stop the workers (what they hold is freed). Without ``wait``, do not wait for them to
        exit: they have been told to, and die with this process in any case (a command-line tool
        that is about to exit saves the time the kernel takes to free their memory)."""
        if self._closed:
            return
        self._closed = True
        for conn, proc in zip(self._conns, self._procs, strict=True):
            if proc.is_alive():
                with contextlib.suppress(OSError):
                    conn.send(None)
        for conn, proc in zip(self._conns, self._procs, strict=True):
            if wait:
                proc.join(timeout=5)
                if proc.is_alive():
                    proc.terminate()
                    proc.join()
            conn.close()

    def __enter__(self) -> ShardWorkers:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is not None:  # a request may be in flight: do not wait for it
            for proc in self._procs:
                proc.terminate()
        self.close()


# --------------------------------------------------------------------------------------------
# Main side
# --------------------------------------------------------------------------------------------


class ShardedSimulation:
    """A COCO instances file parsed and checked in shards, one per worker (see the module doc).

    Usage, as ``tools/prepare_point_annotations.py`` does::

        with ShardWorkers(2) as workers:           # before anything large is loaded
            try:
                sim = ShardedSimulation(path, workers)
                stats = sim.simulate(num_points=10, seed=0)
                data = sim.dumps(0)                  # the output file's bytes, version 0
            except NotShardableError:
                ...                                  # whole-file path

    Checks are those of :func:`~point_sup_labels.coco_format.load_coco_instances`; results those of
    :func:`~point_sup_labels.simulate.simulate_point_annotations` followed by
    :func:`~point_sup_labels.point_file.dumps_point_annotations`, byte for byte.

    Raises:
        NotShardableError: (in every step) the whole-file path is to be taken instead.
    """

    def __init__(
        self, path: str | os.PathLike, workers: ShardWorkers, *, min_shard_bytes: int | None = None
    ) -> None:
        if not hasattr(orjson, "Fragment"):
            raise NotShardableError("orjson < 3.9 (no orjson.Fragment to join serialized shards)")
        self.source = os.fspath(path)
        self._workers = workers
        if not os.path.isfile(path):
            raise NotShardableError("not a regular file")
        try:  # mapped, not read: only the pages that planning touches are loaded here
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as text:
                layout = plan_shards(text, len(workers), min_shard_bytes)
                head_text = text[: layout.head_end]
        except (OSError, ValueError) as e:  # ValueError: an empty file cannot be mapped
            raise NotShardableError(f"cannot map the file ({e})") from None
        last = len(layout.pieces) - 1
        workers.send("parse", [(self.source, a, b, i == last) for i, (a, b) in enumerate(layout.pieces)])
        try:  # while the workers parse their shards
            head_object = head_text + b"]}"  # the head closed, its annotations array empty
            head = orjson.loads(head_object)
            check_unique_top_level_keys(head_object, head, self.source)
        except orjson.JSONDecodeError:
            head = None
        except CocoFormatError:  # the whole-file path reports it
            head = None
        parsed = workers.collect()
        if not (isinstance(head, dict) and list(head)[-1:] == ["annotations"] and head["annotations"] == []):
            raise NotShardableError("the text before the annotations array is not the start of a COCO object")
        tail = parsed[-1][1]
        if tail.keys() & head.keys():
            raise NotShardableError("a top-level key occurs twice")
        self._counts = [n for n, _ in parsed]
        self._head, self._tail = head, tail
        try:  # images and categories (annotations are checked by the workers)
            inst = validate_coco_instances({**head, **tail}, source=self.source)
        except CocoFormatError as e:
            raise NotShardableError(str(e)) from None
        self.num_images, self.num_categories = len(inst.images), len(inst.categories)
        images = [(iid, img["height"], img["width"]) for iid, img in inst.images.items()]
        ids = np.concatenate(workers.request("validate", [(images, list(inst.categories))] * len(parsed)))
        ids.sort()
        if (ids[1:] == ids[:-1]).any():
            raise NotShardableError("duplicate annotation ids")
        self._labels: list[list[np.ndarray]] = []

    @property
    def num_annotations(self) -> int:
        return sum(self._counts)

    def simulate(
        self,
        *,
        drop_segmentation: bool = True,
        chunk_size: int = 2048,
        progress: Callable[[int], None] | None = None,
        **fields: Any,
    ) -> SimulationStats:
        """Simulate every version; the run's counts.

        ``fields``: those of :class:`~point_sup_labels.simulate.SimulationOptions` as
        keywords (``num_points``, ``seed``, ``versions``, ``noise_rate``, ...), the others as in
        :func:`~point_sup_labels.simulate.simulate_point_annotations`.
        """
        options = SimulationOptions(**fields)
        args = (options, drop_segmentation, chunk_size)
        shards = self._workers.request("simulate", [args] * len(self._counts), progress)
        points = LabelledPoints.concatenate(shards, options)
        stats = finish(points, options, num_images=self.num_images)
        cuts = np.cumsum(self._counts)[:-1]
        self._labels = [np.split(v.labels, cuts) for v in points.versions]
        return stats

    def _around_annotations(self) -> tuple[bytes, bytes]:
        """The output's JSON text before and after the annotations' elements."""
        top = dict(self._head)
        # A NUL byte never occurs in orjson's output (control characters are escaped): a safe mark.
        top["annotations"] = orjson.Fragment(b"[\x00]")
        top.update(self._tail)
        before, after = dumps_json(top).split(b"\x00")
        return before, after

    def dumps(self, k: int) -> bytes:
        """The output file of version ``k`` (position in ``versions``) as compact JSON bytes."""
        pieces = self._workers.request("serialize", [(k, lab, False) for lab in self._labels[k]])
        before, after = self._around_annotations()
        return before + b",".join(p for p in pieces if p) + after

    def write(self, k: int, path: str | os.PathLike, fd: int) -> None:
        """Write the output file of version ``k`` into the empty file ``path``, open as ``fd``.

        The same bytes as :meth:`dumps`, but each worker writes its own shard's text in place
        (no copy through the main process); use with
        :meth:`point_sup_labels.file_io.StagedFiles.write_with`.
        """
        sizes = self._workers.request("serialize", [(k, lab, True) for lab in self._labels[k]])
        before, after = self._around_annotations()
        offsets, separators, offset = [], [], len(before)
        for size in sizes:
            separators.append(b"," if offset > len(before) and size else b"")
            offsets.append(offset)
            offset += len(separators[-1]) + size
        _pwrite_all(fd, before, 0)
        _pwrite_all(fd, after, offset)  # beyond the workers' ranges: the file has its final size
        args = [(os.fspath(path), o, sep) for o, sep in zip(offsets, separators, strict=True)]
        self._workers.request("write", args)
