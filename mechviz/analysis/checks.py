"""Argument checks shared by the analysis functions: a bad value is an error, never silently coerced."""

from __future__ import annotations

import numpy as np


def positive_int(value, name: str) -> int:
    """``value`` as an int >= 1, or a ValueError naming ``name`` (no silent rounding or clamping).

    >>> positive_int(3, "k")
    3
    >>> positive_int(-2, "k")
    Traceback (most recent call last):
    ...
    ValueError: k must be a whole number >= 1, got -2
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    return int(value)
