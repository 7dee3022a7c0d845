"""What a value read from JSON is: the one definition of a number in a P_N file or request."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["is_finite_number", "is_integer", "is_number"]


def is_number(v: Any) -> bool:
    """Whether ``v`` is a JSON number as a parser returns it: an int or a float, not a bool (a
    subclass of int: ``true`` is not 1 here). The one definition of a number in a P_N file."""
    return isinstance(v, int | float) and not isinstance(v, bool)


def is_finite_number(v: Any) -> bool:
    """Whether ``v`` is a finite JSON number (:func:`is_number`, not inf or NaN)."""
    return is_number(v) and math.isfinite(v)


def is_integer(v: Any) -> bool:
    """Whether ``v`` is a JSON integer as a parser returns it: an ``int`` that is not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)
