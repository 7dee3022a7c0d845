"""Implicit PointRend (paper §4): the generated point head (§4.1), the mask head, and the counting and
Detectron2 conversion of its parameters.

``point_sup.modeling.implicit_point_rend`` was one module before the package; its public names are
the package's, so existing imports keep working.
"""

from .mask_head import ImplicitPointRendPointSupHead, PointSupImplicitPointRendMaskHead
from .parameters import (
    LIGHT_VARIANT_OVERRIDES,
    convert_from_detectron2_implicit_pointrend,
    convert_to_detectron2_implicit_pointrend,
    count_parameters,
)
from .point_head import DynamicPointHead, fourier_position_encoding

__all__ = [
    "LIGHT_VARIANT_OVERRIDES",
    "DynamicPointHead",
    "ImplicitPointRendPointSupHead",
    "PointSupImplicitPointRendMaskHead",
    "convert_from_detectron2_implicit_pointrend",
    "convert_to_detectron2_implicit_pointrend",
    "count_parameters",
    "fourier_position_encoding",
]
