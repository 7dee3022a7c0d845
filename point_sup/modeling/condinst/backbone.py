"""The FCOS / CondInst backbone: ResNet + FPN with P6 and P7 computed from P5 (the FCOS paper's and
CondInst's choice; Detectron2's ``build_retinanet_resnet_fpn_backbone`` computes them from C5).

Registered in ``BACKBONE_REGISTRY`` as ``build_fcos_resnet_fpn_backbone``; it reads the same keys as
Detectron2's FPN backbones (``MODEL.RESNETS``, ``MODEL.FPN``).
"""

from __future__ import annotations

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, build_resnet_backbone
from detectron2.modeling.backbone.fpn import LastLevelP6P7

__all__ = ["build_fcos_resnet_fpn_backbone"]


@BACKBONE_REGISTRY.register()
def build_fcos_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """ResNet-FPN with outputs p3-p7 (given ``MODEL.FPN.IN_FEATURES`` res3-res5), P6/P7 from P5."""
    bottom_up = build_resnet_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(out_channels, out_channels, in_feature="p5"),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
