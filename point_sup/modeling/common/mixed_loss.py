"""How a mask head trains on a batch of mixed supervision (``MODEL.MIXED_SUP``): the one rule.

Every training instance of the mask head (a foreground proposal of the ROI heads, a positive location
of CondInst) has the kind of the ground-truth object it is matched to (``gt_supervision``, see
point_sup.data.mixed_supervision). The head

1. drops the ``BOX`` instances (they supervise detection only: no mask loss, no gradient to the
   mask head from them; BoxInst's box losses are CondInst's own),
2. computes its loss from masks on the ``MASK`` instances and its loss from points on the
   ``POINTS`` instances, each exactly as a pure-mask or pure-point batch of those instances would
   (the same functions and normalisations: ``mask_rcnn_loss``'s mean over the mask pixels,
   ``MODEL.POINT_LOSS.NORMALIZATION`` over the points, ...),
3. adds them with the weights of ``MODEL.MIXED_SUP.WEIGHTING`` (:func:`kind_weights`):

   ``"instances"`` (default)
       ``w_kind = R_kind / (R_mask + R_points)``: the loss is the mean over the mask-supervised
       instances of their per-kind loss, so a kind's share of the gradient is its share of the
       instances, whatever the mix of the batch (CondInst with BoxInst's box losses counts its
       ``BOX`` instances as a third kind: ``R_kind / (R_mask + R_points + R_box)``);
   ``"sum"``
       ``w_kind = 1`` for every kind present.

A kind with no instance has weight 0 and its (zero, graph-keeping) loss is still added, so every
parameter stays in the graph (DDP). With one kind only, its weight is exactly 1: all-mask and
all-point batches give today's losses exactly.

The split reads every instance's kind with one device-to-host copy per step and selects with
indices, not boolean masks (why: docs/implementation.md, *Common: mixed supervision*).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from detectron2.structures import Instances, PolygonMasks

from ...config import MIXED_SUP_WEIGHTING
from ...data.mixed_supervision import Supervision
from .point_loss import PointLossOptions, check_choice

__all__ = [
    "MixedSplit",
    "combine_kind_losses",
    "drop_box_only",
    "kind_losses",
    "kind_weights",
    "nonzero_rows",
    "split_by_supervision",
    "supervised_instances",
]


def kind_weights(
    counts: Sequence[int] | torch.Tensor, weighting: str = "instances"
) -> tuple[float, ...] | torch.Tensor:
    """The weight of each kind's loss (see the module docstring) for ``counts[k]`` instances of kind
    k: (R_mask, R_points) for the ROI heads, (R_mask, R_points, R_box) for CondInst with BoxInst's
    box losses; 0 for a kind without instances.

    Args:
        counts: K Python ints, or a (K,) tensor of counts on the device (e.g. sums of device masks).
        weighting: ``MODEL.MIXED_SUP.WEIGHTING``.

    Returns:
        K Python floats for ints; for a tensor, (K,) float32 on its device, computed there (the host
        never waits for the counts), the same weights up to float32 rounding.
    """
    check_choice("MODEL.MIXED_SUP.WEIGHTING", weighting, MIXED_SUP_WEIGHTING)
    if isinstance(counts, torch.Tensor):
        counts = counts.to(torch.float32)
        if weighting == "sum":
            return (counts > 0).to(torch.float32)
        # No instance at all: every count is 0, and so is every weight (0 / 1).
        return counts / counts.sum().clamp(min=1.0)
    total = sum(counts)
    if total == 0:
        return tuple(0.0 for _ in counts)
    if weighting == "sum":
        return tuple(float(n > 0) for n in counts)
    return tuple(n / total for n in counts)


def nonzero_rows(selected: torch.Tensor, count: int) -> torch.Tensor:
    """The indices of the ``True`` entries of ``selected``, ascending, when the host knows how many
    there are (``count``): ``selected.nonzero()[:, 0]`` without the host waiting for the device to
    size the result (a stable sort moves the selected rows to the front, in order).

    Args:
        selected: (R,) bool.
        count: the number of ``True`` entries.

    Returns:
        (count,) int64 on the device of ``selected``.
    """
    order = torch.argsort((~selected).to(torch.uint8), stable=True)
    return order[:count]


@dataclass(frozen=True)
class MixedSplit:
    """The mask-head instances of a batch split by kind, order kept within each kind.

    Rows below are rows of the head's per-instance predictions over the concatenation (in image
    order) of the input instances (``*_index``) or of :attr:`supervised` (``*_rows``).

    Attributes:
        supervised: per image, the ``MASK`` and ``POINTS`` instances (``BOX`` dropped).
        masks, points: per image, the ``MASK`` / ``POINTS`` instances (``Instances`` of any length).
        supervised_index: (R_mask + R_points,) int64, the rows of :attr:`supervised` among the input.
        mask_rows, points_rows: (R_mask,) / (R_points,) int64, the rows of :attr:`masks` /
            :attr:`points` among those of :attr:`supervised`.
        weights: (w_mask, w_points) of :func:`kind_weights`, Python floats.
    """

    supervised: list[Instances]
    masks: list[Instances]
    points: list[Instances]
    supervised_index: torch.Tensor
    mask_rows: torch.Tensor
    points_rows: torch.Tensor
    weights: tuple[float, float]

    @property
    def mask_index(self) -> torch.Tensor:
        """(R_mask,) int64: the rows of :attr:`masks` among the input instances."""
        return self.supervised_index[self.mask_rows]

    @property
    def points_index(self) -> torch.Tensor:
        """(R_points,) int64: the rows of :attr:`points` among the input instances."""
        return self.supervised_index[self.points_rows]


def _kinds(inst: Instances) -> torch.Tensor:
    if len(inst) == 0:
        return torch.zeros((0,), dtype=torch.int64)
    if not inst.has("gt_supervision"):
        raise ValueError(
            "MODEL.MIXED_SUP.ENABLED is on but the training instances have no gt_supervision: "
            "train with point_sup's dataset mapper (PointSupDatasetMapper), which sets it"
        )
    return inst.gt_supervision


def _host_kinds(instances: Sequence[Instances]) -> tuple[list[torch.Tensor], list[list[int]], torch.device]:
    """Every instance's kind on its device and on the host (one device-to-host copy in all), and
    that device."""
    kinds = [_kinds(inst) for inst in instances]
    device = next((k.device for k in kinds if len(k)), torch.device("cpu"))
    if not any(len(k) for k in kinds):
        return kinds, [[] for _ in kinds], device
    # The one point where the host waits for the device: the sizes of the per-kind subsets, hence
    # of every tensor computed from them, depend on how the proposals were matched.
    flat = torch.cat([k.to(device) for k in kinds]).tolist()
    host, start = [], 0
    for k in kinds:
        host.append(flat[start : start + len(k)])
        start += len(k)
    return kinds, host, device


def _subset(
    inst: Instances, selected: torch.Tensor, keep: list[int], num: int, device: torch.device
) -> tuple[Instances, torch.Tensor]:
    """The instances ``keep`` (host indices, ascending) of ``inst`` (``num`` of them), which are
    those where ``selected`` (device) is true, and their rows in ``inst`` as a device tensor."""
    if len(keep) == num:  # all of them (or none of none): the same object, no copy
        return inst, torch.arange(num, device=device)
    rows = nonzero_rows(selected, len(keep))
    out = Instances(inst.image_size)
    for name, value in inst.get_fields().items():
        # Polygons are Python lists: a host index (a device one would be copied back to the host).
        out.set(name, value[keep] if isinstance(value, PolygonMasks) else value[rows])
    return out, rows


def drop_box_only(instances: Sequence[Instances]) -> list[Instances]:
    """The instances without the ``BOX`` ones (step 1 of the module docstring), per image, order
    kept; one device-to-host copy (as :func:`split_by_supervision`)."""
    kinds, host, device = _host_kinds(instances)
    out = []
    for inst, k, h in zip(instances, kinds, host, strict=True):
        keep = [i for i, kind in enumerate(h) if kind != Supervision.BOX]
        out.append(_subset(inst, k != Supervision.BOX, keep, len(h), device)[0])
    return out


def split_by_supervision(instances: Sequence[Instances], weighting: str = "instances") -> MixedSplit:
    """Split training instances by their ``gt_supervision`` with one device-to-host copy (the kinds,
    which size the subsets) and no other host-device synchronisation: no boolean indexing.

    Args:
        instances: per image, the mask head's training instances; each non-empty one has
            ``gt_supervision`` (R_i,) (the mixed-supervision dataset mapper sets it on the ground
            truth, and the ROI heads copy it to the matched proposals).
        weighting: ``MODEL.MIXED_SUP.WEIGHTING``.
    """
    kinds, host, device = _host_kinds(instances)
    supervised, by_kind = [], {Supervision.MASK: ([], []), Supervision.POINTS: ([], [])}
    sup_index, start, sup_start = [], 0, 0
    for inst, k, h in zip(instances, kinds, host, strict=True):
        keep = [i for i, kind in enumerate(h) if kind != Supervision.BOX]
        sup, rows = _subset(inst, k != Supervision.BOX, keep, len(h), device)
        sup_kinds = k[rows] if len(keep) != len(h) else k
        sup_host = [h[i] for i in keep]
        for kind, (subsets, kind_rows) in by_kind.items():
            kind_keep = [i for i, x in enumerate(sup_host) if x == kind]
            subset, rows_in_sup = _subset(sup, sup_kinds == kind, kind_keep, len(keep), device)
            subsets.append(subset)
            kind_rows.append(rows_in_sup + sup_start)
        supervised.append(sup)
        sup_index.append(rows + start)
        start, sup_start = start + len(h), sup_start + len(keep)

    def cat(rows: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(rows) if rows else torch.zeros((0,), dtype=torch.int64, device=device)

    masks, mask_rows = by_kind[Supervision.MASK]
    points, points_rows = by_kind[Supervision.POINTS]
    counts = (sum(len(r) for r in mask_rows), sum(len(r) for r in points_rows))
    return MixedSplit(
        supervised=supervised,
        masks=masks,
        points=points,
        supervised_index=cat(sup_index),
        mask_rows=cat(mask_rows),
        points_rows=cat(points_rows),
        weights=kind_weights(counts, weighting),
    )


def combine_kind_losses(
    mask_losses: Mapping[str, torch.Tensor],
    point_losses: Mapping[str, torch.Tensor],
    weights: tuple[float, float],
) -> dict[str, torch.Tensor]:
    """``w_mask * mask_losses[k] + w_points * point_losses[k]`` for every loss name ``k`` (a name in
    one dict only is weighted alone)."""
    w_mask, w_points = weights
    out = {}
    for name in dict.fromkeys([*mask_losses, *point_losses]):
        terms = []
        if name in mask_losses:
            terms.append(mask_losses[name] * w_mask)
        if name in point_losses:
            terms.append(point_losses[name] * w_points)
        out[name] = terms[0] if len(terms) == 1 else terms[0] + terms[1]
    return out


def supervised_instances(
    instances: list[Instances], options: PointLossOptions
) -> tuple[list[Instances], MixedSplit | None]:
    """The instances a ROI mask head trains on and, with ``options.mixed_sup``, their split.

    Args:
        instances: per image, the head's foreground proposals.
        options: the head's :class:`~point_sup.modeling.common.point_loss.PointLossOptions`.

    Returns:
        ``(instances, None)`` without mixed supervision; else ``(split.supervised, split)``: the
        ``MASK`` and ``POINTS`` proposals (box-only ones get no mask head at all) and their
        :class:`MixedSplit`, whose rows index the head's predictions for ``split.supervised``.
    """
    if not options.mixed_sup:
        return instances, None
    split = split_by_supervision(instances, options.mixed_weighting)
    return split.supervised, split


def kind_losses(
    split: MixedSplit | None,
    point_sup: bool,
    predictions: torch.Tensor,
    instances: list[Instances],
    from_masks: Callable[[torch.Tensor, list[Instances]], dict[str, torch.Tensor]],
    from_points: Callable[[torch.Tensor, list[Instances]], dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """A head's losses by the supervision of its instances (steps 2 and 3 of the module docstring).

    Args:
        split: from :func:`supervised_instances` (None: one supervision for all instances).
        point_sup: without a split, whether the instances are trained from points (else masks).
        predictions: (R, ...) the head's per-instance predictions, rows in the order of ``instances``.
        instances: per image, the R instances (``split.supervised`` with a split).
        from_masks, from_points: ``(predictions, instances) -> losses`` of the head from masks and
            from labelled points, for any subset of rows.

    Returns:
        Without a split, the one supervision's losses; with one, :func:`combine_kind_losses` of
        ``from_masks`` on the ``MASK`` rows and ``from_points`` on the ``POINTS`` rows.
    """
    if split is None:
        return (from_points if point_sup else from_masks)(predictions, instances)
    return combine_kind_losses(
        from_masks(predictions[split.mask_rows], split.masks),
        from_points(predictions[split.points_rows], split.points),
        split.weights,
    )
