"""A tiny checker for course exercises: compare a student's answer with the library's own result.

:func:`check` prints one line, ``✓ name: right`` or ``✗ name: wrong: <what differs>``, and returns
whether the answer is right. An answer that is a function still raising :class:`NotImplementedError`
(the stub a chapter hands out), or a :class:`NotImplementedError` raised while computing it, reads
``✗ name: not done yet``.

>>> check("the answer", 42, 42)
✓ the answer: right
True
>>> check("a vector", [1.0, 2.0, 3.5], [1.0, 2.0, 3.0])
✗ a vector: wrong: 1 of 3 values differ (largest at [2]: got 3.5, expected 3)
False
>>> def todo():
...     raise NotImplementedError
>>> check("influence", todo, 1.0)
✗ influence: not done yet
False
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

__all__ = ["check", "compare"]


def _as_array(x):
    """numpy view of a tensor / array / number / sequence of numbers, or None for anything else."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):          # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    if isinstance(x, (bool, np.bool_)):
        return np.asarray(x)
    if isinstance(x, (int, float, complex, np.number, np.ndarray)):
        return np.asarray(x)
    if isinstance(x, (list, tuple)) and all(not isinstance(v, (str, bytes, Mapping)) for v in x):
        try:
            a = np.asarray(x)
        except ValueError:   # ragged
            return None
        return a if a.dtype.kind in "biufc" else None
    return None


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.6g}"
    if isinstance(v, (np.integer, np.bool_)):
        return str(v.item())
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def compare(got, expected, *, atol: float = 1e-6) -> str | None:
    """``None`` if ``got`` matches ``expected`` (numbers within ``atol`` plus ``1e-6`` relative; same shape;
    sequences and mappings element by element; anything else by ``==``), else a short description of
    the first difference.

    >>> compare((1, "a"), (1, "b"))
    "at [1]: got 'a', expected 'b'"
    >>> compare(np.zeros((2, 3)), np.zeros(3))
    'shape (2, 3), expected (3,)'
    """
    a, e = _as_array(got), _as_array(expected)
    if a is not None and e is not None:
        if a.shape != e.shape:
            return f"shape {a.shape}, expected {e.shape}"
        if a.dtype.kind in "biufc" and e.dtype.kind in "biufc":
            a64, e64 = a.astype(np.complex128 if "c" in a.dtype.kind + e.dtype.kind else np.float64), \
                e.astype(np.complex128 if "c" in a.dtype.kind + e.dtype.kind else np.float64)
            nan_a, nan_e = np.isnan(a64), np.isnan(e64)
            close = np.isclose(a64, e64, rtol=1e-6, atol=atol) | (nan_a & nan_e)
            if close.all():
                return None
            if a.ndim == 0:
                return f"got {_fmt(a.item())}, expected {_fmt(e.item())}"
            bad = np.argwhere(~close)
            diff = np.where(close, 0, np.abs(np.nan_to_num(a64 - e64, nan=np.inf)))
            worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape))
            where = ", ".join(map(str, worst))
            return (f"{len(bad)} of {a.size} values differ (largest at [{where}]: got {_fmt(a[worst])}, "
                    f"expected {_fmt(e[worst])})")
        if np.array_equal(a, e):
            return None
        return f"got {_fmt(got)}, expected {_fmt(expected)}"
    if isinstance(expected, Mapping) and isinstance(got, Mapping):
        if set(got) != set(expected):
            return f"keys {sorted(map(str, got))}, expected {sorted(map(str, expected))}"
        for k in expected:
            d = compare(got[k], expected[k], atol=atol)
            if d:
                return f"at [{k!r}]: {d}"
        return None
    if isinstance(expected, (list, tuple)) and isinstance(got, (list, tuple)):
        if len(got) != len(expected):
            return f"{len(got)} items, expected {len(expected)}"
        for i, (g, x) in enumerate(zip(got, expected)):
            d = compare(g, x, atol=atol)
            if d:
                return f"at [{i}]: {d}" if not d.startswith("at [") else f"at [{i}]{d[3:]}"
        return None
    if isinstance(expected, float) and isinstance(got, (int, float)) and math.isnan(expected) and math.isnan(got):
        return None
    try:
        same = bool(got == expected)
    except Exception:  # noqa: BLE001 - objects whose == raises (ambiguous truth) are just not equal
        same = False
    return None if same else f"got {_fmt(got)}, expected {_fmt(expected)}"


def check(name: str, got, expected, *, atol: float = 1e-6) -> bool:
    """Print whether ``got`` (the student's answer, or a no-argument function computing it) matches
    ``expected`` and return that as a bool. Numbers, numpy arrays, torch tensors and (nested) sequences
    are compared within ``atol`` (plus a relative 1e-6); other values with ``==``. A stub raising
    :class:`NotImplementedError` prints ``✗ {name}: not done yet``; ``None`` (a stub that returns
    nothing) reads the same.

    >>> import torch
    >>> check("logits", torch.tensor([0.5, 1.0]), np.array([0.5, 1.0 + 1e-9]))
    ✓ logits: right
    True
    >>> check("path", [("embed", 4), ("logit", 7)], [("embed", 4), ("logit", 8)])
    ✗ path: wrong: at [1][1]: got 7, expected 8
    False
    """
    if callable(got) and not hasattr(got, "shape"):
        try:
            got = got()
        except NotImplementedError:
            got = NotImplemented
    if got is NotImplemented or (got is None and expected is not None):
        print(f"✗ {name}: not done yet")
        return False
    diff = compare(got, expected, atol=atol)
    print(f"✓ {name}: right" if diff is None else f"✗ {name}: wrong: {diff}")
    return diff is None
