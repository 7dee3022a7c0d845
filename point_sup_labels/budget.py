"""Training subsets under an annotation budget: the supervisions of the paper's Figure 5 (§3.3.3).

Figure 5 compares supervision forms under *the same annotation budget*, the time needed to label
the training data, by training on 10 % … 100 % of COCO train2017. The paper's time model for a
dataset is

* per image, the **categorization** and **instance spotting** stages of COCO's pipeline (annotators
  first spot and categorize the objects of an image by pointing at them), whatever the supervision;
* per spotted object, the cost of the annotation form (:class:`Supervision`): ``M``, a polygon mask,
  79.2 s; ``P{N}``, a box and N labelled points, 7 s + 0.9 s × N (16 s for P10); ``B``, a box only,
  7 s (BoxInst's supervision).

Every annotation of an image counts as one spotted object, crowd annotations (``iscrowd=1``, one
region over many instances) included: the object count is what the file holds, with no discount or
surcharge for crowds, and an image without annotations still costs its two per-image stages.

Selection (:func:`select_images`). The images are put in one seeded pseudo-random order
(:func:`image_order`) that depends only on the seed and the image ids: not on the supervision, not
on the order of the file. A subset is always a *prefix* of that order: ``fraction=F`` takes the first
``round(F × #images)`` images, ``budget_hours=H`` the longest prefix whose total time fits in H,
stopping at the first image that does not fit (a prefix, not a knapsack: the smaller images further
down the order are not used to fill the rest of the budget). Hence

* subsets are nested: a larger fraction or budget adds images, never swaps them;
* all supervisions at one seed see the same image order, so a budget-matched P10 subset is the M
  subset of the same budget plus more images of the same order, like the paper's "from 10% to 100%
  of train2017" subsets of one dataset;
* the same input and seed give the same subset, and the written files are byte-identical.

Like the whole package, it imports neither torch nor Detectron2.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .coco_format import CocoFormatError, CocoInstances
from .json_values import is_finite_number
from .sampling import sampling_ranges
from .time_model import SECONDS_PER_BOX, SECONDS_PER_POINT, SECONDS_PER_POLYGON_MASK

__all__ = [
    "COCO_CATEGORIZATION_SECONDS_PER_IMAGE",
    "COCO_SPOTTING_SECONDS_PER_IMAGE",
    "AnnotationTimeModel",
    "BudgetError",
    "BudgetSelection",
    "Supervision",
    "check_supervision_fields",
    "dataset_seconds",
    "image_order",
    "objects_per_image",
    "parse_supervision",
    "select_images",
    "subset_coco",
]

# COCO's reported effort (Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014):
# about 20k worker hours of category labelling and 10k of instance spotting for its 328k images.
_COCO_NUM_IMAGES = 328_000
COCO_CATEGORIZATION_SECONDS_PER_IMAGE = 20_000 * 3600 / _COCO_NUM_IMAGES  # 219.5 s
COCO_SPOTTING_SECONDS_PER_IMAGE = 10_000 * 3600 / _COCO_NUM_IMAGES  # 109.8 s

# A budget fits if the time exceeds it by at most this fraction: hours are converted to seconds
# and sums rounded in floating point, and a budget equal to a prefix's time must include it.
_BUDGET_RTOL = 1e-9


class BudgetError(ValueError):
    """The requested fraction or budget selects no image."""


# --------------------------------------------------------------------------------------------
# Supervision kinds and the time model
# --------------------------------------------------------------------------------------------

_SUPERVISION_RE = re.compile(r"(M|B|P([1-9][0-9]*))", re.IGNORECASE)


@dataclass(frozen=True)
class Supervision:
    """An annotation form: ``M`` (polygon mask), ``B`` (box only) or ``P{N}`` (box and N points)."""

    kind: str  # "M", "B" or "P"
    num_points: int = 0  # N for "P", else 0

    def __post_init__(self) -> None:
        if self.kind not in ("M", "B", "P"):
            raise ValueError(f"supervision kind must be 'M', 'B' or 'P', got {self.kind!r}")
        if (self.kind == "P") != (self.num_points >= 1) or self.num_points < 0:
            raise ValueError(f"supervision {self.kind} with num_points={self.num_points}")

    def __str__(self) -> str:
        return f"P{self.num_points}" if self.kind == "P" else self.kind


def parse_supervision(text: str | Supervision) -> Supervision:
    """``"M"``, ``"B"`` or ``"P{N}"`` (N >= 1, e.g. ``"P10"``; case-insensitive) as a :class:`Supervision`."""
    if isinstance(text, Supervision):
        return text
    m = _SUPERVISION_RE.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(
            f"unknown supervision {text!r}: expected M (polygon masks), B (boxes) or P<N> with N >= 1 "
            "(a box and N points, e.g. P10)"
        )
    if m.group(2) is not None:
        return Supervision("P", int(m.group(2)))
    return Supervision(m.group(1).upper())


@dataclass(frozen=True)
class AnnotationTimeModel:
    """The paper's annotation-time model (§3.3.3), in seconds.

    The per-object defaults are the paper's: 7 s per box (extreme clicking), 0.9 s per point,
    79.2 s per polygon mask (:mod:`point_sup_labels.time_model`'s constants). The per-image
    categorization and spotting defaults are *our reading of the COCO paper* (Lin et al. 2014;
    :data:`COCO_CATEGORIZATION_SECONDS_PER_IMAGE`), not the paper's own figures, which are in a
    supplement not available to us. They are options (``--categorization-seconds``,
    ``--spotting-seconds`` of ``tools/select_annotation_budget.py``).
    """

    categorization_seconds: float = COCO_CATEGORIZATION_SECONDS_PER_IMAGE
    spotting_seconds: float = COCO_SPOTTING_SECONDS_PER_IMAGE
    box_seconds: float = SECONDS_PER_BOX
    point_seconds: float = SECONDS_PER_POINT
    polygon_mask_seconds: float = SECONDS_PER_POLYGON_MASK

    def __post_init__(self) -> None:
        for name in (
            "categorization_seconds",
            "spotting_seconds",
            "box_seconds",
            "point_seconds",
            "polygon_mask_seconds",
        ):
            v = getattr(self, name)
            if not is_finite_number(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")

    def object_seconds(self, supervision: str | Supervision) -> float:
        """Seconds to annotate one spotted object with ``supervision``."""
        sup = parse_supervision(supervision)
        if sup.kind == "M":
            return float(self.polygon_mask_seconds)
        if sup.kind == "B":
            return float(self.box_seconds)
        return float(self.box_seconds + sup.num_points * self.point_seconds)

    def image_seconds(self, supervision: str | Supervision, num_objects: int) -> float:
        """Seconds for one image with ``num_objects`` spotted objects: its stages plus its objects."""
        return _seconds(1, num_objects, self, self.object_seconds(supervision))

    def describe(self, supervision: str | Supervision) -> str:
        """The model in words, e.g. ``"7 s per box + 10 x 0.9 s per point = 16 s per object"``."""
        sup = parse_supervision(supervision)
        if sup.kind == "M":
            per = f"{self.polygon_mask_seconds:g} s per polygon mask"
        elif sup.kind == "B":
            per = f"{self.box_seconds:g} s per box"
        else:
            per = (
                f"{self.box_seconds:g} s per box + {sup.num_points} x {self.point_seconds:g} s per point "
                f"= {self.object_seconds(sup):g} s per object"
            )
        return (
            f"{per}; per image {self.categorization_seconds:.1f} s categorization + "
            f"{self.spotting_seconds:.1f} s spotting"
        )


def _seconds(num_images, num_objects, model: AnnotationTimeModel, per_object: float):
    """Time of ``num_images`` images holding ``num_objects`` objects (scalars or arrays).

    One expression everywhere, so that a selection's total equals the prefix time it was chosen by.
    """
    return (
        num_images * model.categorization_seconds
        + num_images * model.spotting_seconds
        + num_objects * per_object
    )


# --------------------------------------------------------------------------------------------
# Objects per image, the image order
# --------------------------------------------------------------------------------------------


def objects_per_image(data: dict[str, Any]) -> tuple[list[Any], np.ndarray]:
    """The image ids in file order and the number of annotations of each (crowd ones included).

    Raises:
        CocoFormatError: an annotation refers to an image that is not in ``images``.
    """
    ids = [img["id"] for img in data["images"]]
    position = {iid: k for k, iid in enumerate(ids)}
    counts = np.zeros(len(ids), dtype=np.int64)
    try:
        pos = [position[ann["image_id"]] for ann in data["annotations"]]
    except KeyError:
        ann = next(a for a in data["annotations"] if a["image_id"] not in position)
        raise CocoFormatError(f"unknown image_id {ann['image_id']!r}", annotation_id=ann.get("id")) from None
    np.add.at(counts, np.asarray(pos, dtype=np.int64), 1)
    return ids, counts


_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_ORDER_TAG = 0x425544474554  # "BUDGET": a stream of its own, unrelated to the point sampler's


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function: a bijection of uint64."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def image_order(image_ids: Sequence[int], seed: int) -> np.ndarray:
    """Positions (into ``image_ids``) of the images in selection order, for ``seed``.

    The images are sorted by a keyed hash of their id (SplitMix64's mixer, a bijection, keyed by the
    seed), so the order is a pseudo-random permutation that depends only on the seed and the set of
    ids: the same for every supervision and for any order of the images in the file, and independent
    of the numpy version (no generator stream is involved).
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    ids = np.array([int(i) & 0xFFFFFFFFFFFFFFFF for i in image_ids], dtype=np.uint64)
    with np.errstate(over="ignore"):
        key = _mix64(np.array([int(seed) ^ _ORDER_TAG], dtype=np.uint64) + _GAMMA)
        hashed = _mix64(_mix64(ids + key) ^ key)
    return np.argsort(hashed, kind="stable")  # ties only for ids equal modulo 2**64: file order


# --------------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetSelection:
    """The images chosen for a fraction or budget, and their annotation time (seconds)."""

    supervision: str
    seed: int
    fraction: float | None
    budget_hours: float | None
    image_ids: tuple[Any, ...]  # selected images, in selection order (a prefix of image_order)
    num_images_total: int
    num_objects: int
    num_objects_total: int
    categorization_seconds: float
    spotting_seconds: float
    object_seconds: float  # annotating the selected objects with the supervision
    per_object_seconds: float
    dataset_seconds: float  # the whole input, same supervision and model

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    @property
    def total_seconds(self) -> float:
        return self.categorization_seconds + self.spotting_seconds + self.object_seconds

    @property
    def total_hours(self) -> float:
        return self.total_seconds / 3600

    @property
    def everything(self) -> bool:
        """All images of the input are selected."""
        return self.num_images == self.num_images_total

    def summary(self) -> list[str]:
        """Lines for a log: what was selected and what it costs."""

        def hours(s: float) -> str:
            return f"{s / 3600:,.3f} h"

        def pct(a: int, b: int) -> str:
            return f"{100 * a / b:.1f}%" if b else "-"

        if self.fraction is not None:
            asked = f"fraction {self.fraction:g} of the images (seed {self.seed})"
        else:
            asked = f"budget {self.budget_hours:,g} h (seed {self.seed})"
        lines = [
            f"selected {self.num_images:,} of {self.num_images_total:,} images "
            f"({pct(self.num_images, self.num_images_total)}) and {self.num_objects:,} of "
            f"{self.num_objects_total:,} objects ({pct(self.num_objects, self.num_objects_total)}) "
            f"for {asked}",
            f"annotation time ({self.supervision}): categorization {hours(self.categorization_seconds)} + "
            f"spotting {hours(self.spotting_seconds)} + per-object annotation {hours(self.object_seconds)} "
            f"= total {hours(self.total_seconds)}"
            + (f" of a budget of {self.budget_hours:,g} h" if self.budget_hours is not None else "")
            + f" (whole input: {hours(self.dataset_seconds)})",
        ]
        if self.budget_hours is not None and self.everything:
            lines.append(
                f"the budget covers the whole input ({hours(self.dataset_seconds)} under "
                f"{self.supervision}): every image is selected"
            )
        return lines


def _check_fraction(fraction: Any) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    return float(fraction)


def _check_budget(budget_hours: Any) -> float:
    if (
        isinstance(budget_hours, bool)
        or not isinstance(budget_hours, int | float)
        or not math.isfinite(budget_hours)
        or budget_hours <= 0
    ):
        raise ValueError(f"budget must be a finite number of hours > 0, got {budget_hours!r}")
    return float(budget_hours)


def select_images(
    data: dict[str, Any],
    supervision: str | Supervision,
    *,
    fraction: float | None = None,
    budget_hours: float | None = None,
    seed: int = 0,
    time_model: AnnotationTimeModel | None = None,
) -> BudgetSelection:
    """Choose a prefix of :func:`image_order` by ``fraction`` or by ``budget_hours`` (exactly one).

    * ``fraction=F`` in (0, 1]: the first ``round(F × #images)`` images (halves round up).
    * ``budget_hours=H`` > 0: the longest prefix whose time (per-image stages plus the objects under
      ``supervision``, see :class:`AnnotationTimeModel`) does not exceed H; the first image that does
      not fit ends the subset. A budget equal to a prefix's time includes that prefix (up to a
      relative 1e-9 for floating-point rounding). A budget beyond the whole input selects everything.

    Args:
        data: a COCO instances dict (``images``, ``annotations``; validated, e.g. by
            :func:`point_sup_labels.coco_format.validate_coco_instances`).

    Raises:
        BudgetError: no image is selected (a tiny fraction, a budget below the first image's time,
            an input without images).
        ValueError: bad arguments.
    """
    if (fraction is None) == (budget_hours is None):
        raise ValueError("give exactly one of fraction and budget_hours")
    sup = parse_supervision(supervision)
    model = time_model if time_model is not None else AnnotationTimeModel()
    per_object = model.object_seconds(sup)
    ids, counts = objects_per_image(data)
    n = len(ids)
    order = image_order(ids, seed)
    cum_objects = np.concatenate([[0], np.cumsum(counts[order])])  # objects of each prefix 0..n
    prefix_seconds = _seconds(np.arange(n + 1), cum_objects, model, per_object)
    if fraction is not None:
        fraction = _check_fraction(fraction)
        k = min(n, math.floor(fraction * n + 0.5))
        if k == 0:
            raise BudgetError(
                f"fraction {fraction:g} of {n} images selects no image" if n else "the input has no images"
            )
    else:
        budget_hours = _check_budget(budget_hours)
        budget_seconds = budget_hours * 3600
        if n == 0:
            raise BudgetError("the input has no images")
        fits = prefix_seconds <= budget_seconds * (1 + _BUDGET_RTOL)
        # Times only grow along the order, so the fitting prefixes are 0..k: stop at the first misfit.
        k = int(np.argmin(fits)) - 1 if not fits.all() else n
        if k == 0:
            first = ids[order[0]]
            raise BudgetError(
                f"a budget of {budget_hours:g} h fits no image: the first image of the order "
                f"(id {first!r}, {int(counts[order[0]])} objects) alone takes "
                f"{prefix_seconds[1] / 3600:.4g} h under {sup}"
            )
    k = int(k)
    num_objects = int(cum_objects[k])
    return BudgetSelection(
        supervision=str(sup),
        seed=int(seed),
        fraction=fraction,
        budget_hours=budget_hours,
        image_ids=tuple(ids[i] for i in order[:k].tolist()),
        num_images_total=n,
        num_objects=num_objects,
        num_objects_total=int(cum_objects[n]),
        categorization_seconds=k * model.categorization_seconds,
        spotting_seconds=k * model.spotting_seconds,
        object_seconds=num_objects * per_object,
        per_object_seconds=per_object,
        dataset_seconds=float(prefix_seconds[n]),
    )


def dataset_seconds(
    data: dict[str, Any], supervision: str | Supervision, time_model: AnnotationTimeModel | None = None
) -> float:
    """Annotation time of a whole COCO dict under ``supervision`` (e.g. of a subset written before).

    For budget matching: ``dataset_seconds(m_subset, "M") / 3600`` is the ``budget_hours`` at which
    another supervision gets the same annotation time as the mask subset ``m_subset``.
    """
    model = time_model if time_model is not None else AnnotationTimeModel()
    return float(
        _seconds(len(data["images"]), len(data["annotations"]), model, model.object_seconds(supervision))
    )


def subset_coco(data: dict[str, Any], image_ids: Sequence[Any] | BudgetSelection) -> dict[str, Any]:
    """``data`` restricted to the given images: a new dict with every top-level key of ``data``
    (``info``, ``licenses``, ``categories``, anything else) in its order, and ``images`` and
    ``annotations`` filtered to those images, in the input order.

    The records are shared with ``data``, not copied; ``data`` is not modified.
    """
    if isinstance(image_ids, BudgetSelection):
        image_ids = image_ids.image_ids
    keep = set(image_ids)
    out = dict(data)
    out["images"] = [img for img in data["images"] if img["id"] in keep]
    out["annotations"] = [ann for ann in data["annotations"] if ann["image_id"] in keep]
    return out


# --------------------------------------------------------------------------------------------
# Does the file hold the supervision?
# --------------------------------------------------------------------------------------------


def check_supervision_fields(instances: CocoInstances, supervision: str | Supervision) -> None:
    """Check that a validated dataset carries the annotations that ``supervision`` pays for.

    * ``M``: every annotation has a ``segmentation`` (a mask file).
    * ``P{N}``: every annotation has ``point_coords`` and ``point_labels`` (a P_N file, e.g. from
      ``tools/prepare_point_annotations.py --num-points N``), with exactly N points where its box keeps
      some area in the image, and at most N where it does not (point_sup writes none for such zero-area
      boxes, Detectron2's PointSup script N).
    * ``B``: a box, which validation already requires of every annotation.

    Raises:
        CocoFormatError: naming the first annotation (in file order) that lacks it.
    """
    sup = parse_supervision(supervision)
    anns = instances.annotations

    def fail(msg: str, ann: dict[str, Any]) -> CocoFormatError:
        return CocoFormatError(
            msg, source=instances.source, image_id=ann.get("image_id"), annotation_id=ann.get("id")
        )

    if sup.kind == "M":
        for ann in anns:
            if "segmentation" not in ann:
                raise fail("no 'segmentation': supervision M needs a mask file", ann)
    elif sup.kind == "P":
        n = sup.num_points
        lengths = np.zeros(len(anns), dtype=np.int64)
        for k, ann in enumerate(anns):
            coords = ann.get("point_coords")
            if not isinstance(coords, list) or not isinstance(ann.get("point_labels"), list):
                raise fail(
                    f"no 'point_coords'/'point_labels': supervision {sup} needs a P_N point file "
                    f"(e.g. from tools/prepare_point_annotations.py --num-points {n})",
                    ann,
                )
            lengths[k] = len(coords)
        if not len(anns):
            return
        sizes = np.array([instances.image_size(ann) for ann in anns], dtype=np.float64)
        boxes = np.array([ann["bbox"] for ann in anns], dtype=np.float64)
        _, _, zero_area = sampling_ranges(boxes, sizes[:, 0], sizes[:, 1])
        bad = np.flatnonzero(np.where(zero_area, lengths > n, lengths != n))
        if len(bad):
            ann = anns[int(bad[0])]
            got = int(lengths[bad[0]])
            where = "a zero-area box, at most" if zero_area[bad[0]] else "expected exactly"
            raise fail(f"{got} points for supervision {sup} ({where} {n}): not a P{n} file?", ann)
