"""Type checks shared by every setting and argument that must be a number.

``bool`` is an ``int`` in Python (``True + 1 == 2``); a setting of ``True`` is a mistake,
never a count, so both checks refuse it. numpy's numbers pass (a sweep may hand them over).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np


def is_whole_number(value: Any) -> bool:
    """An integer (numpy's included), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """A finite int or float (numpy's included), not a bool; an int past float64's range is not."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
