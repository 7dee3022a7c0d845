"""Writing P_N annotation files: a dataset's COCO JSON with ``point_coords``/``point_labels`` set.

Each annotation gets the N points of one simulated version as ``point_coords`` (N ``[x, y]`` pixel
indices, see :mod:`point_sup_labels.sampling`) and ``point_labels`` (N of 0/1), empty lists where
the box has no area; every other key is kept as read.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import orjson

from .coco_format import CocoInstances, dumps_json, load_coco_instances
from .file_io import atomic_write_bytes
from .label_noise import NoiseMode
from .simulate import PointSamples, SimulationStats, apply_supervision, simulate_point_annotations

__all__ = [
    "apply_point_samples",
    "dumps_point_annotations",
    "set_point_fields",
    "write_point_annotation_file",
]


def apply_point_samples(instances: CocoInstances, samples: PointSamples) -> None:
    """Set ``point_coords``/``point_labels`` of every annotation of ``instances`` from ``samples``,
    as Python lists (for code that reads them back; the output files are written by
    :func:`dumps_point_annotations`). Annotations without points (zero-area boxes) get empty lists,
    as in the output files.
    """
    _set_rows(instances.annotations, samples.coords.tolist(), samples.labels.tolist(), samples)


def dumps_point_annotations(instances: CocoInstances, samples: PointSamples) -> bytes:
    """``instances.data`` with the points of ``samples``, serialized: the bytes of an output file.

    The same bytes as :func:`apply_point_samples` followed by :func:`dumps_json`, several times
    faster on large datasets: the points are serialized by orjson as two numpy arrays and cut into
    per-annotation JSON fragments (``orjson.Fragment``), instead of being built as millions of
    small Python lists and serialized one by one. The annotations' ``point_coords`` and
    ``point_labels`` are left holding those fragments (empty lists where there are no points); call
    :func:`apply_point_samples` for Python lists.
    """
    set_point_fields(instances.annotations, samples)
    return dumps_json(instances.data)


def set_point_fields(annotations: list[dict[str, Any]], samples: PointSamples) -> None:
    """Set ``point_coords``/``point_labels`` of each annotation, ready for :func:`dumps_json`.

    ``annotations[i]`` gets row ``i`` of ``samples`` as ``orjson.Fragment`` JSON text (empty lists
    where there are no points); with orjson < 3.9, as Python lists (:func:`apply_point_samples`).
    """
    if not hasattr(orjson, "Fragment"):  # orjson < 3.9
        _set_rows(annotations, samples.coords.tolist(), samples.labels.tolist(), samples)
        return
    coords = _json_rows(samples.coords, b"]],[[", b"]]\n[[")  # rows of (A, N, 2)
    labels = _json_rows(samples.labels, b"],[", b"]\n[")  # rows of (A, N)
    _set_rows(annotations, coords, labels, samples)


def _set_rows(
    annotations: list[dict[str, Any]], coords: list[Any], labels: list[Any], samples: PointSamples
) -> None:
    """Row i of ``coords``/``labels`` into annotation i; empty lists where it has no points."""
    for ann, c, lab, has in zip(annotations, coords, labels, samples.has_points.tolist(), strict=True):
        ann["point_coords"] = c if has else []
        ann["point_labels"] = lab if has else []


def _json_rows(a: np.ndarray, sep: bytes, cut: bytes) -> list[Any]:
    """The JSON text of each ``a[i]`` as an ``orjson.Fragment``.

    ``sep`` is what separates two rows in the JSON text of ``a`` and never occurs inside one (e.g.
    ``]],[[`` for (A, N, 2) integers: inside a row, points are separated by ``],[``); ``cut`` is
    ``sep`` with a newline (which compact JSON of numbers never holds) where the rows part.
    """
    if not len(a):
        return []
    text = orjson.dumps(np.ascontiguousarray(a), option=orjson.OPT_SERIALIZE_NUMPY)
    return list(map(orjson.Fragment, text[1:-1].replace(sep, cut).split(b"\n")))


def write_point_annotation_file(
    input_json: str | os.PathLike,
    output_json: str | os.PathLike,
    *,
    num_points: int = 10,
    seed: int = 0,
    version: int = 0,
    noise_rate: float = 0.0,
    noise_mode: NoiseMode = "random",
    keep_masks: bool = False,
    keep_masks_fraction: float = 0.0,
    box_only_fraction: float = 0.0,
    fraction_of: str = "objects",
) -> SimulationStats:
    """Simulate P_N for a COCO-format file and write the result atomically (library form of the CLI).

    ``keep_masks_fraction`` / ``box_only_fraction`` / ``fraction_of``: the CLI's mixed-supervision
    options (:func:`point_sup_labels.simulate.select_supervision`); at 0 the output is byte-identical
    to a file written without them.

    The arguments are the CLI's options for one version (see :func:`simulate_point_annotations`). For
    several versions at once or worker processes use ``tools/prepare_point_annotations.py``; this
    single-process form serves small datasets and code that builds datasets programmatically (e.g.
    :func:`point_sup.data.register_nuclei`, the miniature replication's ablations).
    """
    instances = load_coco_instances(input_json)
    samples, stats = simulate_point_annotations(
        instances,
        num_points=num_points,
        seed=seed,
        versions=(version,),
        noise_rate=noise_rate,
        noise_mode=noise_mode,
        drop_segmentation=not keep_masks,
        keep_masks_fraction=keep_masks_fraction,
        box_only_fraction=box_only_fraction,
        fraction_of=fraction_of,
    )
    if samples[0].supervision is None:
        atomic_write_bytes(output_json, dumps_point_annotations(instances, samples[0]))
    else:
        set_point_fields(instances.annotations, samples[0])
        apply_supervision(instances.annotations, samples[0].supervision)
        atomic_write_bytes(output_json, dumps_json(instances.data))
    return stats
