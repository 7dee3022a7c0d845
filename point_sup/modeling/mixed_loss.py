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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from detectron2.structures import Instances

from ..config import MIXED_SUP_WEIGHTING
from ..data.mixed_supervision import Supervision

__all__ = ["MixedSplit", "combine_kind_losses", "drop_box_only", "kind_weights", "split_by_supervision"]


def kind_weights(counts: Sequence[int], weighting: str = "instances") -> tuple[float, ...]:
    """The weight of each kind's loss (see the module docstring) for ``counts[k]`` instances of kind
    k: (R_mask, R_points) for the ROI heads, (R_mask, R_points, R_box) for CondInst with BoxInst's
    box losses; 0 for a kind without instances."""
    if weighting not in MIXED_SUP_WEIGHTING:
        raise ValueError(f"MODEL.MIXED_SUP.WEIGHTING must be one of {MIXED_SUP_WEIGHTING}, got {weighting!r}")
    total = sum(counts)
    if total == 0:
        return tuple(0.0 for _ in counts)
    if weighting == "sum":
        return tuple(float(n > 0) for n in counts)
    return tuple(n / total for n in counts)


@dataclass(frozen=True)
class MixedSplit:
    """The mask-head instances of a batch split by kind, order kept within each kind.

    Attributes:
        masks, points: per image, the ``MASK`` / ``POINTS`` instances (``Instances`` of any length).
        mask_rows, points_rows: (R,) bool over the concatenation of the input instances (the rows of
            the head's per-instance predictions), R = total number of input instances.
        weights: (w_mask, w_points) of :func:`kind_weights`.
    """

    masks: list[Instances]
    points: list[Instances]
    mask_rows: torch.Tensor
    points_rows: torch.Tensor
    weights: tuple[float, float]

    @property
    def supervised_rows(self) -> torch.Tensor:
        """(R,) bool: the instances that get a mask loss (not ``BOX``)."""
        return self.mask_rows | self.points_rows


def _kinds(inst: Instances) -> torch.Tensor:
    if len(inst) == 0:
        return torch.zeros((0,), dtype=torch.int64)
    if not inst.has("gt_supervision"):
        raise ValueError(
            "MODEL.MIXED_SUP.ENABLED is on but the training instances have no gt_supervision: "
            "train with point_sup's dataset mapper (PointSupDatasetMapper), which sets it"
        )
    return inst.gt_supervision


def drop_box_only(instances: Sequence[Instances]) -> list[Instances]:
    """The instances without the ``BOX`` ones (step 1 of the module docstring), per image."""
    return [inst[_kinds(inst) != Supervision.BOX] if len(inst) else inst for inst in instances]


def split_by_supervision(instances: Sequence[Instances], weighting: str = "instances") -> MixedSplit:
    """Split training instances by their ``gt_supervision``.

    Args:
        instances: per image, the mask head's training instances; each non-empty one has
            ``gt_supervision`` (R_i,) (the mixed-supervision dataset mapper sets it on the ground
            truth, and the ROI heads copy it to the matched proposals).
        weighting: ``MODEL.MIXED_SUP.WEIGHTING``.
    """
    kinds = [_kinds(inst) for inst in instances]
    masks = [inst[k == Supervision.MASK] for inst, k in zip(instances, kinds, strict=True)]
    points = [inst[k == Supervision.POINTS] for inst, k in zip(instances, kinds, strict=True)]
    device = kinds[0].device if kinds and any(len(k) for k in kinds) else torch.device("cpu")
    flat = torch.cat([k.to(device) for k in kinds]) if kinds else torch.zeros((0,), dtype=torch.int64)
    mask_rows, points_rows = flat == Supervision.MASK, flat == Supervision.POINTS
    weights = kind_weights((int(mask_rows.sum()), int(points_rows.sum())), weighting)
    return MixedSplit(masks, points, mask_rows, points_rows, weights)


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
