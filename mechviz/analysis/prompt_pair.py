"""The prompt pair every patching result is computed from, and the patched run behind one grid cell.

A :class:`PromptPair` holds the clean and corrupted runs and the metric exactly as the grids resolve
it. Build it once and hand it to :func:`~mechviz.analysis.patching.attribution_patching`,
:func:`~mechviz.analysis.patching.activation_patching` and :func:`cell_detail`: the two prompts are
run once for all three.

>>> pair = prompt_pair(model, clean, corrupted, answers=(" Mary", " John"))         # doctest: +SKIP
>>> grid = activation_patching(pair, site="z", by="head")                            # doctest: +SKIP
>>> cell_detail(pair, grid, row=2, col=0).metric == grid.values[2, 0]                 # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..models import ModelAdapter, Run, wrap
from . import logit_lens as lens
from .checks import token_id
from .patch_grid import LogitDiff, PatchGrid, logit_diff
from .patch_sources import PATCHED_AS, pair_pattern_z

ROLES = ("clean", "corrupted")


def direction_roles(direction: str) -> tuple[str, str]:
    """``(receiver, source)`` of a patching direction: ``"denoise"`` patches clean activations
    into the corrupted run, ``"noise"`` corrupted ones into the clean run."""
    if direction not in ("denoise", "noise"):
        raise ValueError(f"direction must be 'denoise' (clean into corrupted) or 'noise' (corrupted into clean); "
                         f"got {direction!r}")
    return ("corrupted", "clean") if direction == "denoise" else ("clean", "corrupted")


class PromptPair:
    """The clean and corrupted runs of one model, the metric, and how to read the metric off final
    residual streams.

    ``runs["clean" | "corrupted"]`` (:class:`~mechviz.models.Run`, capturing what was asked and the
    last ``resid_post``), ``ids[...]`` the token ids, ``tokens`` position labels (``clean/corrupted``
    where they differ), ``metric(logits [B, T, vocab]) -> [B]`` and ``metrics`` (its value on each
    prompt). :meth:`ensure` captures more sites later (both prompts run again, once).
    """

    def __init__(self, model, clean, corrupted, metric: Callable | None = None, answers: Sequence | None = None,
                 capture=()):
        self.adapter: ModelAdapter = wrap(model)
        a = self.adapter
        self.ids = {"clean": a.to_tokens(clean), "corrupted": a.to_tokens(corrupted)}
        nc, nx = (self.ids[r].numel() for r in ROLES)
        if nc != nx:
            def show(ids):
                toks = a.to_str_tokens(ids)
                return str(toks) if len(toks) <= 24 else f"{toks[:12]}...{toks[-12:]}"
            raise ValueError(f"clean has {nc} tokens, corrupted has {nx}: patching needs prompts of equal token "
                             f"length (clean: {show(self.ids['clean'])}, corrupted: {show(self.ids['corrupted'])})")
        self.T = nc
        self._last = f"resid_post.{a.n_layers - 1}"
        self.runs = {r: a.run(self.ids[r], capture=[*capture, self._last]) for r in ROLES}
        self.final = {r: run[self._last] for r, run in self.runs.items()}
        cs, xs = self.runs["clean"].token_strs, self.runs["corrupted"].token_strs
        self.tokens = [c if c == x else f"{c}/{x}" for c, x in zip(cs, xs)]
        self.metric = self._resolve_metric(metric, answers)
        vals = self.metric(torch.stack([self.runs[r].logits for r in ROLES]))
        if not isinstance(vals, torch.Tensor) or vals.shape != (2,):
            shape = tuple(vals.shape) if isinstance(vals, torch.Tensor) else type(vals).__name__
            raise ValueError(f"the metric must return one value per batch row: logits [batch, T, vocab] -> [batch]; "
                             f"on a batch of 2 it returned {shape}. A TransformerLens-style metric that averages "
                             "over the batch must not average here.")
        self.metrics = {"clean": float(vals[0]), "corrupted": float(vals[1])}
        if not all(np.isfinite(v) for v in self.metrics.values()):
            raise FloatingPointError(f"the metric is not finite on the prompts ({self.metrics}): nothing to patch")
        self.subset = all(hasattr(self.metric, n) for n in ("positions", "token_ids", "from_subset"))
        #: the ablation this pair is the source of ("zero", "mean", "resample": :mod:`.ablation`), or None
        self.ablation: str | None = None

    @property
    def synthetic(self) -> bool:
        """The corrupted run's activations were replaced (a zero or mean ablation), so they are not what its
        ids compute: :meth:`ensure` cannot add sites to it."""
        return self.ablation in ("zero", "mean")

    @property
    def clean_ids(self) -> torch.Tensor:
        return self.ids["clean"]

    @property
    def corrupted_ids(self) -> torch.Tensor:
        return self.ids["corrupted"]

    def ensure(self, sites) -> "PromptPair":
        """Make sure both runs hold ``sites`` (canonical ``"<name>.<layer>"`` names); runs both prompts
        again only when some are missing."""
        missing = [s for s in sites if s not in self.runs["clean"].cache]
        if missing and self.synthetic:
            raise ValueError(f"this ablation's source holds {sorted(self.runs['corrupted'].cache)}, not {missing}: "
                             "build the ablation for the site you patch")
        if missing:
            for r in ROLES:
                extra = self.adapter.run(self.ids[r], capture=missing)
                self.runs[r].cache.update(extra.cache)
        return self

    def _resolve_metric(self, metric, answers):
        if metric is not None:
            if answers is not None:
                raise ValueError("pass either metric= or answers=, not both")
            return metric
        a = self.adapter
        if answers is None:
            top = [int(self.runs[r].logits[-1].argmax()) for r in ROLES]
            if top[0] == top[1]:
                raise ValueError(f"clean and corrupted prompts both predict {a.to_str_tokens([top[0]])[0]!r}: "
                                 "pass answers=(correct, wrong) or a metric")
            return logit_diff(*top)
        if isinstance(answers, str) or len(answers) != 2:
            raise ValueError(f"answers must be (correct, wrong); got {answers!r}")
        return logit_diff(*(token_id(self.adapter, x) for x in answers))

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
            cols = [final[:, q - start_pos] if q >= start_pos else recv[q].expand(B, -1)
                    for q in (p % self.T for p in self.metric.positions)]
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

    def __repr__(self) -> str:
        m = self.metric
        what = repr(m) if isinstance(m, LogitDiff) else getattr(m, "__name__", type(m).__name__)
        return (f"PromptPair({self.T} tokens, metric={what}, clean {self.metrics['clean']:.4g}, "
                f"corrupted {self.metrics['corrupted']:.4g})")


def prompt_pair(model, clean, corrupted, metric: Callable | None = None, answers: Sequence | None = None,
                capture=()) -> PromptPair:
    """The :class:`PromptPair` of ``clean`` and ``corrupted`` (capturing ``capture``), with the metric
    resolved as the grids resolve it: ``metric``, or the logit difference of ``answers=(correct,
    wrong)``, or of the two prompts' top predictions."""
    return PromptPair(model, clean, corrupted, metric, answers, capture=capture)


# -- one cell -----------------------------------------------------------------------------------
def patched_run(pair: PromptPair, grid: PatchGrid, row: int, col: int, capture=()) -> Run:
    """The receiving prompt's run with grid cell ``(row, col)`` (as drawn by ``grid.matrix()``)
    patched in from the source prompt, capturing ``capture``. Its metric is the cell's value."""
    cell = grid.cell(row, col)
    receiver, source = direction_roles(grid.direction)
    site = f"{grid.site}.{cell.layer}"
    src = pair.ensure([site]).runs[source][site]
    if grid.site in PATCHED_AS:   # a pattern is patched as the z it gives (.patch_sources): HF weights are read-only
        src = pair_pattern_z(pair, receiver, src, cell.layer)
        site = f"{PATCHED_AS[grid.site]}.{cell.layer}"
    pos = slice(None) if cell.pos is None else cell.pos

    def patch(x):
        if cell.head is None:
            x[pos] = src[pos].to(x.dtype)
        else:
            x[pos, cell.head] = src[pos, cell.head].to(x.dtype)
        return x
    return pair.adapter.run(pair.ids[receiver], capture=capture, edits={site: patch})


@dataclass
class CellDetail:
    """What one patched cell does: its ``metric`` (equal to the grid's value), the top ``k`` next
    tokens at the last position (``top_strs``, ``top_probs`` float32 ``[k]``) and the logit lens of
    the patched run at the last position (``lens_rows``, ``lens_strs`` ``[R][lens_k]``,
    ``lens_probs`` float32 ``[R, lens_k]``)."""

    cell: tuple[int, int]
    metric: float
    top_strs: list[str]
    top_probs: np.ndarray
    lens_rows: list[str]
    lens_strs: list[list[str]]
    lens_probs: np.ndarray


def cell_detail(pair: PromptPair, grid: PatchGrid, row: int, col: int, k: int = 8, lens_k: int = 5) -> CellDetail:
    """The :class:`CellDetail` of drawn cell ``(row, col)``: one patched forward pass."""
    a = pair.adapter
    run = patched_run(pair, grid, row, col, capture=lens.needs(a.n_layers))
    top = torch.topk(torch.softmax(run.logits[-1].float(), -1), k)
    grid_lens = lens.logit_lens(a, run, k=lens_k)
    return CellDetail(cell=(int(row), int(col)), metric=float(pair.metric(run.logits[None])),
                      top_strs=a.to_str_tokens(top.indices), top_probs=top.values.numpy(),
                      lens_rows=list(grid_lens.rows),
                      lens_strs=[[str(s) for s in r] for r in grid_lens.top_strs[:, -1]],
                      lens_probs=np.asarray(grid_lens.top_probs[:, -1], np.float32))
