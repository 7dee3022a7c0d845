"""Old import paths kept for one release after a module was split: each moved name still
resolves from its old module, with a :class:`DeprecationWarning` that names its new home."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["moved_names"]


def moved_names(module: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` (PEP 562) for ``module``: ``homes`` maps each moved name to
    the module that now defines it.

    Called only for names the old module no longer defines, so its own names never warn; the
    warning points at the line that imports or reads the old path (``stacklevel=2``).
    """

    def getattr_moved(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warnings.warn(
            f"{module}.{name} has moved to {home}.{name}; the old path will be removed in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(home), name)

    return getattr_moved
