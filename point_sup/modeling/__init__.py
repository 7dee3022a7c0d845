"""Modeling: shared point machinery and the point-supervised mask heads (registered on import)."""

from . import mask_rcnn_point_sup, point_rend_point_sup  # noqa: F401  (register the mask heads)
from .implicit_point_rend import PointSupImplicitPointRendMaskHead  # noqa: F401  (registers it)
