"""Activation patching and attribution patching, over every layer x position x head of one site.

Activation patching (as in TransformerLens' ``patching.get_act_patch_*``): run the *receiving*
prompt, overwrite one activation (one site, layer, position and/or head) with its value from the
*source* prompt, and read a metric off the logits. ``direction="denoise"`` patches clean into
corrupted (does this activation restore the clean behaviour?); ``"noise"`` patches corrupted into
clean (does it break it?). Every cell of a grid is one such patched run.

The engine computes many cells per forward pass and does only the work a cell needs:

* cells are stacked as batch rows, as many as ``batch_budget_mb`` allows;
* a batch starts at the patched layer: the blocks before it are the receiving run's, computed
  once at batch size 1 (``adapter.forward_from``);
* and at the first patched position: in a causal model the positions before it cannot change, so
  their keys and values are reused from the receiving run;
* a patch after a block's attention (z, attn_out, resid_mid, mlp_out, resid_post) at one position
  changes only that position's output of the block, computed token by token
  (``adapter.finish_block``); the batch starts at the next block;
* a cell whose clean and corrupted values are equal (every position before the first token where the
  prompts differ, most positions of ``resid_pre.0``) is a no-op: its value is the receiving run's
  metric, with no pass at all; a head patched at every position starts where its value first differs;
* the metric reads only the logits it needs: :func:`logit_diff` declares its positions and its two
  vocabulary rows, so no full unembedding is computed. Any other callable on logits
  ``[batch, T, vocab] -> [batch]`` works too (then full logits are computed).

All of this is exact: every grid equals TransformerLens' to float32 rounding (tests/test_patching.py).

Attribution patching estimates every cell at once from one forward and one backward pass over the
prompt pair: ``metric(receiving) + (source_act - receiving_act) . d metric / d act``, summed over the
activation's features (Nanda 2023, "Attribution patching").

Layouts, the grid object and its metric are in :mod:`.patch_grid`; the prompt pair (built once,
shared by the estimate, the exact grid and a cell's detail) in :mod:`.prompt_pair`.

>>> grid = activation_patching(adapter, clean, corrupted, "resid_pre", answers=(" Mary", " John"))  # doctest: +SKIP
>>> grid.normalized()           # 1 = restores the clean metric, 0 = no effect     # doctest: +SKIP
>>> grid.figure()                                                                 # doctest: +SKIP
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Callable, ContextManager, Sequence

import numpy as np
import torch

from ..models import Aborted, SiteError, parse_sites, wrap
from ..models.base import Edit
from ..models.sites import HEAD_SITES, RESID_SITES, Site, n_site_heads
from .patch_sources import PATCHED_AS, PATTERN_NEEDS, pair_pattern_z
from .patch_grid import BYS, LAYOUTS, Cell, Layout, LogitDiff, PatchGrid, layout, logit_diff
from .prompt_pair import CellDetail, PromptPair, cell_detail, direction_roles, patched_run, prompt_pair  # noqa: F401

__all__ = ["activation_patching", "attribution_patching", "attribution_patching_all", "prompt_pair", "PromptPair",
           "PatchGrid", "Layout", "LAYOUTS", "Cell", "layout", "logit_diff", "LogitDiff", "patched_run",
           "cell_detail", "CellDetail", "patch_capture", "RESID_SITES", "HEAD_SITES", "BYS", "ALL_GRIDS"]

#: Every grid :func:`attribution_patching_all` estimates by default.
ALL_GRIDS = [(s, "position") for s in RESID_SITES] + [(s, by) for s in HEAD_SITES for by in ("head", "head_position")]

# A batch stops growing past this many token-rows once the next cell would start later (a forward
# pass of GPT-2 small runs at the CPU's matmul peak from about 128 token-rows on; later cells then get a
# batch that skips more positions).
_MIN_BATCH_TOKENS = 128
_SPLIT_RATIO = 0.9


# -- shared set-up ----------------------------------------------------------------------------
def _pair(model, clean, corrupted, metric, answers, capture=()) -> PromptPair:
    """``model`` may already be a PromptPair (then the other arguments must be left out)."""
    if isinstance(model, PromptPair):
        given = [n for n, v in (("clean", clean), ("corrupted", corrupted), ("metric", metric),
                                ("answers", answers)) if v is not None]
        if given:
            raise TypeError(f"with a PromptPair, leave out {', '.join(given)} (the pair holds them); "
                            "pass site= by keyword: activation_patching(pair, site='z', by='head')")
        return model.ensure(capture)
    if clean is None or corrupted is None:
        raise TypeError("give clean and corrupted prompts, or a PromptPair as the first argument")
    return PromptPair(model, clean, corrupted, metric, answers, capture=capture)


def _check_site(adapter, site, by):
    layout(by)
    sites = parse_sites(site, adapter.n_layers)
    names = {s.name for s in sites}
    if len(names) != 1:
        raise SiteError(f"patch one site at a time; got {sorted(names)}")
    name = names.pop()
    if name in RESID_SITES:
        if by != "position":
            raise ValueError(f"{name} has no head axis: use by='position' (got by={by!r})")
    elif name in HEAD_SITES or name in PATCHED_AS:
        if by not in ("head", "head_position"):
            raise ValueError(f"{name} is per head: use by='head' (all positions) or 'head_position' (got by={by!r})")
    else:
        raise SiteError(f"site {name!r} cannot be patched here; patchable sites: "
                        f"{', '.join(RESID_SITES + HEAD_SITES + tuple(PATCHED_AS))}")
    return name, [s.layer for s in sites]


def _empty_grid(pair, name, by, direction, layers, method):
    H = n_site_heads(pair.adapter, name)
    return PatchGrid(values=np.full(layout(by).shape(len(layers), pair.T, H), np.nan), site=name, by=by,
                     direction=direction, layers=list(layers), tokens=pair.tokens, heads=list(range(H)),
                     clean_metric=pair.metrics["clean"], corrupted_metric=pair.metrics["corrupted"], method=method)


# -- activation patching ----------------------------------------------------------------------
def _batches(cells, T, limit: Callable[[], int]):
    """Split one layer's cells ``(start pos, head, index)`` (sorted by start) into batches, lazily; a
    batch starts at its first cell's position and holds at most ``limit()`` token-rows (read as each
    batch is formed, so it can follow the measured speed)."""
    cur = []
    for cell in cells:
        if cur:
            p0 = cur[0][0]
            grown = (len(cur) + 1) * (T - p0) > limit()
            split = len(cur) * (T - p0) >= _MIN_BATCH_TOKENS and (T - cell[0]) < _SPLIT_RATIO * (T - p0)
            if grown or split:
                yield cur
                cur = []
        cur.append(cell)
    if cur:
        yield cur


def _plan(grid, name, src, recv):
    """``(no-op indices, [(layer index, cells sorted by start)])``. A cell whose source value equals
    the receiving one (e.g. every position before the first token where the prompts differ) is a
    no-op: its metric is the receiving run's, with no pass at all. A head patched at every position
    starts where that head's value first differs."""
    lay, T, H = grid.layout, len(grid.tokens), len(grid.heads)
    plan, no_op = [], []
    for li, layer in enumerate(grid.layers):
        differs = (src[f"{name}.{layer}"] != recv[f"{name}.{layer}"]).flatten(2 if H else 1).any(-1)  # [T] / [T, H]
        cells = []
        for idx, pos, head in lay.layer_cells(li, T, H):
            d = differs if head is None else differs[:, head]
            if pos is None:
                first = torch.nonzero(d)
                start = int(first[0]) if len(first) else None
            else:
                start = pos if bool(d[pos]) else None
            (no_op.append(idx) if start is None else cells.append((start, head, idx)))
        cells.sort(key=lambda c: c[0])
        plan.append((li, cells))
    return no_op, plan


class _Pace:
    """The token-rows a batch may hold: the memory budget, and with ``seconds`` also about that many
    seconds of work at the speed measured so far (so that whoever waits for the model's lock
    between batches waits at most about that long)."""

    def __init__(self, budget_tokens: int, seconds: float | None):
        self.budget, self.seconds, self.rate = budget_tokens, seconds, None

    def limit(self) -> int:
        if self.seconds is None or self.rate is None:
            return self.budget if self.seconds is None else min(self.budget, _MIN_BATCH_TOKENS)
        return max(1, min(self.budget, int(self.rate * self.seconds)))

    def measured(self, tokens: int, elapsed: float) -> None:
        rate = tokens / max(elapsed, 1e-6)
        self.rate = rate if self.rate is None else 0.5 * (self.rate + rate)


#: Sites after the attention of their block: a patch there at one position changes only that
#: position's resid_post in that block, so the batched pass can start at the next block.
_AFTER_ATTN = ("z", "attn_out", "resid_mid", "mlp_out", "resid_post")


def _resid_post_after(adapter, name, layer, recv, src, pos, heads):
    """``resid_post.layer`` at each edited position (one per edit row) with the patch applied, computed
    token by token (``adapter.finish_block``); None where the adapter cannot."""
    def get(run, site):
        return run[f"{site}.{layer}"]
    pre = get(recv, "resid_pre")[pos]
    if name == "resid_post":
        return get(src, "resid_post")[pos]
    if name == "mlp_out":
        return pre + get(recv, "attn_out")[pos] + get(src, "mlp_out")[pos]
    if name == "resid_mid":
        attn = get(src, "resid_mid")[pos] - pre
    elif name == "attn_out":
        attn = get(src, "attn_out")[pos]
    else:  # z: the receiving run's heads at each position, one of them from the source
        z = get(recv, "z")[pos].clone()
        z[torch.arange(len(pos)), heads] = get(src, "z")[pos, heads]
        attn = adapter.attn_out_of_z(layer, z)
        if attn is None:
            return None
    return adapter.finish_block(layer, pre, attn)


def patch_capture(model, site: str, by: str = "position") -> list[str]:
    """The sites a :class:`PromptPair` must capture for :func:`activation_patching` of ``site`` by
    ``by`` (the site itself, plus what patches after a block's attention are finished from)."""
    adapter = wrap(model)
    name, layers = _check_site(adapter, site, by)
    name_as = PATCHED_AS.get(name, name)   # attn_pattern is patched as the z it produces (.patch_sources)
    extra = ("resid_pre", "attn_out") + (("z",) if name_as == "z" else ()) if name_as in _AFTER_ATTN else ()
    extra += PATTERN_NEEDS if name in PATCHED_AS else ()
    return [f"{n}.{lay}" for lay in layers for n in sorted({name, *extra})]


def _as_patched(pair, name, layers, src, receiver):
    """``(engine site, source values)``: attn_pattern is patched as the z its source pattern gives with
    the ``receiver`` run's values (:func:`.patch_sources.pair_pattern_z`); other sites as they are."""
    if name not in PATCHED_AS:
        return name, src
    return PATCHED_AS[name], {f"z.{lay}": pair_pattern_z(pair, receiver, src[f"attn_pattern.{lay}"], lay)
                              for lay in layers}


def _bytes_per_token_row(adapter, T, full_logits):
    d = adapter.d_model
    kv = 2 * adapter.n_kv_heads * adapter.d_head * adapter.n_layers       # the keys/values kept per token
    work = 16 * d + 3 * adapter.n_heads * T                               # activations alive in one block
    return 4 * (kv + work + (adapter.d_vocab if full_logits else 0))


def _run_batch(pair, grid, name, layer, batch, base, receiver, src, recv, cancel):
    """The metric of each cell of one batch (one batched pass from the patched layer on)."""
    adapter, T, n, p0 = pair.adapter, pair.T, len(batch), batch[0][0]
    value = src[f"{name}.{layer}"]
    rows = torch.arange(n)
    if grid.by == "head":       # one head per row, at every position from p0 on (before it, nothing differs)
        rows = rows.repeat_interleave(T - p0)
        pos = torch.arange(p0, T).repeat(n)
        heads = torch.tensor([c[1] for c in batch]).repeat_interleave(T - p0)
    else:
        pos = torch.tensor([c[0] for c in batch])
        heads = None if grid.by == "position" else torch.tensor([c[1] for c in batch])
    values = value[pos] if heads is None else value[pos, heads]
    with torch.inference_mode():
        post = _resid_post_after(adapter, name, layer, recv, src, pos, heads) if name in _AFTER_ATTN else None
        if post is None:     # run from block `layer`, editing the site itself
            edit = Edit(Site(name, layer), rows, pos, heads, values)
            final = adapter.forward_from(base, n, [edit], start_layer=layer, start_pos=p0, abort=cancel,
                                         keep=pair.keep(p0))
        elif layer + 1 < adapter.n_layers:   # run from the next block, editing its input
            edit = Edit(Site("resid_pre", layer + 1), rows, pos, None, post)
            final = adapter.forward_from(base, n, [edit], start_layer=layer + 1, start_pos=p0, abort=cancel,
                                         keep=pair.keep(p0))
        else:                # the last block: the patched resid_post is the final residual stream
            final = pair.final[receiver][p0:].to(post.device, post.dtype).expand(n, -1, -1).clone()
            final[rows, pos - p0] = post
        return pair.metric_of(final, p0, receiver).float().cpu().numpy()


def activation_patching(model, clean=None, corrupted=None, site: str = "resid_pre", by: str = "position",
                        metric: Callable | None = None, answers: Sequence | None = None, direction: str = "denoise",
                        batch_budget_mb: float = 256, on_progress: Callable[[PatchGrid, int, int], None] | None = None,
                        cancel: Callable[[], bool] | None = None,
                        lock: Callable[[], ContextManager] | None = None,
                        batch_seconds: float | None = None) -> PatchGrid:
    """Patch ``site`` (every layer, or one: ``"z.3"``) cell by cell and return the grid of metrics.

    ``model``: a mechviz adapter or anything :func:`mechviz.models.wrap` accepts, with ``clean``
    and ``corrupted`` (text or token ids, of equal token length); or a :class:`PromptPair` (then
    leave those, ``metric`` and ``answers`` out). ``metric``: logits ``[batch, T, vocab]`` ->
    ``[batch]``; default :func:`logit_diff` of ``answers=(correct, wrong)`` (text or ids), or of the
    two prompts' top predictions. ``by``: ``"position"`` for residual sites (resid_pre, resid_mid,
    resid_post, attn_out, mlp_out), ``"head"`` or ``"head_position"`` for z, q, k, v and attn_pattern (by destination position;
    patched as the z it produces with the receiving run's values, :mod:`.patch_sources`).
    ``on_progress(grid, done, total)`` is called after each batch with the partially filled grid
    (NaN = not computed yet); ``cancel()`` is polled between batches and before each block of a
    pass, and once it returns True the partial grid is returned with ``complete=False``.
    ``lock()``: a context manager held around the set-up and each batch, and released between
    them (a Lab passes its model lock, so that live edits are served while a grid computes);
    ``batch_seconds``: keep each batch to about that much work at the measured speed (so that a
    wait for the lock is short); None: batches are bounded by ``batch_budget_mb`` only.
    Equals TransformerLens' ``patching.get_act_patch_<site>[_by_pos|_all_pos]`` (attn_pattern:
    ``get_act_patch_attn_head_pattern_{all_pos,by_pos}``, whose by_pos is ``[layer, head, dest]``).
    """
    receiver, source = direction_roles(direction)
    hold = lock or nullcontext
    with hold():
        adapter = model.adapter if isinstance(model, PromptPair) else wrap(model)
        name, layers = _check_site(adapter, site, by)
        remote = getattr(adapter, "remote", False)  # nnsight on NDIF: no activations downloaded (see below)
        capture = () if remote else patch_capture(adapter, site, by)
        pair = _pair(model, clean, corrupted, metric, answers, capture=capture)
        grid = _empty_grid(pair, name, by, direction, layers, "activation")
        if remote:  # cells as rows of traces evaluated where the model is, only their metrics downloaded
            from .reduced import remote_patching
            return remote_patching(grid, pair, name, layers, receiver, source, on_progress, cancel)
        src, recv = pair.runs[source].cache, pair.runs[receiver].cache
        base = adapter.patch_base(pair.ids[receiver])
        name, src = _as_patched(pair, name, layers, src, receiver)
    budget = max(1, int(batch_budget_mb * 2**20) // _bytes_per_token_row(adapter, pair.T, not pair.subset))
    pace = _Pace(budget, batch_seconds)
    no_op, plan = _plan(grid, name, src, recv)

    total, done = grid.values.size, len(no_op)
    for idx in no_op:
        grid.values[idx] = pair.metrics[receiver]
    if no_op and on_progress is not None:
        on_progress(grid, done, total)
    for li, cells in plan:
        for batch in _batches(cells, pair.T, pace.limit):
            if cancel is not None and cancel():
                grid.complete = False
                return grid
            try:
                with hold():
                    t0 = time.perf_counter()
                    vals = _run_batch(pair, grid, name, layers[li], batch, base, receiver, src, recv, cancel)
                    pace.measured(len(batch) * (pair.T - batch[0][0]), time.perf_counter() - t0)
            except Aborted:      # cancel() turned True inside the pass
                grid.complete = False
                return grid
            if not np.isfinite(vals).all():
                bad = [c[2] for c, v in zip(batch, vals) if not np.isfinite(v)]
                raise FloatingPointError(f"patched runs give a non-finite metric (NaN or inf) at {len(bad)} cell(s) of "
                                         f"{name}.{layers[li]}, e.g. {bad[0]}: the model overflows there")
            for c, v in zip(batch, vals):
                grid.values[c[2]] = v
            done += len(batch)
            if on_progress is not None:
                on_progress(grid, done, total)
    return grid


# -- attribution patching ---------------------------------------------------------------------
def _source_delta(pair, name, layer, receiver, source):
    """``source - receiving`` value of ``name.layer`` from the pair's runs (which may hold a synthetic
    source, as an ablation's does); for attn_pattern, of the z it gives: z is linear in the pattern, so
    ``d(pattern) . dm/d(pattern) = d(z) . dm/dz`` exactly."""
    site = f"{name}.{layer}"
    recv = pair.ensure([site]).runs[receiver].cache
    src = pair.runs[source][site]
    if name in PATCHED_AS:
        return pair_pattern_z(pair, receiver, src, layer) - pair.runs[receiver][f"z.{layer}"]
    return src - recv[site]


def attribution_patching_all(model, clean=None, corrupted=None, grids: Sequence[tuple[str, str]] = ALL_GRIDS,
                             metric: Callable | None = None, answers: Sequence | None = None,
                             direction: str = "denoise") -> dict[tuple[str, str], PatchGrid]:
    """First-order estimates of every ``(site, by)`` grid in ``grids`` from one forward and one
    backward pass over the prompt pair: ``{(site, by): PatchGrid}``, shaped and read like
    :func:`activation_patching`'s grids (``method="attribution"``). ``model`` may be a
    :class:`PromptPair`, as for :func:`activation_patching`."""
    receiver, source = direction_roles(direction)
    adapter = model.adapter if isinstance(model, PromptPair) else wrap(model)
    checked = [(_check_site(adapter, s, by), by) for s, by in grids]
    pair = _pair(model, clean, corrupted, metric, answers)
    sites = parse_sites([f"{PATCHED_AS.get(name, name)}.{lay}" for (name, layers), _ in checked for lay in layers],
                        adapter.n_layers)
    ids = torch.stack([pair.ids["clean"], pair.ids["corrupted"]])
    acts = adapter.grad_run(ids, sites, lambda final: pair.metric_of(final, 0, "clean").sum())
    r, s = ("clean", "corrupted").index(receiver), ("clean", "corrupted").index(source)
    out = {}
    for (name, layers), by in checked:
        grid = _empty_grid(pair, name, by, direction, layers, "attribution")
        for li, layer in enumerate(layers):
            act, grad = acts[f"{PATCHED_AS.get(name, name)}.{layer}"]
            delta = _source_delta(pair, name, layer, receiver, source) if name in PATCHED_AS or pair.synthetic \
                else act[s] - act[r]
            attr = (delta * grad[r]).sum(-1)       # [T] or [T, heads]
            if by == "head":
                attr = attr.sum(0)
            grid.values[li] = attr.numpy() + pair.metrics[receiver]
        out[(name, by)] = grid
    return out


def attribution_patching(model, clean=None, corrupted=None, site: str = "resid_pre", by: str = "position",
                         metric: Callable | None = None, answers: Sequence | None = None,
                         direction: str = "denoise") -> PatchGrid:
    """The attribution-patching estimate of :func:`activation_patching`'s grid for ``site``."""
    return next(iter(attribution_patching_all(model, clean, corrupted, [(site, by)], metric, answers,
                                              direction).values()))
