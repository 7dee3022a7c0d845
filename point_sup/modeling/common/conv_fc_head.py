"""The ConvFC head of both PointRend heads: PointRend's coarse mask head and Implicit PointRend's
parameter head are this one architecture with different outputs.

(R, C, S, S) RoI features on a regular grid
(:meth:`~point_sup.modeling.common.point_features.FeatureSampler.on_grid`)
→ [1x1 conv to ``conv_dim`` + ReLU, only if C > conv_dim] → 2x2 stride-2 conv + ReLU → flatten →
FC + ReLU (``fc_dims``) → a linear prediction reshaped to ``output_shape``: (K, 7, 7) coarse mask
logits for PointRend, (num_params,) generated point-head parameters for Implicit PointRend.

It is Detectron2's ``detectron2.projects.point_rend.mask_head.ConvFCHead``, subclassed: the same
layers, initialisation and parameter names (``reduce_channel_dim_conv``, ``reduce_spatial_dim_conv``,
``fc1`` ..., ``prediction``), so Detectron2's PointRend and Implicit PointRend weights load as they
are. The subclass adds a clear error for a configuration Detectron2's class would only fail on in
the forward pass, and loads point_sup's former parameter names (``convs.{k}``, ``fcs.{k}``,
``reduce_channels``, ``reduce_spatial``, ``predictor``) and Detectron2's pre-v2 ones
(``coarse_mask_fc{k}``), so older checkpoints still load.
"""

from __future__ import annotations

from collections.abc import Sequence

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.projects.point_rend.mask_head import ConvFCHead as _Detectron2ConvFCHead
from torch import nn

__all__ = ["ConvFCHead", "build_conv_fc_head"]


class ConvFCHead(_Detectron2ConvFCHead):
    """Detectron2's PointRend ConvFC head with explicit arguments (see the module docstring)."""

    def __init__(
        self, input_shape: ShapeSpec, *, conv_dim: int, fc_dims: Sequence[int], output_shape: Sequence[int]
    ) -> None:
        """
        Args:
            input_shape: channels C and (even) side S of the pooled RoI features.
            conv_dim: channels of the convs (ROI_MASK_HEAD.CONV_DIM); C must be at least this.
            fc_dims: widths of the hidden FC layers (NUM_FC x FC_DIM), at least one.
            output_shape: shape of one RoI's prediction, e.g. (K, 7, 7) or (num_params,).
        """
        if not fc_dims:
            raise ValueError("The ConvFC head needs at least one FC layer (ROI_MASK_HEAD.NUM_FC >= 1)")
        if input_shape.channels < conv_dim:
            # PointRend's rule: channels are only ever reduced (its 2x2 conv expects CONV_DIM inputs).
            raise ValueError(
                f"Pooled features have {input_shape.channels} channels, fewer than CONV_DIM={conv_dim}"
            )
        super().__init__(
            input_shape, conv_dim=conv_dim, fc_dims=list(fc_dims), output_shape=tuple(output_shape)
        )

    @property
    def predictor(self) -> nn.Linear:
        """The prediction layer under point_sup's former name for the parameter head's."""
        return self.prediction

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        convs = ["reduce_spatial_dim_conv"]
        if hasattr(self, "reduce_channel_dim_conv"):
            convs.insert(0, "reduce_channel_dim_conv")
        renames = {f"convs.{k}.": f"{name}." for k, name in enumerate(convs)}
        renames.update(
            {
                "reduce_channels.": "reduce_channel_dim_conv.",
                "reduce_spatial.": "reduce_spatial_dim_conv.",
                "predictor.": "prediction.",
                "coarse_mask_fc": "fc",
            }
        )
        for key in [k for k in state_dict if k.startswith(prefix)]:
            name = key[len(prefix) :]
            if name.startswith("fcs."):
                index, rest = name[len("fcs.") :].split(".", 1)
                new = f"fc{int(index) + 1}.{rest}"
            else:
                new = next(
                    (cur + name[len(old) :] for old, cur in renames.items() if name.startswith(old)), name
                )
            if new != name:
                state_dict[prefix + new] = state_dict.pop(key)
        # nn.Module's own loading (Detectron2's override skips it): strict checks of unexpected keys.
        nn.Module._load_from_state_dict(
            self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


def build_conv_fc_head(cfg: CfgNode, channels: int, output_shape: Sequence[int]) -> ConvFCHead:
    """The ConvFC head of ``MODEL.ROI_MASK_HEAD`` (``POOLER_RESOLUTION``, ``CONV_DIM``, ``NUM_FC`` x
    ``FC_DIM``) for RoI features of ``channels`` channels, predicting ``output_shape`` per RoI."""
    head = cfg.MODEL.ROI_MASK_HEAD
    side = head.POOLER_RESOLUTION
    return ConvFCHead(
        ShapeSpec(channels=channels, height=side, width=side),
        conv_dim=head.CONV_DIM,
        fc_dims=[head.FC_DIM] * head.NUM_FC,
        output_shape=output_shape,
    )
