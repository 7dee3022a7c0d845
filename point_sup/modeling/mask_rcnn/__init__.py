"""Mask R-CNN's mask head trained from labelled points (paper §3.2, Table 3a)."""

from .mask_head import MaskRCNNConvUpsamplePointSupHead, PointSupMaskRCNNConvUpsampleHead

__all__ = ["MaskRCNNConvUpsamplePointSupHead", "PointSupMaskRCNNConvUpsampleHead"]
