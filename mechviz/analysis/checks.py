"""Argument checks shared by the analysis functions: a bad value is an error, never silently coerced."""

from __future__ import annotations

import operator

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


def token_id(adapter, token, what: str = "answer") -> int:
    """One vocabulary id from an id or a text that is exactly one token (its leading space included)."""
    if not isinstance(token, str):
        try:
            if isinstance(token, bool):  # True is not token 1
                raise TypeError
            i = operator.index(token)
        except TypeError:
            article = "an" if what[0] in "aeiou" else "a"
            raise ValueError(f"{article} {what} must be a token id (a whole number) or one token's text, "
                             f"got {token!r}") from None
        if not 0 <= i < adapter.d_vocab:
            raise ValueError(f"{what} id {i} is outside the vocabulary (0..{adapter.d_vocab - 1})")
        return i
    tok = adapter.tokenizer
    ids = list(tok(token, add_special_tokens=False)["input_ids"]) if tok is not None else []
    if len(ids) != 1:
        raise ValueError(f"{what} {token!r} is {len(ids)} tokens; {'an' if what[0] in 'aeiou' else 'a'} {what} must be exactly one token "
                         "(mind the leading space), or pass token ids")
    return ids[0]
