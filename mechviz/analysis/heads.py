"""Head detectors: how well each head's attention matches a pattern a kind of head would show, with
TransformerLens' ``transformer_lens.head_detector.detect_head`` semantics (equal on the same model and tokens).

A detection pattern ``D`` ``[T, T]`` (lower triangular, rows = destination) marks the query-key pairs a head
of that kind attends along: ``previous_token`` (the token before), ``duplicate_token`` (earlier copies of
the same token), ``induction`` (the token after an earlier copy: Olsson et al. 2022), ``current_token``
(the diagonal; TL has no name for it, it is ``detect_head(model, seq, torch.eye(T))``) or a user pattern.
Each head's score, for its pattern ``A``:

* ``error_measure="mul"`` (TL's default): ``(A * D).sum() / A.sum()``, the share of the head's attention on
  the marked pairs (``exclude_bos`` zeroes ``A``'s first column first, ``exclude_current_token`` its diagonal);
* ``"abs"``: ``1 - round(|A - D|.sum() / T, 3)`` (the exclusions zero those entries of ``|A - D|``), rounded
  to 3 decimals as TL rounds it.

The induction detector's default input is ``[BOS] + R + R`` with ``R`` seeded random tokens, as Olsson et al.;
several sequences are scored one by one and averaged, as ``detect_head`` does for a list of prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .checks import positive_int

KINDS = ("previous_token", "duplicate_token", "induction", "current_token", "pattern")
ERROR_MEASURES = ("mul", "abs")


def detection_pattern(kind: str, tokens) -> np.ndarray:
    """The detection pattern ``[T, T]`` (float64, 0/1, lower triangular) of one of :data:`KINDS` (not
    ``"pattern"``) for token ids ``tokens`` ``[T]``, as TL's ``get_<kind>_head_detection_pattern``."""
    ids = np.asarray(tokens).reshape(-1)
    T = len(ids)
    if kind == "previous_token":
        return np.eye(T, k=-1)
    if kind == "current_token":
        return np.eye(T)
    if kind in ("duplicate_token", "induction"):
        dup = (ids[:, None] == ids[None, :]).astype(np.float64)
        np.fill_diagonal(dup, 0)
        dup = np.tril(dup)
        if kind == "duplicate_token":
            return dup
        out = np.zeros_like(dup)
        out[:, 1:] = dup[:, :-1]  # attend to the token after each earlier copy
        return np.tril(out)
    raise ValueError(f"unknown head kind {kind!r}; known: {', '.join(k for k in KINDS if k != 'pattern')}")


def pattern_scores(patterns: np.ndarray, detection: np.ndarray, *, exclude_bos: bool = False,
                   exclude_current_token: bool = False, error_measure: str = "mul") -> np.ndarray:
    """Scores ``[L, H]`` of attention patterns ``[L, H, T, T]`` against ``detection`` ``[T, T]`` (see the
    module docstring); TL's ``compute_head_attention_similarity_score`` for every head at once."""
    if error_measure not in ERROR_MEASURES:
        raise ValueError(f"error_measure must be one of {ERROR_MEASURES}, got {error_measure!r}")
    A = np.asarray(patterns, np.float64)
    D = np.asarray(detection, np.float64)
    T = A.shape[-1]
    if D.shape != (T, T) or not np.array_equal(D, np.tril(D)):
        raise ValueError(f"the detection pattern must be a lower-triangular [T, T] matrix with T = {T} tokens "
                         f"(destination rows, source columns); got shape {D.shape}"
                         + ("" if D.shape != (T, T) else " with entries above the diagonal"))
    keep = np.ones((T, T))
    if exclude_bos:
        keep[:, 0] = 0
    if exclude_current_token:
        np.fill_diagonal(keep, 0)
    if error_measure == "mul":
        A = A * keep
        return (A * D).sum((-1, -2)) / A.sum((-1, -2))
    diff = np.abs(A - D) * keep
    return np.vectorize(lambda s: 1 - round(float(s), 3))(diff.sum((-1, -2)) / T)


def repeated_random_tokens(adapter, rep_len: int = 40, n_seqs: int = 1, seed: int = 0) -> np.ndarray:
    """``[n_seqs, 1 + 2 rep_len]`` token ids: BOS (where the model has one), then ``R + R`` with ``R`` drawn
    uniformly (seeded) from the tokenizer's vocabulary, the BOS id left out."""
    rep_len, n_seqs = positive_int(rep_len, "rep_len"), positive_int(n_seqs, "n_seqs")
    tok = adapter.tokenizer
    vocab = min(adapter.d_vocab, len(tok)) if tok is not None else adapter.d_vocab
    bos = adapter.bos_id() if adapter.prepend_bos else None
    g = torch.Generator().manual_seed(int(seed))
    r = torch.randint(0, vocab - (bos is not None), (n_seqs, rep_len), generator=g)
    if bos is not None:
        r = r + (r >= bos).long()
    parts = ([torch.full((n_seqs, 1), bos)] if bos is not None else []) + [r, r]
    return torch.cat(parts, 1).numpy()


@dataclass
class HeadScores:
    """Scores ``[L, H]`` of every head as a ``kind`` head (see the module docstring), averaged over the
    sequences ``tokens`` ``[n, T]``; ``token_strs`` and ``detection`` ``[T, T]`` are those of the first
    sequence, and ``patterns`` ``[L, H, T, T]`` its attention (what a click on a head shows)."""

    kind: str
    scores: np.ndarray
    tokens: np.ndarray
    token_strs: list[str]
    detection: np.ndarray
    patterns: np.ndarray
    error_measure: str = "mul"

    def top(self, n: int = 1) -> list[tuple[int, int]]:
        """The ``n`` best-scoring heads as ``(layer, head)``, best first."""
        order = np.argsort(-self.scores, axis=None, kind="stable")[:n]
        return [tuple(int(i) for i in np.unravel_index(o, self.scores.shape)) for o in order]

    def __repr__(self) -> str:
        (layer, head), = self.top(1)
        return (f"HeadScores({self.kind}: layers={self.scores.shape[0]}, heads={self.scores.shape[1]}, "
                f"best=L{layer}H{head} {self.scores[layer, head]:.3f})")


def head_scores(adapter, kind: str, prompt=None, *, run=None, pattern=None, rep_len: int = 40, n_seqs: int = 1,
                seed: int = 0, exclude_bos: bool = False, exclude_current_token: bool = False,
                error_measure: str = "mul") -> HeadScores:
    """Every head's score as a ``kind`` head (one of :data:`KINDS`).

    Input: ``run`` (a pass that captured ``attn_pattern`` of every layer: no new pass), else ``prompt`` (a
    text or token ids; a list of them is scored one by one and averaged), else, for ``"induction"`` only,
    ``n_seqs`` sequences of repeated random tokens (:func:`repeated_random_tokens`, ``rep_len``, ``seed``).
    ``kind="pattern"`` takes ``pattern``: a ``[T, T]`` array or a function of the token ids ``[T]`` giving one.

    >>> scores = head_scores(adapter, "induction")          # doctest: +SKIP
    >>> scores.top(1)                                        # doctest: +SKIP
    [(2, 0)]
    """
    if kind not in KINDS:
        raise ValueError(f"unknown head kind {kind!r}; known: {', '.join(KINDS)}")
    if (kind == "pattern") != (pattern is not None):
        raise ValueError("pass pattern= (a [T, T] array or a function of the tokens) exactly when kind='pattern'")
    sites = [f"attn_pattern.{layer}" for layer in range(adapter.n_layers)]
    if run is not None:
        runs = [run]
    else:
        if prompt is None:
            if kind != "induction":
                raise ValueError(f"a {kind!r} detector needs a prompt or a run (only 'induction' makes its own tokens)")
            prompt = list(repeated_random_tokens(adapter, rep_len, n_seqs, seed))
        prompts = prompt if isinstance(prompt, list) and prompt and not isinstance(prompt[0], (int, np.integer)) \
            else [prompt]
        runs = [adapter.run(torch.as_tensor(p) if isinstance(p, np.ndarray) else p, capture=sites) for p in prompts]
    scores, first = [], None
    for r in runs:
        ids = r.tokens.numpy()
        if not 1 < len(ids) < (adapter.max_len or 1 << 30):
            raise ValueError(f"head detectors need 2 to {adapter.max_len - 1} tokens (as TransformerLens), got {len(ids)}")
        det = _user_pattern(pattern, ids) if kind == "pattern" else detection_pattern(kind, ids)
        A = r.stack("attn_pattern").float().numpy()
        scores.append(pattern_scores(A, det, exclude_bos=exclude_bos, exclude_current_token=exclude_current_token,
                                     error_measure=error_measure))
        first = first or (ids, list(r.token_strs), det, A)
    lens = {len(r.tokens) for r in runs}
    tokens = np.stack([r.tokens.numpy() for r in runs]) if len(lens) == 1 else first[0][None]
    return HeadScores(kind, np.mean(scores, 0), tokens, first[1], first[2], first[3], error_measure)


def _user_pattern(pattern: np.ndarray | Callable, ids: np.ndarray) -> np.ndarray:
    det = pattern(ids) if callable(pattern) else pattern
    return np.asarray(det.detach().cpu() if isinstance(det, torch.Tensor) else det, np.float64)
