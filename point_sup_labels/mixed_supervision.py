"""Mixed supervision: which objects keep their mask, get P_N points, or keep only their box.

Options (:class:`point_sup_labels.simulate.SimulationOptions`, the CLI's ``--keep-masks-fraction``
F, ``--box-only-fraction`` G, ``--fraction-of``): each object gets one kind of supervision,
``"points"`` (its P_N points, no mask: the default), ``"mask"`` (its ``segmentation`` as read, no
point fields) or ``"box"`` (neither).

The rule (:func:`supervision_kinds`): a draw ``u`` in [0, 1) is a hash of (seed, id), where id is
the annotation id, or with ``fraction_of="images"`` the image id (every object of an image gets the
image's kind); the object is ``"mask"`` if ``u < F``, ``"box"`` if ``F <= u < F + G``, else
``"points"``. Crowd objects (``iscrowd`` 1) are never selected: they get points as without the
fractions. Each object is decided on its own, so the counts are binomial (close to F and G of the
objects or images, not exact), and the selection depends on nothing but the seed and the ids (not
on workers, shards, chunks or file order). The draw has its own random stream, so the points of
every object are those of a run without the fractions. The simulator still labels every object
(its arrays stay aligned with the file); :func:`apply_supervision` removes from each annotation the
fields its kind does not have.

Kinds are int8 codes in arrays: ``SUPERVISION_KINDS[code]`` is the name.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from operator import itemgetter
from typing import Any, Literal

import numpy as np

from .json_values import is_number
from .sampling import annotation_keys

__all__ = [
    "SUPERVISION_BOX",
    "SUPERVISION_KINDS",
    "SUPERVISION_MASK",
    "SUPERVISION_POINTS",
    "FractionOf",
    "apply_supervision",
    "check_supervision_fractions",
    "select_supervision",
    "supervision_draws",
    "supervision_kind",
    "supervision_kinds",
]

FractionOf = Literal["objects", "images"]
SUPERVISION_POINTS, SUPERVISION_MASK, SUPERVISION_BOX = 0, 1, 2
SUPERVISION_KINDS = ("points", "mask", "box")
# The draws' stream is annotation_keys(_SUPERVISION_STREAM, seed, id): the tag in the seed slot
# keeps it apart from every point stream annotation_keys(seed, version, id) ("SUPERVIS").
_SUPERVISION_STREAM = int.from_bytes(b"SUPERVIS", "big")
_FRACTION_SUM_SLACK = 1e-9  # 0.7 + 0.3 may round above 1 in binary floating point


def check_supervision_fractions(
    keep_masks_fraction: float, box_only_fraction: float, fraction_of: str = "objects"
) -> None:
    """ValueError unless both fractions are numbers in [0, 1] with a sum of at most 1 and
    ``fraction_of`` is ``"objects"`` or ``"images"``."""
    for name, value in (
        ("keep_masks_fraction", keep_masks_fraction),
        ("box_only_fraction", box_only_fraction),
    ):
        if not is_number(value) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if keep_masks_fraction + box_only_fraction > 1.0 + _FRACTION_SUM_SLACK:
        raise ValueError(
            f"keep_masks_fraction + box_only_fraction must be at most 1, got "
            f"{keep_masks_fraction} + {box_only_fraction}"
        )
    if fraction_of not in ("objects", "images"):
        raise ValueError(f"fraction_of must be 'objects' or 'images', got {fraction_of!r}")


def _uint64_ids(object_ids: np.ndarray | Sequence[int]) -> np.ndarray:
    """Integer ids as uint64, modulo 2**64 (image ids may be negative or beyond int64)."""
    if isinstance(object_ids, np.ndarray) and object_ids.dtype == np.uint64:
        return object_ids
    try:
        return np.asarray(object_ids, dtype=np.int64).view(np.uint64)  # two's complement = mod 2**64
    except OverflowError:
        return np.fromiter((int(i) % 2**64 for i in object_ids), np.uint64, len(object_ids))


def supervision_draws(seed: int, object_ids: np.ndarray | Sequence[int]) -> np.ndarray:
    """The draw ``u`` in [0, 1) (float64, a multiple of 2**-53) of each id, for ``seed``.

    ``u`` is a hash of (seed, id modulo 2**64) only, from a stream of its own: independent of the
    point sampler's streams (:func:`point_sup_labels.sampling.annotation_keys` of (seed, version,
    id)), so selecting objects never changes the points of the others.
    """
    keys = annotation_keys(_SUPERVISION_STREAM, seed, _uint64_ids(object_ids))
    return (keys >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def supervision_kinds(
    seed: int,
    object_ids: np.ndarray | Sequence[int],
    keep_masks_fraction: float,
    box_only_fraction: float,
) -> np.ndarray:
    """(len(object_ids),) int8 codes (:data:`SUPERVISION_KINDS`) of the rule of the module doc:
    ``SUPERVISION_MASK`` where ``u < F``, ``SUPERVISION_BOX`` where ``F <= u < F + G``, else
    ``SUPERVISION_POINTS``, with ``u`` from :func:`supervision_draws`. Crowd objects are the
    caller's to exclude (see :func:`select_supervision`)."""
    check_supervision_fractions(keep_masks_fraction, box_only_fraction)
    u = supervision_draws(seed, object_ids)
    kinds = np.full(len(u), SUPERVISION_POINTS, dtype=np.int8)
    kinds[u < keep_masks_fraction + box_only_fraction] = SUPERVISION_BOX
    kinds[u < keep_masks_fraction] = SUPERVISION_MASK
    return kinds


def supervision_kind(seed: int, object_id: int, keep_masks_fraction: float, box_only_fraction: float) -> str:
    """``"mask"``, ``"box"`` or ``"points"``: the kind of supervision of one object (or, with
    ``fraction_of="images"``, of every object of one image) by the rule of the module doc.

    ``object_id`` is the annotation id, or the image id when whole images are selected; crowd
    objects always get ``"points"`` (not decided here). The same answer as the simulator's for the
    same seed and fractions (``--seed``, ``--keep-masks-fraction``, ``--box-only-fraction``).
    """
    code = supervision_kinds(seed, [object_id], keep_masks_fraction, box_only_fraction)[0]
    return SUPERVISION_KINDS[code]


def select_supervision(
    annotations: Sequence[dict[str, Any]],
    seed: int,
    keep_masks_fraction: float,
    box_only_fraction: float,
    fraction_of: FractionOf = "objects",
) -> np.ndarray:
    """(len(annotations),) int8 codes (:data:`SUPERVISION_KINDS`) of COCO annotations: by
    :func:`supervision_kinds` of their ``id`` (or ``image_id`` with ``fraction_of="images"``),
    ``SUPERVISION_POINTS`` for crowd objects (``iscrowd`` 1)."""
    check_supervision_fractions(keep_masks_fraction, box_only_fraction, fraction_of)
    n = len(annotations)
    if keep_masks_fraction == 0 and box_only_fraction == 0:
        return np.zeros(n, dtype=np.int8)
    key = "id" if fraction_of == "objects" else "image_id"
    kinds = supervision_kinds(
        seed, list(map(itemgetter(key), annotations)), keep_masks_fraction, box_only_fraction
    )
    crowd = np.fromiter(map(dict.get, annotations, repeat("iscrowd"), repeat(0)), np.int64, n) == 1
    kinds[crowd] = SUPERVISION_POINTS
    return kinds


def apply_supervision(annotations: list[dict[str, Any]], supervision: np.ndarray | None) -> None:
    """Remove, in place, the fields that each annotation's kind of supervision does not have:
    ``point_coords``/``point_labels`` from ``"mask"`` and ``"box"`` objects, ``segmentation``
    from ``"box"`` objects. ``supervision``: (len(annotations),) int8 codes, or None (all
    ``"points"``: nothing to do). Run it after the point fields are set (for every annotation, by
    :func:`point_sup_labels.point_file.set_point_fields`) and before serializing."""
    if supervision is None:
        return
    for j in np.flatnonzero(supervision != SUPERVISION_POINTS).tolist():
        ann = annotations[j]
        ann.pop("point_coords", None)
        ann.pop("point_labels", None)
        if supervision[j] == SUPERVISION_BOX:
            ann.pop("segmentation", None)
