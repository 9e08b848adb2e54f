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

>>> grid = activation_patching(adapter, clean, corrupted, "resid_pre", answers=(" Mary", " John"))  # doctest: +SKIP
>>> grid.normalized()           # 1 = restores the clean metric, 0 = no effect     # doctest: +SKIP
>>> grid.figure()                                                                 # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ..models import Aborted, ModelAdapter, SiteError, parse_sites, wrap
from ..models.base import Edit
from ..models.sites import Site

#: Sites patched per layer and position (grid ``[layer, pos]``).
RESID_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
#: Sites patched per head: ``z`` is the head's output (TransformerLens' "attn_head_out"); ``k`` and
#: ``v`` have ``n_kv_heads`` heads in grouped-query models.
HEAD_SITES = ("z", "q", "k", "v")
#: ``"position"``: ``[layer, pos]``; ``"head"``: every position of one head, ``[layer, head]``;
#: ``"head_position"``: one head at one position, ``[layer, pos, head]`` (TransformerLens' order).
BYS = ("position", "head", "head_position")
#: Every grid :func:`attribution_patching_all` estimates by default.
ALL_GRIDS = [(s, "position") for s in RESID_SITES] + [(s, by) for s in HEAD_SITES for by in ("head", "head_position")]

# A batch stops growing past this many token-rows once the next cell would start later (a forward
# pass of GPT-2 small runs at the CPU's matmul peak from about 128 token-rows on; later cells then get a
# batch that skips more positions).
_MIN_BATCH_TOKENS = 128
_SPLIT_RATIO = 0.9


# -- metrics ----------------------------------------------------------------------------------
class LogitDiff:
    """``logits[..., pos, correct] - logits[..., pos, wrong]``: one value per batch row.

    Declares what it reads (``positions``, ``token_ids``) so that patching computes only those
    logits; :meth:`from_subset` takes ``logits[:, positions][..., token_ids]``.
    """

    def __init__(self, correct_id: int, wrong_id: int, pos: int = -1):
        self.correct_id, self.wrong_id, self.pos = int(correct_id), int(wrong_id), int(pos)
        self.positions = (self.pos,)
        self.token_ids = (self.correct_id, self.wrong_id)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[..., self.pos, self.correct_id] - logits[..., self.pos, self.wrong_id]

    def from_subset(self, sub: torch.Tensor) -> torch.Tensor:
        return sub[:, 0, 0] - sub[:, 0, 1]

    def __repr__(self) -> str:
        return f"logit_diff(correct_id={self.correct_id}, wrong_id={self.wrong_id}, pos={self.pos})"


def logit_diff(correct_id: int, wrong_id: int, pos: int = -1) -> LogitDiff:
    """The default metric: logit of the correct answer minus that of the wrong one, at ``pos``."""
    return LogitDiff(correct_id, wrong_id, pos)


# -- results ----------------------------------------------------------------------------------
@dataclass
class PatchGrid:
    """One patching grid. ``values`` holds the patched metric (NaN where not computed yet):
    ``[layer, pos]`` (``by="position"``), ``[layer, head]`` (``"head"``) or ``[layer, pos, head]``
    (``"head_position"``). ``tokens`` label positions (clean token, ``clean/corrupted`` where they
    differ)."""

    values: np.ndarray
    site: str
    by: str
    direction: str
    layers: list[int]
    tokens: list[str]
    heads: list[int]
    clean_metric: float
    corrupted_metric: float
    method: str = "activation"
    complete: bool = True
    meta: dict = field(default_factory=dict)

    @property
    def dims(self) -> tuple[str, ...]:
        return {"position": ("layer", "pos"), "head": ("layer", "head"),
                "head_position": ("layer", "pos", "head")}[self.by]

    @property
    def n_done(self) -> int:
        return int(np.isfinite(self.values).sum())

    def normalized(self) -> np.ndarray:
        """The share of the clean-corrupted metric gap the patch moves: denoising
        ``(v - corrupted) / (clean - corrupted)`` (1 = fully restored), noising
        ``(clean - v) / (clean - corrupted)`` (1 = fully destroyed); 0 = no effect either way."""
        gap = self.clean_metric - self.corrupted_metric
        if gap == 0:
            raise ZeroDivisionError("clean and corrupted metrics are equal: nothing to normalise by")
        if self.direction == "denoise":
            return (self.values - self.corrupted_metric) / gap
        return (self.clean_metric - self.values) / gap

    def to_numpy(self) -> np.ndarray:
        return self.values.copy()

    def _matrix(self, values):
        """2-D view for drawing, with row and column labels."""
        pos_labels = [f"{i} {t!r}" for i, t in enumerate(self.tokens)]
        if self.by == "position":
            return values, [f"L{lay}" for lay in self.layers], pos_labels
        if self.by == "head":
            return values, [f"L{lay}" for lay in self.layers], [f"H{h}" for h in self.heads]
        L, T, H = values.shape
        rows = [f"L{lay}H{h}" for lay in self.layers for h in self.heads]
        return values.transpose(0, 2, 1).reshape(L * H, T), rows, pos_labels

    def figure(self, normalized: bool = True, ax=None):
        """A matplotlib heatmap (diverging colormap centred on zero) of the normalised values
        (or the metric change ``v - receiving metric`` when ``normalized=False``)."""
        import matplotlib.pyplot as plt

        if normalized:
            values, what = self.normalized(), "share of the clean-corrupted gap"
        else:
            base = self.corrupted_metric if self.direction == "denoise" else self.clean_metric
            values, what = self.values - base, "metric change"
        mat, rows, cols = self._matrix(values)
        own = ax is None
        if own:
            _, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(cols) + 2), max(3.0, 0.3 * len(rows) + 1.5)))
        lim = float(np.nanmax(np.abs(mat))) if np.isfinite(mat).any() else 1.0
        im = ax.imshow(mat, cmap="RdBu_r", vmin=-(lim or 1.0), vmax=lim or 1.0, aspect="auto", interpolation="nearest")
        ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=7)
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set_xlabel("position" if self.by != "head" else "head")
        ax.set_ylabel("layer" if self.by != "head_position" else "layer / head")
        state = "" if self.complete else " (incomplete)"
        ax.set_title(f"{self.method} patching, {self.site} by {self.by}, {self.direction}{state}", fontsize=9)
        ax.figure.colorbar(im, ax=ax, label=what)
        if own:
            ax.figure.tight_layout()
        return ax.figure

    def __repr__(self) -> str:
        shape = " x ".join(f"{n} {d}" for n, d in zip(self.values.shape, self.dims))
        done = "" if self.n_done == self.values.size else f", {self.n_done}/{self.values.size} cells done"
        state = "" if self.complete else ", INCOMPLETE (cancelled)"
        return (f"PatchGrid({self.method} patching of {self.site} by {self.by}, {self.direction}: "
                f"{shape}{done}{state}; "
                f"clean metric {self.clean_metric:.4g}, corrupted {self.corrupted_metric:.4g}; "
                f"values range {np.nanmin(self.values) if self.n_done else float('nan'):.4g}.."
                f"{np.nanmax(self.values) if self.n_done else float('nan'):.4g})")


# -- shared set-up ----------------------------------------------------------------------------
class _Pair:
    """The prompt pair, the metric, and how to read the metric off final residual streams."""

    def __init__(self, model, clean, corrupted, metric, answers, capture=()):
        self.adapter: ModelAdapter = wrap(model)
        a = self.adapter
        self.clean_ids, self.corrupted_ids = a.to_tokens(clean), a.to_tokens(corrupted)
        nc, nx = self.clean_ids.numel(), self.corrupted_ids.numel()
        if nc != nx:
            def show(ids):
                toks = a.to_str_tokens(ids)
                return str(toks) if len(toks) <= 24 else f"{toks[:12]}...{toks[-12:]}"
            raise ValueError(f"clean has {nc} tokens, corrupted has {nx}: patching needs prompts of equal token "
                             f"length (clean: {show(self.clean_ids)}, corrupted: {show(self.corrupted_ids)})")
        self.T = nc
        last = f"resid_post.{a.n_layers - 1}"
        cap = list(capture) + [last]
        self.runs = {"clean": a.run(self.clean_ids, capture=cap), "corrupted": a.run(self.corrupted_ids, capture=cap)}
        self.final = {k: r[last] for k, r in self.runs.items()}
        cs, xs = self.runs["clean"].token_strs, self.runs["corrupted"].token_strs
        self.tokens = [c if c == x else f"{c}/{x}" for c, x in zip(cs, xs)]
        self.metric = self._resolve_metric(metric, answers)
        both = torch.stack([self.runs["clean"].logits, self.runs["corrupted"].logits])
        vals = self.metric(both)
        if not isinstance(vals, torch.Tensor) or vals.shape != (2,):
            shape = tuple(vals.shape) if isinstance(vals, torch.Tensor) else type(vals).__name__
            raise ValueError(f"the metric must return one value per batch row: logits [batch, T, vocab] -> [batch]; "
                             f"on a batch of 2 it returned {shape}. A TransformerLens-style metric that averages "
                             "over the batch must not average here.")
        self.metrics = {"clean": float(vals[0]), "corrupted": float(vals[1])}
        self.subset = all(hasattr(self.metric, n) for n in ("positions", "token_ids", "from_subset"))

    def _resolve_metric(self, metric, answers):
        if metric is not None:
            if answers is not None:
                raise ValueError("pass either metric= or answers=, not both")
            return metric
        a = self.adapter
        if answers is None:
            top = [int(self.runs[k].logits[-1].argmax()) for k in ("clean", "corrupted")]
            if top[0] == top[1]:
                raise ValueError(f"clean and corrupted prompts both predict {a.to_str_tokens([top[0]])[0]!r}: "
                                 "pass answers=(correct, wrong) or a metric")
            return logit_diff(*top)
        if len(answers) != 2:
            raise ValueError(f"answers must be (correct, wrong); got {answers!r}")
        return logit_diff(*(self._token_id(x) for x in answers))

    def _token_id(self, answer) -> int:
        if not isinstance(answer, str):
            return int(answer)
        tok = self.adapter.tokenizer
        ids = list(tok(answer, add_special_tokens=False)["input_ids"]) if tok is not None else []
        if len(ids) != 1:
            raise ValueError(f"answer {answer!r} is {len(ids)} tokens; an answer must be exactly one token "
                             "(mind the leading space), or pass token ids")
        return ids[0]

    def keep(self, start_pos: int) -> list[int] | None:
        """The positions (>= ``start_pos``) of a pass's final residual that the metric reads, or
        None when the metric reads every logit."""
        return sorted({p % self.T for p in self.metric.positions if p % self.T >= start_pos}) if self.subset else None

    def metric_of(self, final: torch.Tensor, start_pos: int, receiver: str) -> torch.Tensor:
        """Metric per row from final residual streams ``[B, T - start_pos, d]``; positions before
        ``start_pos`` are the ``receiver`` run's."""
        a, B = self.adapter, final.shape[0]
        if self.subset:
            recv = self.final[receiver].to(final.device, final.dtype)
            cols = []
            for q in (p % self.T for p in self.metric.positions):
                cols.append(final[:, q - start_pos] if q >= start_pos else recv[q].expand(B, -1))
            sub = a.unembed_tokens(a.final_norm(torch.stack(cols, 1)), self.metric.token_ids)
            vals = self.metric.from_subset(sub.float())
        else:
            logits = a.unembed(a.final_norm(final)).float()
            if start_pos > 0:
                head = self.runs[receiver].logits[:start_pos].to(logits.device)
                logits = torch.cat([head.expand(B, -1, -1), logits], 1)
            vals = self.metric(logits)
        if vals.shape != (B,):
            raise ValueError(f"the metric must return one value per batch row ([{B}]); got {tuple(vals.shape)}")
        return vals


def prompt_pair(model, clean, corrupted, metric: Callable | None = None, answers: Sequence | None = None,
                capture=()) -> _Pair:
    """The clean and corrupted runs (capturing ``capture``) and the metric exactly as the grids
    resolve it: ``pair.runs["clean" | "corrupted"]``, ``pair.metric(logits [B, T, vocab]) -> [B]``,
    ``pair.metrics`` (the two prompts' values)."""
    return _Pair(model, clean, corrupted, metric, answers, capture=capture)


def _check_site(adapter, site, by):
    sites = parse_sites(site, adapter.n_layers)
    names = {s.name for s in sites}
    if len(names) != 1:
        raise SiteError(f"patch one site at a time; got {sorted(names)}")
    name = names.pop()
    if name in RESID_SITES:
        if by != "position":
            raise ValueError(f"{name} has no head axis: use by='position' (got by={by!r})")
    elif name in HEAD_SITES:
        if by not in ("head", "head_position"):
            raise ValueError(f"{name} is per head: use by='head' (all positions) or 'head_position' (got by={by!r})")
    else:
        raise SiteError(f"site {name!r} cannot be patched here; patchable sites: {', '.join(RESID_SITES + HEAD_SITES)}")
    return name, [s.layer for s in sites]


def _direction(direction):
    if direction not in ("denoise", "noise"):
        raise ValueError(f"direction must be 'denoise' (clean into corrupted) or 'noise' (corrupted into clean); "
                         f"got {direction!r}")
    return ("corrupted", "clean") if direction == "denoise" else ("clean", "corrupted")  # receiver, source


def _n_heads(adapter, name):
    return adapter.n_kv_heads if name in ("k", "v") else adapter.n_heads


def _empty_grid(pair, name, by, direction, layers, method):
    H = _n_heads(pair.adapter, name) if name in HEAD_SITES else 0
    shape = {"position": (len(layers), pair.T), "head": (len(layers), H), "head_position": (len(layers), pair.T, H)}[by]
    return PatchGrid(values=np.full(shape, np.nan), site=name, by=by, direction=direction, layers=list(layers),
                     tokens=pair.tokens, heads=list(range(H)), clean_metric=pair.metrics["clean"],
                     corrupted_metric=pair.metrics["corrupted"], method=method)


# -- activation patching ----------------------------------------------------------------------
def _batches(cells, T, max_tokens):
    """Split one layer's cells ``(pos, head, index)`` (sorted by position) into batches; a batch
    starts at its first cell's position."""
    out, cur = [], []
    for cell in cells:
        if cur:
            p0 = cur[0][0]
            grown = (len(cur) + 1) * (T - p0) > max_tokens
            split = len(cur) * (T - p0) >= _MIN_BATCH_TOKENS and (T - cell[0]) < _SPLIT_RATIO * (T - p0)
            if grown or split:
                out.append(cur)
                cur = []
        cur.append(cell)
    return out + ([cur] if cur else [])


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


def _bytes_per_token_row(adapter, T, full_logits):
    d = adapter.d_model
    kv = 2 * adapter.n_kv_heads * adapter.d_head * adapter.n_layers       # the keys/values kept per token
    work = 16 * d + 3 * adapter.n_heads * T                               # activations alive in one block
    return 4 * (kv + work + (adapter.d_vocab if full_logits else 0))


def activation_patching(model, clean, corrupted, site: str, by: str = "position", metric: Callable | None = None,
                        answers: Sequence | None = None, direction: str = "denoise", batch_budget_mb: float = 256,
                        on_progress: Callable[[PatchGrid, int, int], None] | None = None,
                        cancel: Callable[[], bool] | None = None) -> PatchGrid:
    """Patch ``site`` (every layer, or one: ``"z.3"``) cell by cell and return the grid of metrics.

    ``model``: a mechviz adapter or anything :func:`mechviz.models.wrap` accepts. ``clean``,
    ``corrupted``: text or token ids, of equal token length. ``metric``: logits ``[batch, T, vocab]``
    -> ``[batch]``; default :func:`logit_diff` of ``answers=(correct, wrong)`` (text or ids), or of the
    two prompts' top predictions. ``by``: ``"position"`` for residual sites (resid_pre, resid_mid,
    resid_post, attn_out, mlp_out), ``"head"`` or ``"head_position"`` for z, q, k, v.
    ``on_progress(grid, done, total)`` is called after each batch with the partially filled grid
    (NaN = not computed yet); ``cancel()`` is polled between batches and before each block of a
    pass, and once it returns True the partial grid is returned with ``complete=False``. Equals TransformerLens' ``patching.get_act_patch_<site>[_by_pos|_all_pos]``.
    """
    receiver, source = _direction(direction)
    adapter = wrap(model)
    name, layers = _check_site(adapter, site, by)
    extra = ("resid_pre", "attn_out") + (("z",) if name == "z" else ()) if name in _AFTER_ATTN else ()
    pair = _Pair(adapter, clean, corrupted, metric, answers,
                 capture=[f"{n}.{lay}" for lay in layers for n in {name, *extra}])
    grid = _empty_grid(pair, name, by, direction, layers, "activation")
    T, H = pair.T, len(grid.heads)
    src, recv = pair.runs[source].cache, pair.runs[receiver].cache
    base = adapter.patch_base(getattr(pair, f"{receiver}_ids"))
    max_tokens = max(1, int(batch_budget_mb * 2**20) // _bytes_per_token_row(adapter, T, not pair.subset))

    # A cell whose source value equals the receiving one (e.g. every position before the first token
    # where the prompts differ) is a no-op: its metric is the receiving run's, with no pass at all.
    # A head patched at every position starts where that head's value first differs.
    plan, no_op = [], []  # plan: (layer index, batch of (start pos, head, grid index))
    for li, layer in enumerate(layers):
        differs = (src[f"{name}.{layer}"] != recv[f"{name}.{layer}"]).flatten(2 if by != "position" else 1).any(-1)
        cells = []
        if by == "position":
            for p in range(T):
                (cells if differs[p] else no_op).append((p, None, (li, p)))
        elif by == "head":
            for h in range(H):
                first = torch.nonzero(differs[:, h])
                (cells if len(first) else no_op).append((int(first[0]) if len(first) else 0, h, (li, h)))
            cells.sort(key=lambda c: c[0])
        else:
            for p in range(T):
                for h in range(H):
                    (cells if differs[p, h] else no_op).append((p, h, (li, p, h)))
        plan += [(li, b) for b in _batches(cells, T, max_tokens)]

    total, done = grid.values.size, len(no_op)
    for c in no_op:
        grid.values[c[2]] = pair.metrics[receiver]
    if no_op and on_progress is not None:
        on_progress(grid, done, total)
    for li, batch in plan:
        if cancel is not None and cancel():
            grid.complete = False
            break
        layer, p0, n = layers[li], batch[0][0], len(batch)
        value = src[f"{name}.{layer}"]
        rows = torch.arange(n)
        if by == "position":
            pos, heads = torch.tensor([c[0] for c in batch]), None
        elif by == "head":       # one head per row, at every position from p0 on (before it, nothing differs)
            rows = rows.repeat_interleave(T - p0)
            pos = torch.arange(p0, T).repeat(n)
            heads = torch.tensor([c[1] for c in batch]).repeat_interleave(T - p0)
        else:
            pos, heads = torch.tensor([c[0] for c in batch]), torch.tensor([c[1] for c in batch])
        values = value[pos] if heads is None else value[pos, heads]
        try:
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
                vals = pair.metric_of(final, p0, receiver).float().cpu().numpy()
        except Aborted:      # cancel() turned True inside the pass
            grid.complete = False
            break
        for c, v in zip(batch, vals):
            grid.values[c[2]] = v
        done += n
        if on_progress is not None:
            on_progress(grid, done, total)
    return grid


# -- attribution patching ---------------------------------------------------------------------
def attribution_patching_all(model, clean, corrupted, grids: Sequence[tuple[str, str]] = ALL_GRIDS,
                             metric: Callable | None = None, answers: Sequence | None = None,
                             direction: str = "denoise") -> dict[tuple[str, str], PatchGrid]:
    """First-order estimates of every ``(site, by)`` grid in ``grids`` from one forward and one
    backward pass over the prompt pair: ``{(site, by): PatchGrid}``, shaped and read like
    :func:`activation_patching`'s grids (``method="attribution"``)."""
    receiver, source = _direction(direction)
    adapter = wrap(model)
    checked = [(_check_site(adapter, s, by), by) for s, by in grids]
    pair = _Pair(adapter, clean, corrupted, metric, answers)
    sites = parse_sites([f"{name}.{lay}" for (name, layers), _ in checked for lay in layers], adapter.n_layers)
    ids = torch.stack([pair.clean_ids, pair.corrupted_ids])
    acts = adapter.grad_run(ids, sites, lambda final: pair.metric_of(final, 0, "clean").sum())
    r, s = ("clean", "corrupted").index(receiver), ("clean", "corrupted").index(source)
    out = {}
    for (name, layers), by in checked:
        grid = _empty_grid(pair, name, by, direction, layers, "attribution")
        for li, layer in enumerate(layers):
            act, grad = acts[f"{name}.{layer}"]
            attr = ((act[s] - act[r]) * grad[r]).sum(-1)       # [T] or [T, heads]
            if by == "head":
                attr = attr.sum(0)
            grid.values[li] = attr.numpy() + pair.metrics[receiver]
        out[(name, by)] = grid
    return out


def attribution_patching(model, clean, corrupted, site: str, by: str = "position", metric: Callable | None = None,
                         answers: Sequence | None = None, direction: str = "denoise") -> PatchGrid:
    """The attribution-patching estimate of :func:`activation_patching`'s grid for ``site``."""
    return next(iter(attribution_patching_all(model, clean, corrupted, [(site, by)], metric, answers,
                                              direction).values()))
