"""Small general-purpose helpers shared across point_sup (atomic file output, ...)."""

from .file_io import StagedFiles, atomic_open, atomic_write_bytes, atomic_write_text

__all__ = ["StagedFiles", "atomic_open", "atomic_write_bytes", "atomic_write_text"]
