"""Deprecated: this module was split by concept, and its names now live in

* :mod:`.dataset`: the in-memory form (``Dataset``, ``ImageRecord``, ``BoxObject``, ``Options``,
  ``FormatError``);
* :mod:`.rules`: the pixel convention, conversions and shared checks;
* :mod:`.coco`: the COCO P_N side (``read_coco``, ``coco_dict``, ``write_coco``);
* :mod:`.outputs`: writing outputs (``check_outputs``, ``write_files``).

Importing a name from here still works, with a :class:`DeprecationWarning`, until the next release.
"""

from __future__ import annotations

from .._deprecation import moved_names
from . import coco, dataset, outputs, rules

__getattr__ = moved_names(
    __name__,
    {name: module.__name__ for module in (dataset, rules, coco, outputs) for name in module.__all__},
)
