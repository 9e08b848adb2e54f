"""Ablation grids: zero, mean and resample ablation of one site, cell by cell, on the patching engine.

An ablation is a patch whose source is not a second prompt's run but a value chosen to remove what the
activation carries: the receiving run is the ``prompt``'s, and each cell of the grid (a layer x position,
layer x head, or layer x position x head, exactly as in :mod:`.patch_grid`'s layouts) overwrites that
activation with

* ``kind="zero"``: zeros;
* ``kind="mean"``: its mean over a reference set of prompts, taken **per position** over the set (as
  TransformerLens-style mean ablation does: ``cache[hook].mean(0)`` over a batch of equal-length prompts),
  so every reference prompt must have the prompt's token length;
* ``kind="resample"``: its value in another prompt's run (``reference``: one prompt of the same length);
  this is noising activation patching with that prompt as the source.

The grid is a :class:`~.patch_grid.PatchGrid` (``direction="noise"``, ``method="<kind> ablation"``):
``clean_metric`` is the prompt's metric and ``corrupted_metric`` the metric with the site ablated at every
layer and position at once (for resample: the reference prompt's own metric), so ``normalized()`` is the
share of the full ablation's effect that one cell carries. ``attn_pattern`` is ablated like it is patched
(through the z it produces, :mod:`.patch_sources`): a zero pattern zeroes the head's output there.

>>> grid = ablation(model, "The Eiffel Tower is in", "resid_pre", kind="mean",
...                 reference=["The Colosseum is in", "The Big Ben is in"], answers=(" Paris", " Rome"))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..models import wrap
from ..models.base import Edit
from ..models.sites import Site
from .patch_grid import PatchGrid
from .patching import _as_patched, _check_site, activation_patching, patch_capture
from .prompt_pair import PromptPair

__all__ = ["ablation", "ablation_pair", "KINDS"]

KINDS = ("zero", "mean", "resample")


def ablation_pair(model, prompt, site: str, by: str = "position", kind: str = "zero", reference=None,
                  metric: Callable | None = None, answers: Sequence | None = None) -> PromptPair:
    """The :class:`PromptPair` an ablation grid is computed from: ``clean`` is ``prompt``'s run and
    ``corrupted`` holds the ablation's source values of ``site`` (every layer asked for); shared by the
    grid, its attribution estimate and a clicked cell's detail, as a patching pair is."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}; got {kind!r}")
    adapter = wrap(model)
    name, layers = _check_site(adapter, site, by)
    capture = patch_capture(adapter, site, by)
    if kind == "resample":
        if reference is None or (isinstance(reference, (list, tuple)) and reference and not isinstance(reference[0], int)):
            raise TypeError("resample ablation takes reference=<one prompt> (text or token ids) of the prompt's length")
        pair = PromptPair(adapter, prompt, reference, metric, answers, capture=capture)
        pair.ablation = kind
        return pair
    if metric is None and answers is None:
        raise TypeError(f"{kind} ablation needs answers=(correct, wrong) or a metric (there is no second prompt "
                        "to take a default from)")
    pair = PromptPair(adapter, prompt, prompt, metric, answers, capture=capture)
    keys = [f"{name}.{lay}" for lay in layers]
    own = pair.runs["clean"].cache
    if kind == "zero":
        if reference is not None:
            raise TypeError("zero ablation takes no reference")
        values = {k: torch.zeros_like(own[k]) for k in keys}
    else:
        if reference is None or isinstance(reference, str) or len(reference) == 0:
            raise TypeError("mean ablation takes reference=[prompt, ...]: the prompts to average over (each of "
                            "the prompt's token length)")
        total = {k: torch.zeros_like(own[k]) for k in keys}
        for i, ref in enumerate(reference):
            ids = adapter.to_tokens(ref)
            if ids.numel() != pair.T:
                raise ValueError(f"mean ablation averages per position: reference prompt {i} has {ids.numel()} "
                                 f"tokens, the prompt {pair.T}")
            run = adapter.run(ids, capture=keys)
            for k in keys:
                total[k] += run[k]
        values = {k: v / len(reference) for k, v in total.items()}
    pair.runs["corrupted"].cache.update(values)
    pair.ablation = kind
    pair.metrics["corrupted"] = _fully_ablated_metric(pair, name, layers)
    return pair


def _fully_ablated_metric(pair: PromptPair, name: str, layers) -> float:
    """The metric of the prompt with ``name`` ablated at every layer in ``layers`` and every position."""
    adapter, T = pair.adapter, pair.T
    eng, src = _as_patched(pair, name, layers, pair.runs["corrupted"].cache, "clean")
    edits = []
    for lay in layers:
        val = src[f"{eng}.{lay}"]
        if val.dim() == 3:      # [T, heads, d_head]: every (position, head)
            H = val.shape[1]
            edits.append(Edit(Site(eng, lay), torch.zeros(T * H, dtype=torch.long), torch.arange(T).repeat_interleave(H),
                              torch.arange(H).repeat(T), val.reshape(T * H, -1)))
        else:
            edits.append(Edit(Site(eng, lay), torch.zeros(T, dtype=torch.long), torch.arange(T), None, val))
    with torch.inference_mode():
        final = adapter.forward_from(adapter.patch_base(pair.ids["clean"]), 1, edits, keep=pair.keep(0))
        return float(pair.metric_of(final, 0, "clean")[0])


def ablation(model, prompt=None, site: str = "resid_pre", by: str = "position", kind: str = "zero", reference=None,
             metric: Callable | None = None, answers: Sequence | None = None, **engine) -> PatchGrid:
    """Ablate ``site`` (every layer, or one: ``"z.3"``) cell by cell in ``prompt``'s run and return the grid
    of metrics (see the module docs for the kinds). ``model``: an adapter or anything
    :func:`mechviz.models.wrap` accepts; or a pair from :func:`ablation_pair` (then leave ``prompt``,
    ``kind``, ``reference``, ``metric`` and ``answers`` out). ``engine``: ``batch_budget_mb``,
    ``on_progress``, ``cancel``, ``lock``, ``batch_seconds`` as in
    :func:`~.patching.activation_patching`, which computes it."""
    pair = model if isinstance(model, PromptPair) else ablation_pair(model, prompt, site, by, kind, reference,
                                                                      metric, answers)
    grid = activation_patching(pair, site=site, by=by, direction="noise", **engine)
    grid.method = f"{pair.ablation or kind} ablation"
    return grid
