"""Logit lens: what the model would predict if the residual stream stopped at each layer.

Rows are the residual stream *entering* each block plus the final one, exactly the points of
TransformerLens' ``cache.accumulated_resid(incl_mid=False)``::

    rows = resid_pre.0, resid_pre.1, ..., resid_pre.{L-1}, resid_post.{L-1}    (L + 1 rows)

(``incl_mid=True`` adds each block's ``resid_mid`` after its ``resid_pre``: 2L + 1 rows, as
``accumulated_resid(incl_mid=True)``.)

Each row goes through the model's own final norm and unembedding (``adapter.logits_of``), with
the norm's statistics recomputed from that row's residual, i.e. ``model.ln_final(resid)`` as the
model applies it to its last layer. This is what TransformerLens 3.9's
``cache.accumulated_resid(apply_ln=True)`` (then ``model.unembed``) computes for the full stack (it
calls ``apply_ln_to_stack(..., recompute_ln=True)``); it is *not* the older TL behaviour of
dividing every layer by the cached final-layer scale (``apply_ln_to_stack(recompute_ln=False)``).
The unembedding includes its bias (TL ``b_U``), as ``model.unembed`` does. The last row therefore
equals the model's output distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..models.base import Run
from .checks import positive_int
from .logit_stats import Stats


def needs(n_layers: int, incl_mid: bool = False) -> list[str]:
    """The sites :func:`logit_lens` reads, in row order: ``resid_pre`` of every layer (followed by
    that layer's ``resid_mid`` if ``incl_mid``, as TL's ``accumulated_resid(incl_mid=True)``) and
    the last ``resid_post``."""
    rows = []
    for layer in range(n_layers):
        rows += [f"resid_pre.{layer}"] + ([f"resid_mid.{layer}"] if incl_mid else [])
    return rows + [f"resid_post.{n_layers - 1}"]


@dataclass
class LogitLens:
    """The logit-lens grid of one prompt: ``R = n_layers + 1`` rows (``2 n_layers + 1`` with
    ``incl_mid``; names in ``rows``, see :func:`needs`) x ``T`` tokens.

    ``top_ids`` int64 ``[R, T, k]`` and ``top_probs`` float32 ``[R, T, k]``: the k most likely next
    tokens at each cell, most likely first; ``top_strs``: their text, ``[R, T, k]`` (numpy str);
    ``entropy`` float32 ``[R, T]`` in nats; ``target`` int64 ``[T]`` (-1 where none),
    ``target_prob`` float32 ``[R, T]`` (NaN where no target) and ``target_rank`` int64 ``[R, T]``
    (0 = most likely; the number of tokens with a strictly larger logit; -1 where no target).
    """

    rows: list[str]
    token_strs: list[str]
    top_ids: np.ndarray
    top_probs: np.ndarray
    entropy: np.ndarray
    top_strs: np.ndarray | None = None
    target: np.ndarray | None = None
    target_prob: np.ndarray | None = None
    target_rank: np.ndarray | None = None
    ready: np.ndarray | None = None  # bool [R, T]: computed (None: all); a stage of logit_lens_stream

    @property
    def complete(self) -> bool:
        """Every cell computed (a stage of :func:`logit_lens_stream` may not be)."""
        return self.ready is None or bool(self.ready.all())

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array of the grid by name (the data a view sends or a user saves)."""
        out = {"top_ids": self.top_ids, "top_probs": self.top_probs, "entropy": self.entropy}
        for name in ("top_strs", "target", "target_prob", "target_rank"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    def colour(self, by: str = "target_prob") -> np.ndarray:
        """The ``[R, T]`` values to colour cells by: ``"target_prob"``, ``"target_rank"``, ``"entropy"``
        or ``"top_prob"`` (probability of the top token)."""
        if by == "top_prob":
            return self.top_probs[..., 0]
        if by == "entropy":
            return self.entropy
        if by in ("target_prob", "target_rank"):
            if self.target is None:
                raise ValueError(f"colour by {by!r} needs a target token: logit_lens(..., target=...)")
            return getattr(self, by)
        raise ValueError(f"unknown colouring {by!r}: use target_prob, target_rank, entropy or top_prob")

    def __repr__(self) -> str:
        R, T, k = self.top_ids.shape
        return f"LogitLens(rows={R}, tokens={T}, k={k}, target={'yes' if self.target is not None else 'none'})"


def check_target(target, adapter) -> None:
    """Check a lens ``target`` before any pass (a view's arguments are refused when it is made, not on its
    first prompt): its type, that text is one token, that ids lie in the vocabulary."""
    if target is None or (isinstance(target, str) and target == "next"):
        return
    _target_ids(target, adapter)


def _target_ids(target, adapter) -> np.ndarray:
    """The ids a target other than None and "next" names (one, or one per position), checked."""
    if isinstance(target, str):
        if adapter.tokenizer is None:
            raise ValueError("this model has no tokenizer: give the target as a token id")
        found = list(adapter.tokenizer(target, add_special_tokens=False)["input_ids"])
        if len(found) != 1:
            raise ValueError(f"target {target!r} is {len(found)} tokens ({found}); choose a single token, "
                             "e.g. with a leading space, or pass its id")
        return np.array(found, dtype=np.int64)
    given = np.asarray(target.cpu() if isinstance(target, torch.Tensor) else target)
    if given.dtype == bool or not np.issubdtype(given.dtype, np.integer) or given.size == 0:
        raise ValueError(f"target must be a token id, ids, one token's text or 'next'; got {target!r} "
                         "(ids are never rounded)")
    ids = given.astype(np.int64).reshape(-1)
    bad = (ids < 0) | (ids >= adapter.d_vocab)
    if bad.any():
        raise ValueError(f"target id {int(ids[bad][0])} is outside the vocabulary (0..{adapter.d_vocab - 1})")
    return ids


def _targets(target, run: Run, adapter) -> np.ndarray | None:
    T = len(run.tokens)
    if target is None:
        return None
    if isinstance(target, str) and target == "next":
        ids = np.full(T, -1, dtype=np.int64)
        ids[:-1] = run.tokens[1:].numpy()
        return ids
    ids = _target_ids(target, adapter)
    if ids.size == 1:
        return np.full(T, int(ids[0]), dtype=np.int64)
    if ids.size != T:
        raise ValueError(f"target has {ids.size} ids but the prompt has {T} tokens")
    return ids


def logit_lens(adapter, run: Run, k: int = 5, target=None, decode: bool = True,
               incl_mid: bool = False) -> LogitLens:
    """The logit-lens grid for ``run`` (captured with at least :func:`needs` ``(adapter.n_layers)``).

    ``target``: ``None``; one token id or one token's text (the same at every position); ids
    ``[T]``, one per position; or ``"next"``: the prompt's own next token at each position (none at
    the last). ``decode``:
    also return the top tokens' text (``top_strs``). ``incl_mid``: add a row after each block's
    attention (``resid_mid``; in parallel GPT-NeoX blocks that is ``resid_pre + attn_out``).

    >>> run = adapter.run("The cat sat", capture=needs(adapter.n_layers))   # doctest: +SKIP
    >>> lens = logit_lens(adapter, run, k=5, target="next")                  # doctest: +SKIP
    >>> lens.top_probs.shape                                                  # doctest: +SKIP
    (L + 1, T, 5)
    """
    *_, lens = logit_lens_stream(adapter, run, k=k, target=target, decode=decode, incl_mid=incl_mid, first=(),
                                 rows_per_stage=2 * adapter.n_layers + 1)   # one stage: no snapshots to discard
    return lens


def logit_lens_stream(adapter, run: Run, k: int = 5, target=None, decode: bool = True, incl_mid: bool = False,
                      first=(-1,), rows_per_stage: int = 3):
    """:func:`logit_lens` in stages, each a more complete :class:`LogitLens` (a snapshot: safe to
    hand to another thread while the next is computed). The first stage holds the final row (the
    model's own prediction) at every position and every row at the positions ``first`` (negative:
    from the end; default the last; ``()``: no such stage); each later stage adds ``rows_per_stage`` rows; the last is the
    whole grid, equal to :func:`logit_lens`'s. Cells not computed yet: ``ready`` False, ``top_ids``
    and ``target_rank`` -1, ``top_probs``/``entropy``/``target_prob`` NaN, ``top_strs`` "".

    >>> stages = logit_lens_stream(adapter, run, first=[3])      # doctest: +SKIP
    >>> lens = next(stages); lens.ready[:, 3].all(), lens.complete   # doctest: +SKIP
    (True, False)
    """
    rows = needs(adapter.n_layers, incl_mid)
    missing = [s for s in rows if s not in run.cache]
    if missing:
        raise KeyError(f"the logit lens needs {missing} captured: run with "
                       f"capture=logit_lens.needs(n_layers{', incl_mid=True' if incl_mid else ''})")
    tgt = _targets(target, run, adapter)
    T, R = len(run.tokens), len(rows)
    k = min(positive_int(k, "k"), adapter.d_vocab)
    cols = np.array(sorted({_position(p, T) for p in first}), dtype=np.int64)
    st = Stats(R, T, k, tgt)
    ready = np.zeros((R, T), dtype=bool)
    names: dict[int, str] = {}
    everywhere = np.arange(T)
    size, V = _chunk(adapter.d_vocab, T), adapter.d_vocab
    own = rows[-1] == f"resid_post.{adapter.n_layers - 1}" and tuple(run.logits.shape) == (T, V)
    buf = torch.empty(0, V)  # one logits buffer, reused by every row: never [R, T, vocab]

    def logits(x: torch.Tensor) -> torch.Tensor:  # x [n <= size, d] -> [n, vocab], in the buffer
        nonlocal buf
        if len(buf) < len(x):
            buf = torch.empty(len(x), V)
        return adapter.logits_into(x, buf[:len(x)])

    def fill(r: int, pos: np.ndarray) -> None:
        if r == R - 1 and own:  # the final row is the model's own output: no unembedding to redo
            st.fill(r, pos, run.logits if len(pos) == T else run.logits[torch.from_numpy(pos)])
        else:
            for s in range(0, len(pos), size):
                at = pos[s:s + size]
                st.fill(r, at, logits(run[rows[r]][torch.from_numpy(at)]))
        ready[r, pos] = True

    def fill_columns(pos: np.ndarray) -> None:  # every other row at a few positions: one unembedding for all
        per = max(1, size // max(1, len(pos)))
        for r0 in range(0, R - 1, per):
            group = range(r0, min(R - 1, r0 + per))
            block = logits(torch.cat([run[rows[r]][torch.from_numpy(pos)] for r in group]))
            for i, r in enumerate(group):
                st.fill(r, pos, block[i * len(pos):(i + 1) * len(pos)])
                ready[r, pos] = True

    def snapshot() -> LogitLens:
        top_strs = None
        if decode:
            new = [int(i) for i in np.unique(st.top_ids) if i >= 0 and int(i) not in names]
            if new:
                names.update(zip(new, adapter.to_str_tokens(torch.tensor(new))))
            lookup = np.vectorize(lambda i: names.get(int(i), ""), otypes=[object])
            top_strs = lookup(st.top_ids).astype(str) if st.top_ids.size else np.zeros(st.top_ids.shape, dtype=str)
        copy = (lambda a: None if a is None else a.copy())
        return LogitLens(rows=rows, token_strs=list(run.token_strs), top_ids=st.top_ids.copy(),
                         top_probs=st.top_probs.copy(), entropy=st.entropy.copy(), top_strs=top_strs, target=tgt,
                         target_prob=copy(st.target_prob), target_rank=copy(st.target_rank), ready=ready.copy())

    step = positive_int(rows_per_stage, "rows_per_stage")
    fill(R - 1, everywhere)
    if len(cols):
        fill_columns(cols)
        yield snapshot()
    rest = list(range(R - 1))
    for i in range(0, len(rest), step):
        for r in rest[i:i + step]:
            fill(r, np.flatnonzero(~ready[r]))   # the first stage's columns are not computed twice
        yield snapshot()


_BUFFER_BYTES = 256 * 2**20  # the logits buffer: [chunk, vocab] float32


def _chunk(vocab: int, T: int) -> int:
    """Positions per unembedding: the whole prompt when its logits fit the buffer budget, else
    slices of at least 64 positions (the matmul stays efficient)."""
    return max(64, min(T, _BUFFER_BYTES // (4 * vocab)))


def _position(p: int, T: int) -> int:
    if not -T <= int(p) < T:
        raise ValueError(f"position {p} is out of range for a prompt of {T} tokens")
    return int(p) % T
