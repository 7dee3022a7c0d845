"""Deprecated: moved to :mod:`point_sup.modeling.point_rend`; removed in the next release."""

from ._moved import alias

__all__ = alias(__name__, "point_sup.modeling.point_rend")
