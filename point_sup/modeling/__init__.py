"""Modeling, one package per model family (importing this registers every component):

``common``: point machinery shared by all heads; ``mask_rcnn``, ``point_rend``, ``implicit_point_rend``:
the ROI mask heads (``ROI_MASK_HEAD_REGISTRY``); ``condinst``: CondInst / BoxInst
(``META_ARCH_REGISTRY``) and its FCOS backbone (``BACKBONE_REGISTRY``).
"""

from . import condinst, implicit_point_rend, mask_rcnn, point_rend  # noqa: F401  (register components)
from .condinst import PointSupCondInst
from .implicit_point_rend import PointSupImplicitPointRendMaskHead

__all__ = ["PointSupCondInst", "PointSupImplicitPointRendMaskHead"]
