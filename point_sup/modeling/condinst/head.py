"""CondInst's head on FCOS (Tian et al., ECCV 2020, §3.2) and the instances whose masks it generates.

:class:`CondInstHead` is Detectron2's ``FCOSHead`` plus CondInst's *controller*: one more 3x3 conv on
the box tower predicting, at every location of every level, the ``num_params`` parameters of a
dynamic mask head (point_sup.modeling.condinst.dynamic_mask_head). :class:`MaskInstances` holds the
locations whose heads are run: the positives in training, the detections (or given boxes) at
inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.meta_arch.fcos import FCOSHead
from torch import nn

__all__ = ["CondInstHead", "MaskInstances"]


class CondInstHead(FCOSHead):
    """Detectron2's ``FCOSHead`` plus CondInst's controller: a 3x3 conv on the box tower predicting
    ``num_params`` dynamic-mask-head parameters per location (initialised N(0, 0.01²), bias 0)."""

    def __init__(self, *, input_shape: list[ShapeSpec], conv_dims: list[int], num_params: int, **kwargs):
        super().__init__(input_shape=input_shape, conv_dims=conv_dims, **kwargs)
        self.controller = nn.Conv2d(conv_dims[-1], num_params, kernel_size=3, stride=1, padding=1)
        nn.init.normal_(self.controller.weight, std=0.01)
        nn.init.constant_(self.controller.bias, 0.0)

    def forward(self, features: list[torch.Tensor]):
        """
        Args:
            features: L feature maps (N, C, H_l, W_l).

        Returns:
            Four lists over levels: class logits (N, K, H_l, W_l), box deltas (N, 4, ...),
            centerness (N, 1, ...), controller parameters (N, num_params, H_l, W_l).
        """
        if len(features) != self._num_features:
            raise ValueError(f"expected {self._num_features} feature levels, got {len(features)}")
        logits, deltas, ctrness, params = [], [], [], []
        for feature in features:
            logits.append(self.cls_score(self.cls_subnet(feature)))
            box_feature = self.bbox_subnet(feature)
            deltas.append(self.bbox_pred(box_feature))
            ctrness.append(self.ctrness(box_feature))
            params.append(self.controller(box_feature))
        return logits, deltas, ctrness, params


@dataclass
class MaskInstances:
    """The R instances whose masks are predicted: positives (training) or detections (inference).

    Attributes:
        image_index: (R,) int64, the image of each instance.
        params: (R, num_params) its generated dynamic-head parameters.
        locations: (R, 2) its FCOS location (anchor point), input coordinates (x, y).
        sizes_of_interest: (R,) the normaliser of its relative coordinates (8 x its level's stride).
        gt_index: (R,) int64, its object's index in its image's ground truth (training only).
    """

    image_index: torch.Tensor
    params: torch.Tensor
    locations: torch.Tensor
    sizes_of_interest: torch.Tensor
    gt_index: torch.Tensor | None = None

    @classmethod
    def at_locations(
        cls,
        image: int,
        flat: torch.Tensor,
        params: torch.Tensor,
        centers: torch.Tensor,
        sizes_of_interest: torch.Tensor,
    ) -> MaskInstances:
        """The instances of image ``image`` at the locations ``flat`` ((R,) int64, indices over all
        levels in order), from the per-location ``params`` (N, R_total, P), ``centers`` (R_total, 2)
        and ``sizes_of_interest`` (R_total,)."""
        return cls(
            image_index=torch.full_like(flat, image),
            params=params[image, flat],
            locations=centers[flat],
            sizes_of_interest=sizes_of_interest[flat],
        )

    def select(self, rows: torch.Tensor) -> MaskInstances:
        """The instances at ``rows`` ((R,) bool or int64)."""
        return MaskInstances(
            self.image_index[rows],
            self.params[rows],
            self.locations[rows],
            self.sizes_of_interest[rows],
            None if self.gt_index is None else self.gt_index[rows],
        )

    def per_instance(self, per_image: list[torch.Tensor]) -> torch.Tensor:
        """Row ``gt_index`` of the image of each instance, from per-image tensors (G_i, ...): (R, ...).

        Each image's offset in the concatenation is a Python number (its predecessors' lengths): no
        tensor is made from a list on the device and nothing is read back from it.
        """
        flat = self.gt_index
        for i, rows in enumerate(per_image[:-1]):
            if len(rows):
                flat = flat + (self.image_index > i) * len(rows)
        return torch.cat(per_image)[flat]
