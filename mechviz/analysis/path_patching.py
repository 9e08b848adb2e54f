"""Path patching: how much of a metric flows from sender heads to receivers *directly* (Wang et al. 2022,
"Interpretability in the Wild", IOI; ARENA 1.4.1), as a sender x receiver grid.

For a sender head ``s`` and a receiver set ``R``, with the *receiving* prompt and the *source* prompt of
``direction`` (as in :func:`~.patching.activation_patching`: ``"noise"`` receives the clean prompt and
takes values from the corrupted one, as Wang et al. and ARENA do, and is the default here; ``"denoise"``
is the reverse):

1. run both prompts, keeping every head's output ``z``;
2. run the receiving prompt with ``s``'s ``z`` set to its source value and **every other head's** ``z``, in
   every layer, frozen at its receiving value (MLPs and norms are recomputed), and keep the receivers'
   inputs: so the sender reaches a receiver only directly (and through MLPs), never through another head;
3. run the receiving prompt again with only those receiver inputs patched in, and read the metric.

A receiver is ``("q" | "k" | "v", layer, head)``: that head's query, key or value input, i.e. the site
``q``/``k``/``v`` of :mod:`~mechviz.models.sites` (the projections, before rotary and before any
QK-norm), or ``"final"``: the residual stream after the last block, whose step 3 is the metric of
step 2 itself. **Grouped-query attention:** ``q`` receivers index query heads, ``k`` and ``v`` receivers
index *key/value heads* (``0 .. n_kv_heads - 1``): a model has one key and one value per kv-head, shared
by the ``H / H_kv`` query heads ``h`` with ``h // (H / H_kv) == kv_head``, so patching "the key of query
head 5" cannot be done without patching it for the whole group. Naming the kv-head makes that explicit
(TransformerLens #980 instead patches the repeated keys of one query head, which the model does not
have). A receiver may also be a list of receivers patched together (one column, as ARENA's
"name mover heads' queries").

Senders are heads ``(layer, head)``; a sender in a layer at or after a receiver's (lowest) layer cannot
reach it directly: that cell is NaN and not computed. Each column's step 2 is shared by all columns
(one pass per batch of senders captures every receiver's input), batches of senders run as rows of one
pass (``adapter.forward_from``) from the lowest sender layer of the batch and from the first position
where a sender's source and receiving outputs differ (earlier positions cannot change).

>>> grid = path_patching(model, clean, corrupted, receivers=[("q", 2, 0), ("k", 2, 0), "final"],
...                      answers=(" Mary", " John"))                     # doctest: +SKIP
>>> grid.by_head(0)      # [layer, head] senders grid of the first receiver   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..models import SiteError, wrap
from ..models.base import Edit
from ..models.sites import Site
from .prompt_pair import PromptPair, direction_roles
from .patch_grid import normalized

__all__ = ["path_patching", "PathPatchGrid", "Receiver"]

QKV = ("q", "k", "v")


@dataclass(frozen=True)
class Receiver:
    """One receiver: ``kind`` ``"q" | "k" | "v"`` of ``head`` in ``layer`` (a key/value head for k and v),
    or ``kind="final"`` (the final residual stream; layer = n_layers, head None)."""

    kind: str
    layer: int
    head: int | None = None

    def __str__(self) -> str:
        if self.kind == "final":
            return "final resid"
        return f"{self.kind} {self.layer}.{self.head}" + (" (kv)" if self.kind in ("k", "v") else "")


@dataclass
class PathPatchGrid:
    """Path-patching metrics ``values [n_senders, n_receivers]`` (NaN: sender not below the receiver).
    ``senders[i] = (layer, head)``; ``receivers[j]`` a tuple of :class:`Receiver` (one, or a set patched
    together); ``labels[j]`` its name."""

    values: np.ndarray
    senders: list[tuple[int, int]]
    receivers: list[tuple[Receiver, ...]]
    direction: str
    clean_metric: float
    corrupted_metric: float
    n_layers: int
    n_heads: int

    @property
    def labels(self) -> list[str]:
        return [" + ".join(map(str, r)) for r in self.receivers]

    @property
    def receiving_metric(self) -> float:
        return self.corrupted_metric if self.direction == "denoise" else self.clean_metric

    def normalized(self) -> np.ndarray:
        """As :meth:`~.patch_grid.PatchGrid.normalized` (:func:`.patch_grid.normalized`)."""
        return normalized(self.values, self.clean_metric, self.corrupted_metric, self.direction)

    def by_head(self, receiver: int = 0, values: np.ndarray | None = None) -> np.ndarray:
        """Column ``receiver`` as a ``[layer, head]`` grid of senders (NaN where not a sender)."""
        vals = self.values if values is None else values
        out = np.full((self.n_layers, self.n_heads), np.nan)
        for i, (layer, head) in enumerate(self.senders):
            out[layer, head] = vals[i, receiver]
        return out

    def top(self, receiver: int = 0, k: int = 5, normalized: bool = True) -> list[tuple[int, int]]:
        """The ``k`` senders with the largest effect on ``receiver`` (by |normalized value| or
        |value - receiving metric|)."""
        col = (self.normalized() if normalized else self.values - self.receiving_metric)[:, receiver]
        order = [i for i in np.argsort(-np.abs(np.nan_to_num(col, nan=0.0))) if np.isfinite(col[i])]
        return [self.senders[i] for i in order[:k]]

    def __repr__(self) -> str:
        return (f"PathPatchGrid({len(self.senders)} senders x {len(self.receivers)} receivers "
                f"[{', '.join(self.labels)}], {self.direction}; clean metric {self.clean_metric:.4g}, "
                f"corrupted {self.corrupted_metric:.4g})")


# -- edits that freeze or read a whole site (duck-typed base.Edit: the adapters call .apply) ------
class _Freeze:
    """Set every row of ``site`` to ``values`` ``[T - start_pos, ...]`` (the receiving run's)."""

    def __init__(self, site: Site, values: torch.Tensor):
        self.site, self.values = site, values

    def apply(self, act, start_pos):
        act[:] = self.values.to(act.device, act.dtype)


class _Capture:
    """Read ``site`` (``[rows, T - start_pos, heads, d_head]``) as the pass computes it; writes nothing."""

    def __init__(self, site: Site):
        self.site, self.value = site, None

    def apply(self, act, start_pos):
        self.value = act.detach().float().cpu().clone()


# -- arguments --------------------------------------------------------------------------------
def _receiver(adapter, spec) -> Receiver:
    if spec == "final":
        return Receiver("final", adapter.n_layers)
    if isinstance(spec, Receiver):
        spec = (spec.kind, spec.layer, spec.head)
    if not (isinstance(spec, tuple) and len(spec) == 3 and spec[0] in QKV):
        raise ValueError(f"a receiver is ('q' | 'k' | 'v', layer, head) or 'final'; got {spec!r}")
    kind, layer, head = spec[0], int(spec[1]), int(spec[2])
    n = adapter.n_heads if kind == "q" else adapter.n_kv_heads
    if not 0 <= layer < adapter.n_layers:
        raise SiteError(f"receiver {spec!r}: the model has layers 0..{adapter.n_layers - 1}")
    if not 0 <= head < n:
        what = "query heads" if kind == "q" else "key/value heads (k and v receivers name a kv-head)"
        raise SiteError(f"receiver {spec!r}: layer {layer} has {n} {what}")
    return Receiver(kind, layer, head)


def _receiver_sets(adapter, receivers) -> list[tuple[Receiver, ...]]:
    if isinstance(receivers, (str, tuple, Receiver)):
        receivers = [receivers]
    out = []
    for r in receivers:
        group = r if isinstance(r, list) else [r]
        if not group:
            raise ValueError("an empty receiver set")
        rs = tuple(_receiver(adapter, g) for g in group)
        if len(rs) > 1 and any(r.kind == "final" for r in rs):
            raise ValueError("'final' is a receiver on its own, not part of a set")
        out.append(rs)
    return out


def _senders(adapter, senders, top_layer: int) -> list[tuple[int, int]]:
    if senders is None:
        return [(lay, h) for lay in range(top_layer) for h in range(adapter.n_heads)]
    out = []
    for s in senders:
        layer, head = int(s[0]), int(s[1])
        if not (0 <= layer < adapter.n_layers and 0 <= head < adapter.n_heads):
            raise SiteError(f"sender {s!r}: heads are (layer 0..{adapter.n_layers - 1}, head 0..{adapter.n_heads - 1})")
        out.append((layer, head))
    return sorted(set(out))


def _rows(values: torch.Tensor, rows: Sequence[int], heads: Sequence[int], p0: int, T: int):
    """An :class:`Edit`'s index and values: for row ``rows[i]``, head ``heads[i]`` at every position from p0."""
    n = T - p0
    r = torch.as_tensor(list(rows)).repeat_interleave(n)
    pos = torch.arange(p0, T).repeat(len(rows))
    hs = torch.as_tensor(list(heads)).repeat_interleave(n)
    return r, pos, hs, values[pos, hs]


# -- the three steps ---------------------------------------------------------------------------
def _step2(pair, base, chunk, sets, recv, src, p0, last_freeze):
    """One pass over ``chunk`` (senders as rows): each row's sender from the source, every other head frozen
    at the receiving run; returns ``(captured receiver inputs {site: [rows, T-p0, heads, dh]}, final resid)``."""
    adapter, T = pair.adapter, pair.T
    start = min(layer for layer, _ in chunk)
    edits: list = []
    for layer in range(start, last_freeze + 1):
        edits.append(_Freeze(Site("z", layer), recv[f"z.{layer}"][p0:]))
        mine = [(i, h) for i, (lay, h) in enumerate(chunk) if lay == layer]
        if mine:
            rows, heads = zip(*mine)
            r, pos, hs, vals = _rows(src[f"z.{layer}"], rows, heads, p0, T)
            edits.append(Edit(Site("z", layer), r, pos, hs, vals))
    caps = {}
    for rs in sets:
        for rec in rs:
            if rec.kind != "final" and rec.layer > start:
                caps.setdefault(f"{rec.kind}.{rec.layer}", _Capture(Site(rec.kind, rec.layer)))
    final = adapter.forward_from(base, len(chunk), edits + list(caps.values()), start_layer=start, start_pos=p0)
    return {k: c.value for k, c in caps.items()}, final


def _step3(pair, base, rows_idx, rs, captured, p0, receiver):
    """The metric of each row in ``rows_idx`` with receiver set ``rs``'s inputs patched from step 2."""
    adapter, T, n = pair.adapter, pair.T, len(rows_idx)
    edits = []
    for rec in rs:
        cap = captured[f"{rec.kind}.{rec.layer}"][list(rows_idx)]          # [n, T - p0, heads, dh]
        rows = torch.arange(n).repeat_interleave(T - p0)
        pos = torch.arange(p0, T).repeat(n)
        heads = torch.full_like(rows, rec.head)
        edits.append(Edit(Site(rec.kind, rec.layer), rows, pos, heads, cap[:, :, rec.head].reshape(-1, cap.shape[-1])))
    start = min(rec.layer for rec in rs)
    final = adapter.forward_from(base, n, edits, start_layer=start, start_pos=p0, keep=pair.keep(p0))
    return pair.metric_of(final, p0, receiver).float().cpu().numpy()


def path_patching(model, clean=None, corrupted=None, senders: Sequence[tuple[int, int]] | None = None,
                  receivers="final", metric: Callable | None = None, answers: Sequence | None = None,
                  direction: str = "noise", batch_rows: int = 64) -> PathPatchGrid:
    """Path-patch every sender head to every receiver (module docstring): ``values [n_senders, n_receivers]``.

    ``model``: an adapter or anything :func:`mechviz.models.wrap` accepts, with ``clean`` and ``corrupted``
    prompts of equal token length, or a :class:`~.prompt_pair.PromptPair` (then leave the prompts, metric and
    answers out). ``receivers``: ``"final"``, ``("q" | "k" | "v", layer, head)`` (k, v: a key/value head),
    a list of these (one column each), an inner list being a set patched together. ``senders``: ``(layer,
    head)`` pairs; default every head below the highest receiver layer. ``metric``/``answers`` as for
    :func:`~.patching.activation_patching`. ``direction``: ``"noise"`` (default, as Wang et al. and ARENA:
    the clean run receives corrupted sender outputs) or ``"denoise"``. ``batch_rows``: senders per pass.
    """
    receiver, source = direction_roles(direction)
    if isinstance(model, PromptPair):
        if any(v is not None for v in (clean, corrupted, metric, answers)):
            raise TypeError("with a PromptPair, leave out clean, corrupted, metric and answers (the pair holds them)")
        adapter = model.adapter
    else:
        adapter = wrap(model)
    sets = _receiver_sets(adapter, receivers)
    top = max(min(r.layer for r in rs) for rs in sets)
    sender_list = _senders(adapter, senders, top)
    L = adapter.n_layers
    capture = [f"z.{lay}" for lay in range(L)]
    if isinstance(model, PromptPair):
        pair = model.ensure(capture)
        if pair.synthetic:
            raise ValueError("path patching needs a real corrupted prompt (an ablation's source is not a run)")
    else:
        pair = PromptPair(adapter, clean, corrupted, metric, answers, capture=capture)
    recv, src = pair.runs[receiver].cache, pair.runs[source].cache
    values = np.full((len(sender_list), len(sets)), np.nan)
    grid = PathPatchGrid(values, sender_list, sets, direction, pair.metrics["clean"], pair.metrics["corrupted"],
                         L, adapter.n_heads)
    lowest = [min(r.layer for r in rs) for rs in sets]
    valid = np.array([[s[0] < lo for lo in lowest] for s in sender_list], bool).reshape(len(sender_list), len(sets))
    # the first position where a sender's output differs between the runs (before it, nothing can change)
    diff = [torch.nonzero((src[f"z.{lay}"][:, h] != recv[f"z.{lay}"][:, h]).any(-1)) for lay, h in sender_list]
    p0s = [int(d[0]) for d in diff if len(d)]
    if not p0s:          # no sender differs: every path carries nothing
        values[valid] = pair.metrics[receiver]
        return grid
    p0 = min(p0s)
    # heads at or after a receiver's layer cannot reach its input: freeze up to the last layer that can
    last_freeze = max(r.layer for rs in sets for r in rs) - 1          # "final" has layer n_layers
    base = adapter.patch_base(pair.ids[receiver])
    todo = [i for i in range(len(sender_list)) if valid[i].any()]
    with torch.inference_mode():
        for b in range(0, len(todo), batch_rows):
            idx = todo[b:b + batch_rows]
            chunk = [sender_list[i] for i in idx]
            captured, final = _step2(pair, base, chunk, sets, recv, src, p0, last_freeze)
            for j, rs in enumerate(sets):
                rows = [k for k, i in enumerate(idx) if valid[i, j]]
                if not rows:
                    continue
                if rs[0].kind == "final":     # step 3 of the final residual is step 2's own metric
                    vals = pair.metric_of(final[rows], p0, receiver).float().cpu().numpy()
                else:
                    vals = _step3(pair, base, rows, rs, captured, p0, receiver)
                values[[idx[k] for k in rows], j] = vals
    if not np.isfinite(values[valid]).all():
        raise FloatingPointError("path-patched runs give a non-finite metric: the model overflows")
    return grid
