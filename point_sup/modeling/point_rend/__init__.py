"""PointRend's mask head trained from labelled points or masks (paper Table 3c)."""

from .mask_head import PointSupPointRendMaskHead
from .point_head import PointSupPointHead

__all__ = ["PointSupPointHead", "PointSupPointRendMaskHead"]
