"""Measurement helpers for the bundled default model and SAE.

Pure functions shared by ``scripts/train_default_model.py`` (progress logging),
``scripts/measure_default_model.py`` (the recorded metrics) and ``tests/test_zoo.py``.
They take a HuggingFace causal LM (read through :class:`mechviz.models.HFAdapter`) and,
for the SAE helpers, any object with ``encode``/``decode`` (e.g. a ``sae_lens.SAE``).

Conventions
-----------
* Sites are named ``resid_pre.<L>``, ``resid_mid.<L>``, ``resid_post.<L>``; they are the
  raw residual stream of the HF model (no LayerNorm folding / centering), i.e. the
  input of block L, input + attention output of block L, and output of block L.
  ``resid_post.L`` equals TransformerLens' ``blocks.L.hook_resid_post`` on an unfolded model.
* Induction score (Olsson et al. 2022): on ``[BOS] + R + R`` (R = random tokens), the mean
  attention paid by every token of the second copy to the token right after the earlier
  occurrence of the same token, i.e. from query position ``p`` (``R+1 <= p <= 2R``) to key
  position ``p - R + 1``.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..analysis.attention import induction_scores as _head_scores
from ..models.hf import HFAdapter
from ..models.sites import tl_hook_name

__all__ = [
    "site_to_hook_name",
    "repeated_random_tokens",
    "induction_scores",
    "best_induction_head",
    "repeated_half_losses",
    "unigram_entropy",
    "mean_loss",
    "resid_activations",
    "sae_stats",
    "eager_attention",
    "logit_lens_losses",
]


# ----------------------------------------------------------------------------- sites
# Site names and their TransformerLens hooks are defined once, in mechviz.models.sites.
site_to_hook_name = tl_hook_name


# ----------------------------------------------------------------------------- induction
def repeated_random_tokens(
    n_seqs: int,
    rep_len: int,
    vocab_size: int,
    bos_id: int,
    seed: int = 0,
    low: int = 1,
) -> torch.Tensor:
    """``[BOS] + R + R`` with R uniform in ``[low, vocab_size)``; shape ``(n_seqs, 1 + 2*rep_len)``."""
    g = torch.Generator().manual_seed(int(seed))
    r = torch.randint(low, vocab_size, (n_seqs, rep_len), generator=g)
    bos = torch.full((n_seqs, 1), int(bos_id), dtype=torch.long)
    return torch.cat([bos, r, r], dim=1)


@contextlib.contextmanager
def eager_attention(model):
    """Temporarily switch a HF model to eager attention so attention weights are returned."""
    prev = getattr(model.config, "_attn_implementation", None)
    switched = False
    if prev not in (None, "eager"):
        model.set_attn_implementation("eager")
        switched = True
    try:
        yield model
    finally:
        if switched:
            model.set_attn_implementation(prev)


@torch.no_grad()
def induction_scores(model, tokens: torch.Tensor, rep_len: int) -> torch.Tensor:
    """Per-head induction scores, shape ``(n_layers, n_heads)``, for ``tokens = [BOS]+R+R``."""
    R = int(rep_len)
    assert tokens.shape[1] == 1 + 2 * R, "tokens must be [BOS] + R + R"
    dev = next(model.parameters()).device
    with eager_attention(model):
        out = model(tokens.to(dev), output_attentions=True)
    pattern = torch.stack(out.attentions).float().cpu().numpy()  # [layers, batch, heads, T, T]
    # drop BOS so the sequence repeats with period R (mechviz.analysis.induction_scores)
    return torch.from_numpy(np.ascontiguousarray(_head_scores(pattern[..., 1:, 1:], R).mean(1)))


def best_induction_head(
    model,
    lengths: Sequence[int] = (20, 30, 40, 60),
    n_seqs: int = 16,
    vocab_size: int | None = None,
    bos_id: int | None = None,
    seed: int = 0,
) -> dict:
    """Induction scores per length; the best head is the one with the highest mean over lengths."""
    vocab_size = vocab_size or model.config.vocab_size
    bos_id = model.config.bos_token_id if bos_id is None else bos_id
    per_len = {}
    for i, R in enumerate(lengths):
        toks = repeated_random_tokens(n_seqs, R, vocab_size, bos_id, seed=seed + 1000 * i)
        per_len[int(R)] = induction_scores(model, toks, R)
    mean = torch.stack(list(per_len.values())).mean(0)
    layer, head = divmod(int(mean.argmax()), mean.shape[1])
    return {
        "best_head": [layer, head],
        "best_head_name": f"{layer}.{head}",
        "per_length": {R: float(s[layer, head]) for R, s in per_len.items()},
        "max_any_head_per_length": {R: float(s.max()) for R, s in per_len.items()},
        "scores": {R: s.tolist() for R, s in per_len.items()},
    }


@torch.no_grad()
def repeated_half_losses(model, tokens: torch.Tensor, rep_len: int) -> tuple[float, float]:
    """Mean next-token loss on the first copy (targets 1..R) and the second copy (R+1..2R)."""
    R = int(rep_len)
    dev = next(model.parameters()).device
    tokens = tokens.to(dev)
    logits = model(tokens).logits.float()
    lp = F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    # lp[:, t] is the loss of predicting token t+1
    first = lp[:, 0:R].mean().item()
    second = lp[:, R : 2 * R].mean().item()
    return first, second


# ----------------------------------------------------------------------------- LM loss
def unigram_entropy(token_ids: Iterable[int] | torch.Tensor, vocab_size: int) -> float:
    """Entropy (nats) of the empirical unigram distribution of ``token_ids``."""
    t = torch.as_tensor(token_ids if isinstance(token_ids, torch.Tensor) else list(token_ids))
    counts = torch.bincount(t.flatten().long(), minlength=vocab_size).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


@torch.no_grad()
def mean_loss(model, batches: torch.Tensor, batch_size: int = 16, skip_first: int = 1) -> float:
    """Mean next-token loss (nats) over ``batches`` (n, T); the first ``skip_first`` targets
    (right after BOS) are excluded since they have no context."""
    dev = next(model.parameters()).device
    tot, n = 0.0, 0
    for i in range(0, batches.shape[0], batch_size):
        x = batches[i : i + batch_size].to(dev)
        logits = model(x).logits.float()
        lp = F.cross_entropy(logits[:, :-1].transpose(1, 2), x[:, 1:], reduction="none")
        lp = lp[:, skip_first:]
        tot += lp.sum().item()
        n += lp.numel()
    return tot / max(n, 1)


# ----------------------------------------------------------------------------- activations
@torch.no_grad()
def resid_activations(model, tokens: torch.Tensor, site: str, batch_size: int = 16) -> torch.Tensor:
    """Raw residual-stream activations at ``site`` (any mechviz site of width ``d_model``), read
    through :class:`mechviz.models.HFAdapter`, one sequence at a time; shape ``(n, T, d_model)``.
    ``batch_size`` is accepted for compatibility and unused."""
    with eager_attention(model):  # the adapter needs eager attention; the model gets its own back after
        adapter = HFAdapter(model)
        return torch.stack([adapter.run(seq, capture=[site])[site] for seq in tokens])


@torch.no_grad()
def sae_stats(sae, acts: torch.Tensor, batch_size: int = 4096) -> dict:
    """Explained variance, mean L0 and dead-feature fraction of ``sae`` on ``acts`` (N, d).

    EV = 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 (mean over the given activations).
    A feature is dead if it never fires (> 0) on any of the given activations.
    """
    acts = acts.reshape(-1, acts.shape[-1]).float()
    mu = acts.mean(0, keepdim=True)
    sse, sst, l0, n = 0.0, 0.0, 0.0, 0
    fired = None
    for i in range(0, acts.shape[0], batch_size):
        x = acts[i : i + batch_size]
        f = sae.encode(x)
        xh = sae.decode(f)
        sse += ((x - xh) ** 2).sum().item()
        sst += ((x - mu) ** 2).sum().item()
        on = f > 0
        l0 += on.sum().item()
        n += x.shape[0]
        fired = on.any(0) if fired is None else fired | on.any(0)
    return {
        "explained_variance": 1.0 - sse / sst,
        "mse": sse / (n * acts.shape[1]),
        "l0": l0 / n,
        "dead_fraction": 1.0 - fired.float().mean().item(),
        "n_tokens": n,
    }


@torch.no_grad()
def logit_lens_losses(model, batches: torch.Tensor, batch_size: int = 16, skip_first: int = 1) -> list[float]:
    """Logit lens: mean next-token loss (nats) when ``ln_f`` + unembedding are applied to
    ``resid_post`` of every block; one value per layer (the last equals the model's loss)."""
    blocks = model.transformer.h
    dev = next(model.parameters()).device
    store: dict = {}
    handles = [
        b.register_forward_hook(lambda mod, a, out, i=i: store.__setitem__(i, out[0] if isinstance(out, tuple) else out))
        for i, b in enumerate(blocks)
    ]
    tot = [0.0] * len(blocks)
    n = 0
    try:
        for j in range(0, batches.shape[0], batch_size):
            x = batches[j : j + batch_size].to(dev)
            model(x)
            tgt = x[:, 1 + skip_first :]
            for i in range(len(blocks)):
                logits = model.lm_head(model.transformer.ln_f(store[i]))[:, skip_first:-1].float()
                tot[i] += F.cross_entropy(logits.transpose(1, 2), tgt, reduction="sum").item()
            n += tgt.numel()
    finally:
        for h in handles:
            h.remove()
    return [t / max(n, 1) for t in tot]


def perplexity(loss: float) -> float:
    return math.exp(loss)
