"""Deprecated: moved to :mod:`point_sup.modeling.common.point_loss`; removed in the next release."""

from ._moved import alias

__all__ = alias(__name__, "point_sup.modeling.common.point_loss", "IGNORE_LABEL", "PADDING_LABEL")
