"""Reductions evaluated inside an nnsight trace, so that only small tensors leave the model's machine.

A view declares what it needs as a small object; :func:`reduce` runs one trace over the prompt that reads the
sites every reduction needs (in forward order), computes each reduction where the model runs (on NDIF for a
remote model; the same code path locally) and saves only the results. ``adapter.bytes_received[tag]`` counts
the bytes saved per view.

* :class:`LensTopK`: the logit lens' top-``k`` tokens and probabilities of each cell, its entropy and a
  target's probability and rank (``[R, T, k]`` instead of ``[R, T, vocab]`` logits);
* :class:`Uint8Pattern`: the attention patterns of some layers as uint8 (``round(255 p)``);
* :class:`SAETop`: an SAE's ``n`` top features of the prompt (by max activation) and their activations;
* :func:`patch_cells`: activation patching cells batched as invokes of one trace, only each cell's metric saved.

>>> out = reduce(adapter, "The cat sat", {"lens": LensTopK(k=5)})   # doctest: +SKIP
>>> out["lens"]["top_ids"].shape                                     # doctest: +SKIP
torch.Size([5, 4, 5])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from .hooks import first as _first
from .remote import explain_errors
from .sites import parse_sites

__all__ = ["Reduction", "LensTopK", "Uint8Pattern", "SAETop", "reduce", "patch_cells", "lens_rows"]


def lens_rows(n_layers: int) -> list[str]:
    """The logit lens' rows: ``resid_pre`` of every layer, then the last ``resid_post``.

    >>> lens_rows(2)
    ['resid_pre.0', 'resid_pre.1', 'resid_post.1']
    """
    return [f"resid_pre.{i}" for i in range(n_layers)] + [f"resid_post.{n_layers - 1}"]


class Reduction:
    """What one view needs from a pass: ``sites(adapter)`` it reads and ``__call__(adapter, acts)``, run inside
    the trace, mapping ``{site: activation [T, ...]}`` to the small tensors to save."""

    def sites(self, adapter) -> list[str]:
        raise NotImplementedError

    def __call__(self, adapter, acts: dict) -> dict:
        raise NotImplementedError


def _logits(adapter, resid: torch.Tensor) -> torch.Tensor:
    """Inside a trace: the model's own final norm and head on ``resid`` ``[n, d]`` (the envoys' modules, so that
    on NDIF they run on the server's weights), with Gemma 2's soft-cap; float32 ``[n, vocab]``."""
    from .hf import _get

    norm_module, head_module = _get(adapter.model, adapter.spec.final_norm), adapter.model.get_output_embeddings()
    h = adapter.envoy(norm_module)(resid.to(_device_of(norm_module, resid)))
    h = adapter.envoy(head_module)(h.to(_device_of(head_module, h)))
    return adapter._capped(h).float()


def _device_of(module, default: torch.Tensor) -> torch.device:
    """Where ``module``'s weights live (a sharded model's blocks, norm and head may each be on another device)."""
    p = next(module.parameters(), None)
    return default.device if p is None else p.device


@dataclass
class LensTopK(Reduction):
    """The logit lens reduced to its top-``k`` of each cell. ``target``: int64 ``[T]`` (-1: none) or None.
    Saves ``top_ids`` int64 and ``top_probs`` float32 ``[R, T, k]``, ``entropy`` float32 ``[R, T]`` and, with a
    target, ``target_prob`` ``[R, T]`` and ``target_rank`` int64 ``[R, T]`` (tokens with a strictly larger logit)."""

    k: int = 5
    target: torch.Tensor | None = None

    def sites(self, adapter):
        return lens_rows(adapter.n_layers)

    def __call__(self, adapter, acts):
        top_ids, top_probs, entropy, t_prob, t_rank = [], [], [], [], []
        for row in self.sites(adapter):
            logits = _logits(adapter, acts[row])
            logp = torch.log_softmax(logits, -1)
            p, i = logp.exp().topk(self.k, -1)
            top_ids.append(i)
            top_probs.append(p)
            entropy.append(-(logp.exp() * logp).nan_to_num().sum(-1))
            if self.target is not None:
                tgt = self.target.to(logits.device)
                safe = tgt.clamp(min=0)[:, None]
                prob = logp.gather(-1, safe)[:, 0].exp()
                rank = (logits > logits.gather(-1, safe)).sum(-1)
                t_prob.append(torch.where(tgt >= 0, prob, torch.full_like(prob, float("nan"))))
                t_rank.append(torch.where(tgt >= 0, rank, torch.full_like(rank, -1)))
        out = {"top_ids": torch.stack(top_ids), "top_probs": torch.stack(top_probs), "entropy": torch.stack(entropy)}
        if self.target is not None:
            out.update(target_prob=torch.stack(t_prob), target_rank=torch.stack(t_rank))
        return out


@dataclass
class Uint8Pattern(Reduction):
    """Attention patterns of ``layers`` (None: all) as uint8 ``round(255 p)``: ``pattern`` ``[len(layers), H, T, T]``
    (a quarter of float32's bytes, at most 0.5/255 from the pattern; what the attention view sends the browser)."""

    layers: Sequence[int] | None = None

    def sites(self, adapter):
        layers = range(adapter.n_layers) if self.layers is None else self.layers
        return [f"attn_pattern.{layer}" for layer in layers]

    def __call__(self, adapter, acts):
        pats = [acts[s].float().mul(255).round().clamp(0, 255).to(torch.uint8) for s in self.sites(adapter)]
        return {"pattern": torch.stack(pats)}


@dataclass
class SAETop(Reduction):
    """An SAE's ``n`` top features of the prompt by max activation over its tokens (ties: lower id first, as
    :func:`~mechviz.analysis.features.top_features`): ``ids`` int64 ``[n]`` and ``acts`` float32 ``[T, n]``."""

    sae: object
    n: int = 12

    def sites(self, adapter):
        return [self.sae.site]

    def __call__(self, adapter, acts):
        x = acts[self.sae.site]
        a = self.sae.encode(x.reshape(len(x), -1)).float()
        score = a.max(0).values
        # largest first, ties by lower id: a stable sort of -score keeps ids in order among equals
        ids = torch.sort(-score, stable=True).indices[: min(self.n, score.numel())]
        return {"ids": ids, "acts": a[:, ids]}


def reduce(adapter, prompt, reductions: dict, edits: dict | None = None) -> dict:
    """One trace over ``prompt`` evaluating every reduction (``{tag: Reduction}``) inside it; returns
    ``{tag: {name: tensor}}`` on the CPU and adds each tag's saved bytes to ``adapter.bytes_received``.
    ``edits``: as :meth:`~mechviz.models.ModelAdapter.run` (steering applies before the reductions read)."""
    ids = adapter.to_tokens(prompt)
    edit_fns = {s: fn for key, fn in (edits or {}).items() for s in parse_sites(key, adapter.n_layers)}
    need = sorted({s for r in reductions.values() for s in r.sites(adapter)})
    sites = parse_sites(need, adapter.n_layers) if need else []
    plan, derived = adapter.plan(sites, edit_fns)
    with torch.inference_mode(), explain_errors(adapter), adapter.lm.trace(ids[None], **adapter.trace_kw()):
        store = adapter.read(plan, edit_fns)
        for s in derived:
            store[str(s)] = store[f"resid_pre.{s.layer}"] + store[f"attn_out.{s.layer}"]
        acts = {k: v[0] for k, v in store.items()}
        results = {tag: red(adapter, acts) for tag, red in reductions.items()}
        results = _save(results)
    for tag, res in results.items():
        adapter.count(tag, res)
    return {tag: {k: v.cpu() for k, v in res.items()} for tag, res in results.items()}


def patch_cells(adapter, receiving, source, site: str, by: str = "position",
                metric: Callable[[torch.Tensor], torch.Tensor] | None = None, tag: str = "patching",
                rows: int = 64) -> torch.Tensor:
    """Activation patching of ``site`` (``resid_pre``, ``resid_post``, ``attn_out``, ``mlp_out`` by ``"position"``;
    ``z``, ``q``, ``k``, ``v`` by ``"head"`` (all positions) or ``"head_position"``; every layer, or one:
    ``"z.3"``) in traces over batches of up to ``rows`` cells: row 0 of each runs ``source``, every other row
    ``receiving`` with its cell overwritten (inside the trace) by row 0's value there, and only
    ``metric(logits [rows, T, vocab]) -> [rows]`` of the patched rows is saved. Returns float32 ``[layers, T]``,
    ``[layers, heads]`` or ``[layers, T, heads]`` (the denoising grid when ``source`` is the clean prompt)."""
    from .sites import n_site_heads

    r_ids, s_ids = adapter.to_tokens(receiving), adapter.to_tokens(source)
    if r_ids.shape != s_ids.shape:
        raise ValueError(f"the prompts must have the same number of tokens ({len(r_ids)} and {len(s_ids)})")
    name, _, one = site.partition(".")
    layers = [int(one)] if one else list(range(adapter.n_layers))
    T, H = len(r_ids), n_site_heads(adapter, name)
    shape = {"position": (T,), "head": (H,), "head_position": (T, H)}.get(by)
    if shape is None or (by == "position") != (H == 0):
        raise ValueError(f"{name} patches by {'position' if H == 0 else 'head or head_position'}, not by={by!r}")
    cells = [(layer, *idx) for layer in layers for idx in np.ndindex(*shape)]
    where = {"position": lambda c: (c[1],), "head": lambda c: (slice(None), c[1]),
             "head_position": lambda c: (c[1], c[2])}[by]
    taps = sorted(((layer, adapter._site_point(layer, name)) for layer in layers),
                  key=lambda t: adapter._rank(t[1][0], t[1][1]))
    metric = metric or (lambda logits: logits[:, -1].max(-1).values)
    out = []
    for start in range(0, len(cells), rows):
        part = cells[start:start + rows]
        batch = torch.cat([s_ids[None], r_ids[None].expand(len(part), -1)])
        with torch.inference_mode(), explain_errors(adapter), adapter.lm.trace(batch, **adapter.trace_kw()):
            for layer, (module, kind, view) in taps:
                env = adapter.envoy(module)
                x = view(env.input if kind == "pre" else _first(env.output))
                for row, cell in enumerate(part, start=1):
                    if cell[0] == layer:
                        at = where(cell)
                        x[(row, *at)] = x[(0, *at)]
            values = _save(metric(adapter.lm.output.logits[1:].float()).float())
        adapter.count(tag, values)
        out.append(values.cpu())
    return torch.cat(out).reshape(len(layers), *shape)


def _save(x):
    import nnsight

    return nnsight.save(x)

