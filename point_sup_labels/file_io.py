"""Atomic file writes: a reader (or a crash) never sees a partially written file.

Every helper writes to a temporary file in the *same directory* as the target (so that the final
:func:`os.replace` is a rename within one filesystem, which POSIX makes atomic), flushes and
fsyncs it, gives it the permissions an ordinary ``open(path, "w")`` would have given, and only then
replaces the target. On any exception the temporary file is removed and the target is untouched.

A process killed outright (SIGKILL, power loss) cannot remove its temporary file. Temporary files
are therefore named ``.<target name>.<host>_<pid>_<random>.tmp``, and the next write of the same
target removes those of its host whose process no longer exists (:func:`remove_stale_temps`): a
killed run leaves its temporary files until the next run, which leaves only its own outputs.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

__all__ = [
    "StagedFiles",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "probe_writable",
    "remove_stale_temps",
]


def _default_mode(target: Path) -> int:
    """Permission bits for ``target``: kept if it exists, else 0o666 minus the process umask."""
    try:
        return os.stat(target).st_mode & 0o7777
    except FileNotFoundError:
        pass
    # os.umask can only be read by setting it; restore it immediately.
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname().split(".")[0]) or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temps(target: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of ``target`` left by processes of this host that no longer run.

    Only files named as this module names them (``.<name>.<host>_<pid>_<random>.tmp``) are
    considered; those of live processes, of other hosts (a shared filesystem) and every other file
    are left alone. Returns the files removed.
    """
    target = Path(target)
    pattern = re.compile(
        rf"^\.{re.escape(target.name)}\.(?P<host>[A-Za-z0-9]+)_(?P<pid>\d+)_[A-Za-z0-9_]+\.tmp$"
    )
    host, removed = _host(), []
    try:
        entries = os.listdir(target.parent)
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry)
        if match and match["host"] == host and not _alive(int(match["pid"])):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target.parent / entry)
                removed.append(target.parent / entry)
    return removed


def _backup(target: Path, names: list[Path]) -> Path | None:
    """A hard link to ``target`` under a fresh temporary name (appended to ``names`` before it
    exists), or None where links are unsupported."""
    remove_stale_temps(target)
    while True:
        tmp = _temp_name(target)
        names.append(tmp)
        try:
            os.link(target, tmp)
            return tmp
        except FileExistsError:
            names.pop()
        except OSError:
            names.pop()
            return None


def probe_writable(target: str | os.PathLike) -> None:
    """Create and remove a temporary sibling of ``target``, as a write of it would; OSError if that
    fails. Tells what ``os.access`` cannot (a read-only mount, ACLs, root on a 0555 folder); the
    probe is named like every temporary file here, so a kill in between leaves nothing that the
    next write would not remove."""
    names: list[Path] = []
    try:
        os.close(_create_temp(Path(target), names))
    finally:
        _unlink_all(names)


def _temp_name(target: Path) -> Path:
    """A fresh temporary name for ``target``: ``.<name>.<host>_<pid>_<random>.tmp`` beside it."""
    return target.parent / f".{target.name}.{_host()}_{os.getpid()}_{secrets.token_hex(6)}.tmp"


def _create_temp(target: Path, names: list[Path]) -> int:
    """Create a fresh, empty temporary sibling of ``target`` (mode 0600, like ``mkstemp``); returns
    a descriptor open for writing.

    Its path is appended to ``names`` *before* the file is created: an exception at any bytecode in
    between (Ctrl-C's KeyboardInterrupt, or the SystemExit of
    :func:`point_sup_labels.process.exit_on_termination`) would otherwise leave a file that no
    cleanup knows of.
    """
    remove_stale_temps(target)
    while True:
        tmp = _temp_name(target)
        names.append(tmp)
        try:
            return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:  # not ours: another name
            names.pop()


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    paths.clear()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on a clean exit it replaces ``path``.

    ``mode`` must be a write mode (``"w"``, ``"wb"``, ``"wt"``). If the ``with`` block raises, the
    temporary file is deleted, ``path`` keeps its previous content (or stays absent), and the
    exception propagates.
    """
    if "w" not in mode or any(c in mode for c in "ra+x"):
        raise ValueError(f"atomic_open needs a plain write mode ('w', 'wb', 'wt'), got {mode!r}")
    target = Path(path)
    names: list[Path] = []
    try:
        fd = _create_temp(target, names)
        (tmp,) = names
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode(target))
        os.replace(tmp, target)
    except BaseException:
        _unlink_all(names)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)


class StagedFiles:
    """Several output files that appear together, or not at all.

    Use as a context manager: :meth:`write` stages each file as a temporary sibling of its target;
    on a clean exit every staged file replaces its target (a sequence of atomic renames, done only
    after all contents were written successfully); if the block raises, every staged temporary
    file is deleted and no target is touched::

        with StagedFiles() as out:
            for k in range(n):
                out.write(f"points_v{k}.json", make_bytes(k))  # may raise: nothing is written
    """

    def __init__(self) -> None:
        self._targets: list[Path] = []
        self._temps: list[Path] = []  # one per target; a last extra one if staging it was interrupted

    def _stage(self, path: str | os.PathLike) -> tuple[Path, int]:
        target = Path(path)
        if target in self._targets:
            raise ValueError(f"{target} is staged twice")
        try:
            fd = _create_temp(target, self._temps)  # registered before it exists
            self._targets.append(target)
        except BaseException:  # a caller may go on staging others: no temp without its target
            _unlink_all(self._temps[len(self._targets) :])
            del self._temps[len(self._targets) :]
            raise
        return self._temps[-1], fd

    def write(self, path: str | os.PathLike, data: bytes) -> None:
        tmp, fd = self._stage(path)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode(self._targets[-1]))

    def write_with(self, path: str | os.PathLike, fill: Callable[[Path, int], None]) -> None:
        """Stage ``path`` with the content that ``fill(temp_path, fd)`` writes.

        ``fd`` is a descriptor of the empty temporary file, open for writing; ``fill`` may also
        have other processes write ``temp_path`` by name (e.g. at disjoint offsets). Afterwards
        the file is fsynced (whoever wrote its pages) and, like :meth:`write`, committed or
        discarded with the others.
        """
        tmp, fd = self._stage(path)
        try:
            fill(tmp, fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, _default_mode(self._targets[-1]))

    @property
    def targets(self) -> list[Path]:
        return list(self._targets)

    def discard(self) -> None:
        _unlink_all(self._temps)
        self._targets.clear()

    def commit(self) -> None:
        """Every staged file replaces its target, or, if one cannot, none does.

        The targets that exist are first hard-linked to temporary backups; if a rename fails, the
        targets already replaced get their previous content back (or are removed again) before the
        error propagates. Where hard links are not supported, a failed commit may leave the targets
        renamed before it replaced.
        """
        backup_names: list[Path] = []  # every backup link made (or about to be): removed at the end
        backups: dict[Path, Path] = {}
        done: list[Path] = []
        try:
            for target in self._targets:
                backup = _backup(target, backup_names) if target.is_file() else None
                if backup is not None:
                    backups[target] = backup
            for target, tmp in zip(self._targets, self._temps, strict=True):
                os.replace(tmp, target)
                done.append(target)
        except BaseException:
            for target in done:
                with contextlib.suppress(OSError):
                    if target in backups:
                        os.replace(backups.pop(target), target)
                    else:
                        os.unlink(target)
            raise
        finally:
            _unlink_all(backup_names)
            self.discard()  # leftovers only if a rename failed

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()
