"""Deprecated: moved to :mod:`point_sup.modeling.implicit_point_rend.point_head`; removed next release."""

from ._moved import alias

__all__ = alias(__name__, "point_sup.modeling.implicit_point_rend.point_head")
