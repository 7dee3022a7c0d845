"""Deprecated: moved to :mod:`point_sup.modeling.common.point_features`; removed in the next release."""

from ._moved import alias
from .common.point_features import FeatureSampler

__all__ = alias(__name__, "point_sup.modeling.common.point_features")


def sample_named_features(features, names, feature_scales, boxes, point_coords):
    """Deprecated: :meth:`FeatureSampler.at_points` of ``FeatureSampler(tuple(names), feature_scales)``."""
    return FeatureSampler(tuple(names), feature_scales).at_points(features, boxes, point_coords)


def roi_grid_features(features, names, feature_scales, boxes, side):
    """Deprecated: :meth:`FeatureSampler.on_grid` of ``FeatureSampler(tuple(names), feature_scales)``."""
    return FeatureSampler(tuple(names), feature_scales).on_grid(features, boxes, side)


__all__ += ["roi_grid_features", "sample_named_features"]
