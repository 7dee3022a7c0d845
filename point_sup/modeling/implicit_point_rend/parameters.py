"""Where the Implicit PointRend head's parameters go (paper §4.3): counting them, the documented
lighter variant, and their names in Detectron2's checkpoints.

The counts of the paper's COCO head and of the variants, and how they follow from the layer widths:
docs/implementation.md, *Implicit PointRend: parameter counts*.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .mask_head import PointSupImplicitPointRendMaskHead

__all__ = [
    "LIGHT_VARIANT_OVERRIDES",
    "convert_from_detectron2_implicit_pointrend",
    "convert_to_detectron2_implicit_pointrend",
    "count_parameters",
]

# The lighter variant (``cfg.merge_from_list(LIGHT_VARIANT_OVERRIDES)``): a parameter head of FC width
# 256 instead of 1024 (its prediction layer, FC width x num_params, is most of the head) and a
# class-agnostic point head. Why these two keys: docs/implementation.md, *Implicit PointRend:
# parameter counts*.
LIGHT_VARIANT_OVERRIDES: list = [
    "MODEL.ROI_MASK_HEAD.FC_DIM",
    256,
    "MODEL.POINT_HEAD.CLS_AGNOSTIC_MASK",
    True,
]


def count_parameters(head: nn.Module) -> dict[str, int]:
    """Trainable parameters of an Implicit PointRend mask head, split where the size goes.

    Returns:
        ``{"total", "param_head_hidden", "param_head_prediction", "generated_per_instance"}``:
        all trainable parameters; those of the parameter head before its prediction layer; those
        of the prediction layer (weights + biases; with PARAMS_RANK > 0 the coefficient layer and
        the basis together); and ``num_params`` of the generated MLP.
    """
    assert isinstance(head, PointSupImplicitPointRendMaskHead)
    layers = [head.param_head.prediction] + ([head.param_basis] if head.param_basis is not None else [])
    prediction = sum(p.numel() for layer in layers for p in layer.parameters())
    total = sum(p.numel() for p in head.parameters() if p.requires_grad)
    return {
        "total": total,
        "param_head_hidden": total - prediction,
        "param_head_prediction": prediction,
        "generated_per_instance": head.point_head.num_params,
    }


# (ours, Detectron2's) name pairs: the parameter head has Detectron2's ConvFCHead names below it.
_NAME_PAIRS = (
    ("param_head.", "parameter_head."),
    ("point_head.pos_enc_gaussian", "point_head.positional_encoding_gaussian_matrix"),
)


def _rename(state_dict: Mapping[str, torch.Tensor], pairs: Sequence[tuple[str, str]]) -> dict:
    out = {}
    for key, value in state_dict.items():
        new = next((key.replace(src, dst, 1) for src, dst in pairs if src in key), key)
        out[new] = value
    return out


def convert_from_detectron2_implicit_pointrend(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Detectron2's ``ImplicitPointRendMaskHead`` state dict (or a whole model's) → ours.

    Only mask-head keys are renamed (wherever they sit, e.g. under ``roi_heads.mask_head.``); every
    other key, and every tensor, is kept as is: both heads use the same parameter-vector layout and
    the same positional-encoding matrix shape, so the weights need no reshaping.
    """
    return _rename(state_dict, [(d2, ours) for ours, d2 in _NAME_PAIRS])


def convert_to_detectron2_implicit_pointrend(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Our state dict (or a whole model's) → Detectron2's ``ImplicitPointRendMaskHead`` names.

    Expects the current names; a checkpoint with point_sup's former parameter-head names loads into
    the head first (:class:`~point_sup.modeling.common.conv_fc_head.ConvFCHead` renames them). A head with
    ``PARAMS_RANK > 0`` (a ``param_basis``) has no Detectron2 counterpart: ValueError.
    """
    basis = [k for k in state_dict if "param_basis." in k]
    if basis:
        raise ValueError(
            f"{basis[0]}: a low-rank Implicit PointRend (MODEL.IMPLICIT_POINTREND.PARAMS_RANK > 0) "
            "has no Detectron2 ImplicitPointRendMaskHead equivalent"
        )
    return _rename(state_dict, _NAME_PAIRS)
