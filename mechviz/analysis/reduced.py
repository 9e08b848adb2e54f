"""The logit lens and attention patterns computed from reductions evaluated inside an nnsight trace
(:mod:`mechviz.models.reductions`): what the views show on the nnsight path, where only the reduced tensors
leave the model's machine. Equal to :func:`~.logit_lens.logit_lens` (top-k ids, probabilities, entropy, target
probability and rank) and to the uint8 patterns the attention view sends the browser.

>>> lens, n_bytes = reduced_logit_lens(adapter, "The cat sat", k=5, target="next")   # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import torch

from ..models.reductions import LensTopK, Uint8Pattern, lens_rows, reduce
from .checks import positive_int
from .logit_lens import LogitLens, _targets


class _Tokens:  # what _targets reads of a run
    def __init__(self, tokens):
        self.tokens = tokens


def reduced_logit_lens(adapter, prompt, k: int = 5, target=None, edits: dict | None = None,
                       tag: str = "logit_lens") -> tuple[LogitLens, int]:
    """The logit-lens grid of ``prompt`` from :class:`~mechviz.models.reductions.LensTopK` (one trace), and the
    bytes that trace saved for it."""
    ids = adapter.to_tokens(prompt)
    k = min(positive_int(k, "k"), adapter.d_vocab)
    tgt = _targets(target, _Tokens(ids), adapter)
    before = adapter.bytes_received.get(tag, 0)
    out = reduce(adapter, ids, {tag: LensTopK(k, None if tgt is None else torch.from_numpy(tgt))}, edits=edits)[tag]
    top_ids = out["top_ids"].numpy()
    uniq = [int(i) for i in np.unique(top_ids)]
    names = dict(zip(uniq, adapter.to_str_tokens(torch.tensor(uniq))))
    top_strs = np.vectorize(lambda i: names[int(i)], otypes=[object])(top_ids).astype(str)
    lens = LogitLens(rows=lens_rows(adapter.n_layers), token_strs=adapter.to_str_tokens(ids), top_ids=top_ids,
                     top_probs=out["top_probs"].numpy(), entropy=out["entropy"].numpy(), top_strs=top_strs,
                     target=tgt, target_prob=None if tgt is None else out["target_prob"].numpy(),
                     target_rank=None if tgt is None else out["target_rank"].numpy())
    return lens, adapter.bytes_received[tag] - before


def reduced_attention(adapter, prompt, layers=None, edits: dict | None = None,
                      tag: str = "attention") -> tuple[np.ndarray, list[str], int]:
    """Attention patterns ``[layers, H, T, T]`` (float32, from uint8 ``round(255 p)``: at most 0.5/255 off) of
    ``prompt``, its tokens, and the bytes the trace saved for them."""
    ids = adapter.to_tokens(prompt)
    before = adapter.bytes_received.get(tag, 0)
    out = reduce(adapter, ids, {tag: Uint8Pattern(layers)}, edits=edits)[tag]
    pattern = out["pattern"].numpy().astype(np.float32) / 255
    return pattern, adapter.to_str_tokens(ids), adapter.bytes_received[tag] - before


def remote_patching(grid, pair, name: str, layers, receiver: str, source: str, on_progress=None, cancel=None):
    """Fill an activation-patching ``grid`` (from :func:`~.patching.activation_patching`) on a remote nnsight
    model: cells batched as rows of traces (:func:`~mechviz.models.reductions.patch_cells`), only each cell's
    metric downloaded. Residual sites by position, ``z``/``q``/``k``/``v`` by head or head and position.
    ``on_progress(grid, done, total)`` after each layer; ``cancel()`` polled before each (then
    ``grid.complete`` is False)."""
    from ..models.reductions import patch_cells

    if name not in ("resid_pre", "resid_post", "attn_out", "mlp_out", "z", "q", "k", "v"):
        raise ValueError(f"a remote model patches resid_pre, resid_post, attn_out, mlp_out, z, q, k or v; not {name} "
                         "(its patching engine needs the weights here)")
    for i, layer in enumerate(layers):
        if cancel is not None and cancel():
            grid.complete = False
            return grid
        grid.values[i] = patch_cells(pair.adapter, pair.ids[receiver], pair.ids[source], f"{name}.{layer}",
                                     by=grid.by, metric=pair.metric).numpy()
        if on_progress is not None:
            on_progress(grid, (i + 1) * grid.values[i].size, grid.values.size)
    return grid
