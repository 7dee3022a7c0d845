"""Deprecated: moved to :mod:`point_sup.modeling.mask_rcnn.mask_head`; removed in the next release."""

from ._moved import alias

__all__ = alias(__name__, "point_sup.modeling.mask_rcnn.mask_head", "roi_grid_point_loss")
