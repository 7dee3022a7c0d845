"""point_sup_labels: making P_N point labels (Cheng, Parkhi, Kirillov, CVPR 2022), apart from training.

A P_N annotation is an object's box plus N points sampled uniformly inside it, each labelled
object or background. This package makes and checks such labels; :mod:`point_sup` trains from
them on Detectron2. It imports neither torch nor Detectron2, so the conversion and annotation tools
start in a fraction of a second.

The Python API, for code and notebooks (each name is imported on first use, so that
``import point_sup_labels`` itself costs nothing)::

    p10, stats = point_sup_labels.simulate_coco(coco, num_points=10, seed=0)  # a new dict
    print(stats)                                   # images, objects, points, annotation time
    point_sup_labels.write_point_file(p10, "p10.json")  # the CLI's bytes for the same options

* :func:`simulate_coco`: P_N of an in-memory COCO dataset (the options of
  ``tools/prepare_point_annotations.py``), returning a new dataset and a :class:`SimulationStats`;
* :func:`read_point_file`, :func:`write_point_file`: a P_N file read (validated) and written;
* :class:`CocoFormatError`: what every reader and validator raises, naming the file and record.

Modules, one concept each:

* :mod:`.sampling`: §3.1, the points sampled in a box (pixel-index convention, random streams);
* :mod:`.polygon_labels`, :mod:`.rle_labels`: a point's label read exactly from a polygon or RLE
  mask, as pycocotools rasterizes it;
* :mod:`.label_noise`: §3.3.1, flipped labels (random or near the boundary);
* :mod:`.mixed_supervision`: which objects keep a mask, get points, or keep only a box;
* :mod:`.time_model`: the paper's annotation-time model (7 s per box, 0.9 s per point, 79.2 s per
  polygon);
* :mod:`.simulate`: the simulator's one pipeline (chunks read by :mod:`.chunks`, labelled, joined,
  noise added), its results in :mod:`.simulation_results`; :mod:`.sharded`: the same with the file
  parsed in shards by the workers;
* :mod:`.coco_format`: the COCO-format reader and validator; :mod:`.point_fields`: the P_N
  fields' rules; :mod:`.point_file`: P_N files made, read and written (the API above);
* :mod:`.budget`: choosing images to label for a given annotation time;
* :mod:`.annotation`: the browser tool with which people label points;
* :mod:`.formats`: boxes and points from and back to CVAT, Label Studio and labelme;
* :mod:`.file_io`, :mod:`.process`: atomic outputs, worker processes and stop signals.

How the simulator is made exact and fast: ``docs/labels_implementation.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and editors; at run time, on first use (__getattr__)
    from .coco_format import CocoFormatError
    from .point_file import read_point_file, simulate_coco, write_point_file
    from .simulation_results import SimulationStats

__version__ = "0.1.0"

# The API's names and the modules that define them.
_API = {
    "CocoFormatError": "point_sup_labels.coco_format",
    "SimulationStats": "point_sup_labels.simulation_results",
    "read_point_file": "point_sup_labels.point_file",
    "simulate_coco": "point_sup_labels.point_file",
    "write_point_file": "point_sup_labels.point_file",
}

__all__ = [
    "CocoFormatError",
    "SimulationStats",
    "__version__",
    "read_point_file",
    "simulate_coco",
    "write_point_file",
]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # later reads find it without this call
    return value


def __dir__() -> list[str]:
    """The API and the submodules imported so far (not this module's own helpers)."""
    loaded = [
        name for name, value in globals().items() if getattr(value, "__name__", "").startswith(__name__ + ".")
    ]
    return sorted({*__all__, *loaded})
