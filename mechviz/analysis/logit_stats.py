"""What the screen needs of a ``[n, vocab]`` block of logits, without a softmax tensor: the top-k
tokens and their probabilities, the entropy, a target token's probability and rank.

The logit lens is (layers + 1) full-vocabulary unembeddings of every position; the matmuls are its
floor. A plain ``log_softmax`` / ``topk`` / ``p * logp`` pipeline makes about eight passes over each
``[T, vocab]`` block and allocates as many, which costs 2-3x the matmuls. Here every pass runs over
``sub``-row slices (a few MB, cache-resident) with two reused scratch buffers, and

* the entropy is ``log s - sum(e * y) / s`` with ``y = logits - max`` and ``e = exp(y)``, ``s = sum(e)``
  (no cancellation for peaked distributions: the top term is exactly 0);
* the top-k comes from the top-k blocks of 128 logits by block maximum (the k largest values lie in
  those blocks), then an exact ``topk`` over those few candidates;
* the rank (number of strictly larger logits) counts ``sign(logits - target) > 0``.

:class:`Stats` holds the output arrays; :meth:`Stats.fill` writes the statistics of one block at
given positions. Checked against the plain formulas in ``tests/test_logit_lens.py``.
"""

from __future__ import annotations

import numpy as np
import torch

_BLOCK = 128  # vocabulary block for the top-k candidates


def topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(logits, k, -1)`` for ``[n, V]`` logits, from the k best 128-wide blocks.

    >>> x = torch.randn(3, 5000)
    >>> v, i = topk(x, 4)
    >>> bool((v == torch.topk(x, 4).values).all()) and bool((x.gather(-1, i) == v).all())
    True
    """
    n, V = logits.shape
    nb = V // _BLOCK
    if nb <= 4 * k:  # a small vocabulary: topk itself is cheap
        return torch.topk(logits, k, dim=-1)
    v0 = nb * _BLOCK
    block_max = logits[:, :v0].reshape(n, nb, _BLOCK).amax(-1)
    _, blocks = torch.topk(block_max, k, dim=-1)                                     # [n, k]
    cand = (blocks[..., None] * _BLOCK + torch.arange(_BLOCK, device=logits.device)).reshape(n, -1)
    if v0 < V:  # the tail (< 128 logits) is always a candidate
        cand = torch.cat([cand, torch.arange(v0, V, device=logits.device).expand(n, -1)], dim=1)
    vals, at = torch.topk(logits.gather(-1, cand), k, dim=-1)
    return vals, cand.gather(-1, at)


class Stats:
    """The output arrays of the statistics, ``R`` rows x ``T`` positions (cells never filled keep
    -1 / NaN): ``top_ids`` int64 and ``top_probs`` float32 ``[R, T, k]``, ``entropy`` float32
    ``[R, T]``, and with ``target`` (int64 ``[T]``, -1 where none) ``target_prob`` float32 and
    ``target_rank`` int64 ``[R, T]``."""

    def __init__(self, R: int, T: int, k: int, target: np.ndarray | None, sub: int = 32):
        self.k, self.target, self.sub = k, target, sub
        self.top_ids = np.full((R, T, k), -1, dtype=np.int64)
        self.top_probs = np.full((R, T, k), np.nan, dtype=np.float32)
        self.entropy = np.full((R, T), np.nan, dtype=np.float32)
        self.target_prob = np.full((R, T), np.nan, dtype=np.float32) if target is not None else None
        self.target_rank = np.full((R, T), -1, dtype=np.int64) if target is not None else None
        self._scratch: tuple[torch.Tensor, torch.Tensor] | None = None

    def fill(self, row: int, positions: np.ndarray, logits: torch.Tensor) -> None:
        """Write the statistics of ``logits`` (float32 ``[len(positions), V]``, finite; only read)
        into ``row`` at ``positions``."""
        for s in range(0, len(positions), self.sub):
            self._fill(row, positions[s:s + self.sub], logits[s:s + self.sub])

    def _fill(self, row: int, pos: np.ndarray, x: torch.Tensor) -> None:
        n, V = x.shape
        if self._scratch is None or self._scratch[0].shape[1] != V or self._scratch[0].device != x.device:
            self._scratch = tuple(torch.empty(self.sub, V, device=x.device) for _ in range(2))
        y, e = (b[:n] for b in self._scratch)
        m = x.amax(-1, keepdim=True)
        torch.sub(x, m, out=y)                       # y = x - max <= 0
        torch.exp(y, out=e)
        s = e.sum(-1)
        ey = e.mul_(y).sum(-1)
        log_s = s.log()
        lse = m[:, 0] + log_s
        self.entropy[row, pos] = (log_s - ey / s).cpu().numpy()
        vals, ids = topk(x, self.k)
        self.top_ids[row, pos] = ids.cpu().numpy()
        self.top_probs[row, pos] = (vals - lse[:, None]).exp_().cpu().numpy()
        if self.target is None:
            return
        tgt = self.target[pos]
        has = torch.from_numpy(tgt >= 0).to(x.device)
        t = x.gather(-1, torch.from_numpy(np.where(tgt >= 0, tgt, 0)).to(x.device)[:, None])
        rank = torch.sub(x, t, out=e).sign_().clamp_(min=0).sum(-1)   # exact in float32: counts < 2**24
        self.target_prob[row, pos] = torch.where(has, (t[:, 0] - lse).exp(), torch.nan).cpu().numpy()
        self.target_rank[row, pos] = torch.where(has, rank.long(), -1).cpu().numpy()
