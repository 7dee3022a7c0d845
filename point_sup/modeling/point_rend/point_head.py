"""PointRend's point head (Kirillov et al., CVPR 2020; the paper's Table 3c): a per-point MLP over
fine-grained features and the coarse prediction at the point.

Inputs are per point: (R, C_fine, P) features sampled at box-relative points and (R, K_coarse, P)
coarse logits interpolated there (coordinate frames: point_sup.modeling.common.point_features).
Why it is written here rather than taken from Detectron2's ``StandardPointHead``:
docs/implementation.md, *PointRend*.
"""

from __future__ import annotations

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

__all__ = ["PointSupPointHead"]


class PointSupPointHead(nn.Module):
    """PointRend's point head: a per-point MLP over fine-grained and coarse prediction features."""

    @configurable
    def __init__(
        self,
        *,
        fine_channels: int,
        coarse_channels: int,
        fc_dim: int,
        num_fc: int,
        num_classes: int,
        coarse_pred_each_layer: bool,
    ):
        """
        Args:
            fine_channels: channels of the fine-grained features at a point (sum over levels).
            coarse_channels: channels of the coarse prediction at a point.
            fc_dim, num_fc: hidden layers of the MLP.
            num_classes: output channels (1 = class-agnostic).
            coarse_pred_each_layer: concatenate the coarse prediction to every layer's input, not
                only the first (PointRend's default).
        """
        super().__init__()
        self.coarse_pred_each_layer = coarse_pred_each_layer
        in_dim = fine_channels + coarse_channels
        fcs = []
        for _ in range(num_fc):
            fcs.append(nn.Conv1d(in_dim, fc_dim, kernel_size=1))
            in_dim = fc_dim + (coarse_channels if coarse_pred_each_layer else 0)
        self.fcs = nn.ModuleList(fcs)
        self.predictor = nn.Conv1d(in_dim, num_classes, kernel_size=1)
        for fc in self.fcs:
            weight_init.c2_msra_fill(fc)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.constant_(self.predictor.bias, 0.0)

    @classmethod
    def from_config(cls, cfg, fine_channels: int, coarse_channels: int) -> dict:
        head = cfg.MODEL.POINT_HEAD
        return {
            "fine_channels": fine_channels,
            "coarse_channels": coarse_channels,
            "fc_dim": head.FC_DIM,
            "num_fc": head.NUM_FC,
            "num_classes": 1 if head.CLS_AGNOSTIC_MASK else head.NUM_CLASSES,
            "coarse_pred_each_layer": head.COARSE_PRED_EACH_LAYER,
        }

    def forward(
        self,
        fine_features: torch.Tensor,
        coarse_features: torch.Tensor,
        classes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            fine_features: (R, fine_channels, P).
            coarse_features: (R, coarse_channels, P) coarse logits at the same points.
            classes: optional (R,) int64; if given (and the head is class-specific) only the
                predictor row of each instance's class is evaluated (inference: the same logits as
                selecting that row from all K, up to float rounding, K times cheaper).

        Returns:
            (R, num_classes, P) point logits, or (R, 1, P) when ``classes`` is given.
        """
        x = torch.cat([fine_features, coarse_features], dim=1)
        for fc in self.fcs:
            x = F.relu(fc(x))
            if self.coarse_pred_each_layer:
                x = torch.cat([x, coarse_features], dim=1)
        if classes is None or self.predictor.out_channels == 1:
            return self.predictor(x)
        # (R, 1, in) @ (R, in, P) + (R, 1, 1): each instance's own row of the 1x1 conv.
        weight = self.predictor.weight[classes, :, 0].unsqueeze(1)
        bias = self.predictor.bias[classes].view(-1, 1, 1)
        return torch.baddbmm(bias, weight, x)
