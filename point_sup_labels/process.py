"""Process-level tuning shared by the command-line tools and the simulator: the garbage collector,
malloc, forked workers that die with their parent, and stop signals turned into a clean exit."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import multiprocessing
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the pool module is imported only where a pool is made
    import multiprocessing.pool

__all__ = [
    "die_with_parent",
    "exit_on_termination",
    "forking_workers",
    "gc_paused",
    "init_worker",
    "keep_freed_memory",
    "make_worker_pool",
    "raise_if_stop_requested",
]


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for the block (restored on exit).

    A loaded COCO file is millions of container objects; every collection triggered by the many
    small objects created while it is processed would traverse them all (several times the work of
    the processing itself), and, in forked workers, would also write to every object header and so
    copy the parent's memory page by page. Parsed JSON holds no reference cycles.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


_TERMINATION = ("SIGTERM", "SIGHUP")


@contextlib.contextmanager
def forking_workers() -> Iterator[None]:
    """Fork worker processes inside this block; they must call :func:`die_with_parent` first.

    SIGTERM and SIGHUP are held back (blocked, not lost) in this thread for the block, and so in
    every process and thread forked or started in it. A forked child inherits the parent's Python
    handlers (:func:`exit_on_termination`'s), and a signal arriving between ``fork()`` and the
    interpreter's after-fork reset is discarded: a worker told to stop at that moment (as
    ``Pool.terminate`` does right after a failed start) would wait forever. Blocked, the signal
    waits for :func:`die_with_parent`, which restores the default action first.
    """
    import signal

    held = {getattr(signal, name) for name in _TERMINATION}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def die_with_parent(parent_pid: int) -> bool:
    """In a worker forked inside :func:`forking_workers`: die on SIGTERM/SIGHUP (the default action,
    not an inherited handler) and be killed (SIGKILL) when the parent process dies, whatever kills it.

    The death signal is Linux's ``PR_SET_PDEATHSIG``; where the parent died before it was set, exit
    at once. Returns False where that call is unavailable (not Linux): the worker then relies on the
    end of its pipe.
    """
    import ctypes
    import os
    import signal

    held = {getattr(signal, name) for name in _TERMINATION}
    for signum in held:
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, held)  # a stop request held back by the fork: now
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    if prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False
    if os.getppid() != parent_pid:  # the parent is already gone: nobody would read our results
        os._exit(1)
    return True


_stop_requests: list[int] = []  # signals received inside exit_on_termination, in order


@contextlib.contextmanager
def exit_on_termination() -> Iterator[None]:
    """Turn SIGTERM (and SIGHUP) into ``SystemExit`` for the block, so that a scheduler's kill runs
    the cleanup of ``with`` and ``finally`` (workers stopped, staged files removed) like Ctrl-C's
    ``KeyboardInterrupt`` does. The previous handlers are restored afterwards; only in the main
    thread (signal handlers can only be set there), elsewhere the block runs unchanged.

    Python runs a handler at the next bytecode of the main thread, which may be inside a ``__del__``
    or a callback whose exceptions the interpreter ignores: the ``SystemExit`` is then lost. So the
    request is also recorded: :func:`raise_if_stop_requested` (call it before a step that must not
    happen after a stop, such as committing outputs) and the end of the block raise it again. The
    interpreter's report of such a lost ``SystemExit`` ("Exception ignored in ...", a traceback on
    stderr that would read as a crash) is left out; every other unraisable exception is reported as
    before.
    """
    import signal
    import sys
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        _stop_requests.append(signum)
        raise SystemExit(128 + signum)

    hook = sys.unraisablehook

    def quiet_lost_stop(unraisable) -> None:
        value = unraisable.exc_value
        stop_exit = isinstance(value, SystemExit) and value.code in {128 + s for s in _stop_requests}
        if not stop_exit:
            hook(unraisable)

    previous = {s: signal.signal(s, stop) for s in (getattr(signal, name) for name in _TERMINATION)}
    sys.unraisablehook = quiet_lost_stop
    _stop_requests.clear()
    try:
        yield
        raise_if_stop_requested()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sys.unraisablehook = hook


def raise_if_stop_requested() -> None:
    """``SystemExit(128 + signal)`` if :func:`exit_on_termination` caught a stop request whose own
    ``SystemExit`` was swallowed; nothing otherwise."""
    if _stop_requests:
        raise SystemExit(128 + _stop_requests[0])


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Let glibc's malloc reuse freed memory in this process instead of giving it back at once.

    The simulator allocates and frees the same large temporary arrays for every chunk. By default
    glibc serves each allocation above 128 KiB with a fresh ``mmap`` and unmaps it on free, so every
    chunk pays again for the page faults that zero-fill its memory (what that cost, measured:
    ``docs/labels_implementation.md``). With higher mmap and trim thresholds, freed blocks stay in
    the heap for the next chunk; the process keeps about its peak working set. Called in the
    worker processes of :func:`make_worker_pool` and of the sharded simulator (the main process
    allocates little per chunk). Returns False where libc has no ``mallopt`` (not glibc).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20) & mallopt(_M_TRIM_THRESHOLD, 256 << 20))


def make_worker_pool(workers: int) -> multiprocessing.pool.Pool:
    """A pool of ``workers`` forked processes (for
    :func:`point_sup_labels.simulate.simulate_point_annotations`).

    Fork is used (the workers need only the simulator's functions; tasks carry plain arrays); each
    worker calls :func:`keep_freed_memory` and dies with the main process, however that ends. Use
    it as a context manager, and create it before loading a large dataset.
    """
    with forking_workers():
        return multiprocessing.get_context("fork").Pool(
            workers, initializer=init_worker, initargs=(os.getpid(),)
        )


def init_worker(parent_pid: int) -> None:
    """What every forked simulation worker does first: die with ``parent_pid`` (also under its
    SIGKILL) and keep freed memory (:func:`keep_freed_memory`)."""
    die_with_parent(parent_pid)
    keep_freed_memory()
