"""Attention patterns as arrays."""

from __future__ import annotations

import numpy as np

from ..models.base import Run


def attention_patterns(run: Run) -> np.ndarray:
    """All captured attention patterns as float32 ``[n_layers, n_heads, T_dst, T_src]``.

    >>> run = adapter.run("The cat sat", capture=["attn_pattern"])   # doctest: +SKIP
    >>> attention_patterns(run).shape                                # doctest: +SKIP
    (4, 4, 4, 4)
    """
    pattern = run.stack("attn_pattern").numpy().astype(np.float32, copy=False)
    if not np.isfinite(pattern).all():
        raise FloatingPointError("the attention pattern contains NaN or inf: the model's activations overflowed")
    return pattern


def induction_scores(pattern: np.ndarray, period: int) -> np.ndarray:
    """Per-head induction score ``[n_layers, n_heads]`` for a sequence that repeats with ``period``:
    the mean attention from each token of the repeat to the token right after its earlier occurrence
    (Olsson et al. 2022), i.e. the diagonal at offset ``period - 1``.
    """
    T = pattern.shape[-1]
    dst = np.arange(period, T)
    return pattern[..., dst, dst - period + 1].mean(-1)
