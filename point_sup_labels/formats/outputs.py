"""Writing a converter's outputs: checks that no output replaces an input, and every file written
all or none (:class:`point_sup_labels.file_io.StagedFiles`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..file_io import StagedFiles

__all__ = ["check_outputs", "write_files"]


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def check_outputs(outputs: Iterable[Path], inputs: Mapping[str, str | os.PathLike]) -> str | None:
    """Why ``outputs`` may not be written, or None: an output that is (also through a symbolic or
    hard link) one of ``inputs`` (``{what: path}``, e.g. ``{"INPUT": ..., "--reference": ...}``),
    or that lies inside an input folder (a labelme INPUT, whose files would be replaced, or read
    as labelme files the next time)."""
    outputs = list(outputs)
    for what, path in inputs.items():
        if os.path.isdir(path):
            root = os.path.realpath(path)
            for out in outputs:
                real = os.path.realpath(out)
                if real == root or real.startswith(os.path.join(root, "")):
                    return (
                        f"OUTPUT {out} lies inside the {what} folder {path}: refusing to write into an "
                        "input (choose another folder)"
                    )
            continue
        for out in outputs:
            if _same_file(path, out):
                return f"OUTPUT {out} is the {what} file {path}: refusing to overwrite an input"
    return None


def write_files(files: Mapping[Path, bytes]) -> None:
    """Write every file, all or none (:class:`point_sup_labels.file_io.StagedFiles`: each is
    staged beside its target and renamed into place only after all were written). Missing parent
    folders are created (and removed again if the write fails)."""
    created: list[Path] = []
    try:
        for parent in sorted({p.parent for p in files}, key=lambda p: len(p.parts)):
            missing = [q for q in (parent, *parent.parents) if not q.exists()]
            for q in reversed(missing):
                q.mkdir()
                created.append(q)
        with StagedFiles() as staged:
            for path, data in files.items():
                staged.write(path, data)
    except BaseException:
        for q in reversed(created):
            with contextlib.suppress(OSError):  # not empty: someone else's files
                q.rmdir()
        raise
