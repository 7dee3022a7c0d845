"""Deprecated: moved to :mod:`point_sup.modeling.common.mixed_loss`; removed in the next release."""

from ._moved import alias

__all__ = alias(__name__, "point_sup.modeling.common.mixed_loss")
