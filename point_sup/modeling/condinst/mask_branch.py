"""CondInst's mask branch (Tian et al., ECCV 2020, §3.2): FPN features -> a few-channel map at the
stride of its first input level (P3, stride 8), shared by every instance's dynamic mask head.

Each input level is refined by a 3x3 conv, upsampled to the first level's size (bilinear, by its
integer stride ratio, in the cell-centre frame of point_sup.modeling.condinst.dynamic_mask_head), summed, then
passed through ``num_convs`` 3x3 convs and a 1x1 conv to ``out_channels`` (CondInst: 128 channels, 4
convs, 8 outputs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from torch import nn

__all__ = ["MaskBranch"]


def _conv(in_channels: int, out_channels: int, kernel: int, norm: str) -> Conv2d:
    conv = Conv2d(
        in_channels,
        out_channels,
        kernel_size=kernel,
        padding=kernel // 2,
        bias=not norm,
        norm=get_norm(norm, out_channels) if norm else None,
        activation=F.relu,
    )
    weight_init.c2_msra_fill(conv)
    return conv


class MaskBranch(nn.Module):
    def __init__(
        self,
        input_shapes: Mapping[str, ShapeSpec],
        in_features: Sequence[str],
        channels: int = 128,
        num_convs: int = 4,
        norm: str = "BN",
        out_channels: int = 8,
    ):
        """
        Args:
            input_shapes: shapes of the backbone's features by name.
            in_features: the features used, finest first (``("p3", "p4", "p5")``).
            channels, num_convs, norm, out_channels: see the module docstring.
        """
        super().__init__()
        missing = [f for f in in_features if f not in input_shapes]
        if missing or not in_features:
            raise ValueError(
                f"MODEL.CONDINST.MASK_BRANCH.IN_FEATURES {list(in_features)} must be features of the "
                f"backbone {sorted(input_shapes)}"
            )
        strides = [input_shapes[f].stride for f in in_features]
        if any(s % strides[0] for s in strides):
            raise ValueError(
                f"mask-branch features must have strides that are multiples of the first's: {strides}"
            )
        self.in_features = list(in_features)
        self.stride = strides[0]
        self.factors = [s // strides[0] for s in strides]
        self.refine = nn.ModuleList(_conv(input_shapes[f].channels, channels, 3, norm) for f in in_features)
        self.tower = nn.Sequential(*(_conv(channels, channels, 3, norm) for _ in range(num_convs)))
        self.out = nn.Conv2d(channels, out_channels, kernel_size=1)
        weight_init.c2_msra_fill(self.out)
        self.out_channels = out_channels

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """
        Args:
            features: backbone features by name; each (N, C_f, H_f, W_f).

        Returns:
            (N, out_channels, H, W) at the stride of the first in-feature, (H, W) its size.
        """
        first = features[self.in_features[0]]
        height, width = first.shape[-2:]
        x = None
        for name, factor, refine in zip(self.in_features, self.factors, self.refine, strict=True):
            y = refine(features[name])
            if factor > 1:
                y = F.interpolate(y, scale_factor=factor, mode="bilinear", align_corners=False)
            y = y[..., :height, :width]
            x = y if x is None else x + y
        return self.out(self.tower(x))
