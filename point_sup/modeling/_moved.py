"""The flat modules of point_sup.modeling before it had one package per model family, kept for one
release as aliases of their new homes: each re-exports its new module's public names and warns once,
on import, with a DeprecationWarning that names the new path."""

from __future__ import annotations

import importlib
import sys
import warnings

__all__ = ["alias"]


def alias(old: str, new: str, *extra: str) -> list[str]:
    """Make the module ``old`` (being imported) expose the public names of the module ``new`` and warn.

    Args:
        old: the deprecated module's name (its ``__name__``).
        new: the module it moved to.
        extra: names the old module exported that ``new`` holds without exporting them.

    Returns:
        The names exposed, for the old module's ``__all__``.
    """
    module = importlib.import_module(new)
    names = [*module.__all__, *extra]
    namespace = sys.modules[old].__dict__
    for name in names:
        namespace[name] = getattr(module, name)
    # stacklevel 3: the line that imports the old module (the import machinery's frames are skipped).
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release; import from {new} instead",
        DeprecationWarning,
        stacklevel=3,
    )
    return names
