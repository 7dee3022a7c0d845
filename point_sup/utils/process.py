"""Process-level tuning shared by the command-line tools and the simulator."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["gc_paused"]


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
