"""P_N files: a COCO instances dataset with ``point_coords``/``point_labels`` set, made from its
masks by the simulator, read and written.

Each annotation gets the N points of one simulated version as ``point_coords`` (N ``[x, y]`` integer
pixel indices, column and row, see :mod:`point_sup_labels.sampling`) and ``point_labels`` (N of 1
object / 0 background), empty lists where the box has no area; every other key is kept as read.
With mixed supervision (:mod:`point_sup_labels.mixed_supervision`) the objects that keep a mask or
only a box have no point fields.

For code and notebooks: :func:`simulate_coco` (an in-memory dataset in, a new P_N dataset out),
:func:`read_point_file`, :func:`write_point_file`; :func:`write_point_annotation_file` for a file in
and out. They give the bytes of ``tools/prepare_point_annotations.py`` for the same options: every
P_N file is serialized by :func:`point_sup_labels.coco_format.dumps_json`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from .coco_format import (
    CocoInstances,
    dumps_json,
    load_coco_instances,
    parse_json,
    read_json,
    validate_coco_instances,
)
from .file_io import atomic_write_bytes
from .label_noise import NoiseMode
from .mixed_supervision import FractionOf, apply_supervision
from .simulate import simulate_point_annotations
from .simulation_results import PointSamples, SimulationStats

__all__ = [
    "apply_point_samples",
    "dumps_point_annotations",
    "read_point_file",
    "set_point_fields",
    "simulate_coco",
    "write_point_annotation_file",
    "write_point_file",
]


def simulate_coco(
    coco: Mapping[str, Any],
    num_points: int = 10,
    seed: int = 0,
    *,
    version: int = 0,
    noise_rate: float = 0.0,
    noise_mode: NoiseMode = "random",
    keep_masks: bool = False,
    keep_masks_fraction: float = 0.0,
    box_only_fraction: float = 0.0,
    fraction_of: FractionOf = "objects",
    workers: int = 1,
    source: str = "<memory>",
) -> tuple[dict[str, Any], SimulationStats]:
    """P_N annotations (paper §3.1) of an in-memory COCO instances dataset: a new dataset and the
    run's counts; ``coco`` is left as it was.

    The new dataset is the output file of ``tools/prepare_point_annotations.py`` with the same
    options, parsed: :func:`write_point_file` (or ``dumps_json``) of it gives that file byte for
    byte. Each option is the CLI's option of the same name.

    Args:
        coco: COCO instances, e.g. ``json.load`` of a file: ``images`` (with ``height``, ``width``),
            ``categories``, ``annotations`` with ``bbox`` and a ``segmentation`` (polygons, RLE or
            compressed RLE) that labels the points.
        num_points: N, points per object.
        seed: in [0, 2**64); with ``version``, it alone decides the points.
        version: which independently sampled version: the CLI's file ``k`` of ``--num-versions``
            is ``version=k``.
        noise_rate, noise_mode: flip exactly ``floor(R * T + 0.5)`` of the T labels written
            (§3.3.1), chosen at random (``"random"``) or nearest the object boundary
            (``"boundary"``).
        keep_masks: every object keeps its ``segmentation`` beside its points.
        keep_masks_fraction, box_only_fraction, fraction_of: mixed supervision: objects (or whole
            images) that keep their mask without points, or only their box
            (:mod:`point_sup_labels.mixed_supervision`); not with ``keep_masks``.
        workers: processes (forked) that label the points; the result is the same for any number.
        source: how error messages name ``coco``.

    Returns:
        The P_N dataset: every key of ``coco`` kept, each annotation with ``point_coords`` (N
        ``[x, y]`` integer pixel indices) and ``point_labels`` (N of 1/0), and without
        ``segmentation`` unless it keeps its mask; and the run's
        :class:`~point_sup_labels.simulation_results.SimulationStats` (``print`` it for a summary).

    Raises:
        CocoFormatError: ``coco`` is not valid COCO instances (the message names the record).
        ValueError: impossible options.
    """
    if keep_masks and (keep_masks_fraction > 0 or box_only_fraction > 0):
        raise ValueError(
            "keep_masks keeps the mask of every object: it cannot be combined with keep_masks_fraction "
            "or box_only_fraction"
        )
    instances = validate_coco_instances(_working_copy(coco), source=source)
    samples, stats = simulate_point_annotations(
        instances,
        num_points=num_points,
        seed=seed,
        versions=(version,),
        noise_rate=noise_rate,
        noise_mode=noise_mode,
        keep_masks_fraction=keep_masks_fraction,
        box_only_fraction=box_only_fraction,
        fraction_of=fraction_of,
        workers=workers,
        drop_segmentation=not keep_masks,
    )
    # Parsed from the file's bytes: the caller gets exactly what the CLI's file holds, and nothing
    # shared with ``coco`` (the working copy shares its nested values).
    return parse_json(dumps_point_annotations(instances, samples[0]), source), stats


def _working_copy(coco: Mapping[str, Any]) -> Any:
    """``coco`` with new containers wherever the validator or the simulator writes: the top level,
    each image (sizes normalized, e.g. 480.0 -> 480) and each annotation (fields set and removed).
    Anything that is not COCO's shape is passed as it is, for the validator to name."""
    if not isinstance(coco, Mapping):
        return coco
    data = dict(coco)
    for key in ("images", "annotations"):
        if isinstance(data.get(key), list):
            data[key] = [dict(record) if isinstance(record, dict) else record for record in data[key]]
    return data


def read_point_file(path: str | os.PathLike) -> dict[str, Any]:
    """A P_N file's dataset, validated (:func:`point_sup_labels.coco_format.validate_coco_instances`:
    ``segmentation`` optional, point fields by :mod:`point_sup_labels.point_fields`)."""
    return load_coco_instances(path, require_segmentation=False).data


def write_point_file(data: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a P_N dataset (e.g. :func:`simulate_coco`'s) to ``path`` atomically, serialized as
    every P_N file is (:func:`point_sup_labels.coco_format.dumps_json`); not validated."""
    atomic_write_bytes(path, dumps_json(data))


def write_point_annotation_file(
    input_json: str | os.PathLike, output_json: str | os.PathLike, **options: Any
) -> SimulationStats:
    """Simulate P_N for a COCO-format file and write the result atomically: :func:`simulate_coco`
    of the file's content (``options``: its keyword arguments), written by :func:`write_point_file`.

    The CLI's output for the same options, byte for byte. It holds the input and output datasets in
    memory at once: for large files use ``tools/prepare_point_annotations.py``, which also makes
    several versions in one run and parses the file in shards.
    """
    source = os.fspath(input_json)
    data, stats = simulate_coco(read_json(input_json), source=source, **options)
    write_point_file(data, output_json)
    return stats


def apply_point_samples(instances: CocoInstances, samples: PointSamples) -> None:
    """Set ``point_coords``/``point_labels`` of every annotation of ``instances`` from ``samples``,
    as Python lists (for code that reads them back; the output files are written by
    :func:`dumps_point_annotations`). Annotations without points (zero-area boxes) get empty lists,
    as in the output files.
    """
    _set_rows(instances.annotations, samples.coords.tolist(), samples.labels.tolist(), samples)


def dumps_point_annotations(instances: CocoInstances, samples: PointSamples) -> bytes:
    """``instances.data`` with the points of ``samples``, serialized: the bytes of an output file.

    The point fields are set by :func:`set_point_fields` (as JSON fragments, not Python lists: call
    :func:`apply_point_samples` for those), then removed again from the objects that keep a mask or
    only a box (:func:`~point_sup_labels.mixed_supervision.apply_supervision`, which also removes
    the box-only objects' ``segmentation``), all in ``instances``.
    """
    set_point_fields(instances.annotations, samples)
    apply_supervision(instances.annotations, samples.supervision)
    return dumps_json(instances.data)


def set_point_fields(annotations: list[dict[str, Any]], samples: PointSamples) -> None:
    """Set ``point_coords``/``point_labels`` of each annotation, ready for :func:`dumps_json`.

    ``annotations[i]`` gets row ``i`` of ``samples`` as ``orjson.Fragment`` JSON text (empty lists
    where there are no points); with orjson < 3.9, as Python lists (:func:`apply_point_samples`).
    Why fragments: ``docs/labels_implementation.md``.
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
