"""Modeling: shared point machinery, the point-supervised mask heads and CondInst/BoxInst
(registered on import)."""

from . import backbone, mask_rcnn_point_sup, point_rend_point_sup  # noqa: F401  (register components)
from .condinst import PointSupCondInst  # noqa: F401  (registers it)
from .implicit_point_rend import PointSupImplicitPointRendMaskHead  # noqa: F401  (registers it)
