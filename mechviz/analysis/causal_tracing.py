"""Causal tracing (ROME: Meng, Bau, Andonian & Belinkov 2022, "Locating and Editing Factual Associations in
GPT", section 2.1 and the reference code ``rome/experiments/causal_trace.py``).

Three runs of one prompt: the *clean* run; the *corrupted* run, where Gaussian noise is added to the
embeddings of the subject's tokens; and the *corrupted-with-restoration* runs, where one hidden state (or
the MLP / attention outputs of a window of layers) at one position is set back to its clean value. The
score is the probability of the target token at the last position, averaged over ``samples`` noise draws.

Conventions, with the ROME code they follow:

* **Noise.** ``trace_with_patch`` adds ``noise * randn`` to the *token-embedding* output (``wte``,
  ``embed_tokens``) at the subject tokens, before any learned positional embedding is added. Here the noise
  enters as an edit of ``resid_pre.0`` at the subject positions. Where ``resid_pre.0`` is the token
  embedding (Llama, NeoX: rotary positions) the two are the same tensor; where a learned positional
  embedding is added first (GPT-2), ``resid_pre.0 = wte + wpe`` and ``(wte + e) + wpe = (wte + wpe) + e``
  (the sum is linear), so adding the same noise vector to ``resid_pre.0`` is the same pass (to float
  rounding; tests/test_causal_tracing.py checks it against a hook on the embedding module). Models that scale
  the embedding before block 0 (Gemma's ``sqrt(d)``) would see the noise after that scale: not ROME's.
* **Noise scale.** ROME's notebooks use ``noise = 3 * collect_embedding_std(...)``: three times the std of
  the token embeddings of the subjects of its "known facts" data set. With no corpus at hand, the std here is
  that of every entry of the model's token-embedding matrix (``noise_std=`` overrides it); ``noise`` is the
  multiple (3 by default).
* **Draws.** One ``[samples, n_subject, d]`` draw from ``torch.Generator().manual_seed(seed)``, the same for
  every cell (ROME re-seeds ``numpy.random.RandomState(1)`` in every ``trace_with_patch`` call, so its
  cells share their draws too); the score is the mean over samples of the target's probability
  (``softmax(logits[1:, -1]).mean(0)[answer]``).
* **Restored states.** ``kind="resid"``: the output of block ``l`` (``layername(model, l)``, here
  ``resid_post.l``) at one position. As in ``trace_important_states`` the rows are the blocks' outputs
  0..L-1: the embedding layer has no row (restoring it at a subject position would just undo the noise
  there). ``kind="mlp"`` / ``"attn"``: the MLP / attention outputs (``mlp_out``, ``attn_out``) at one
  position in the layers ``range(max(0, l - window // 2), min(L, l - (-window // 2)))``, the window of
  ``trace_important_window`` (``window`` layers centred on ``l``, clipped at the edges).
* **Target.** The clean run's top next token unless given (``predict_from_input``). ``low`` is the
  corrupted score (``low_score``), ``high`` the clean probability (``base_score``).

The restored runs are rows of batched passes of the patching engine (``adapter.forward_from``): each row
carries its sample's noise and its cell's restorations; a pass starts at the first subject token (earlier
positions cannot see the noise, so cells there score ``low`` with no pass).

>>> tr = causal_trace(adapter, "The Eiffel Tower is in", "Eiffel Tower", kind="mlp")   # doctest: +SKIP
>>> tr.values.shape, tr.low, tr.high                                                 # doctest: +SKIP
>>> causal_trace_figure(causal_traces(adapter, prompt, subject))                     # doctest: +SKIP
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterator, Sequence

import numpy as np
import torch

from ..models import wrap
from ..models.base import Edit
from ..models.sites import Site
from .patch_grid import PatchGrid

__all__ = ["causal_trace", "causal_traces", "CausalTrace", "causal_trace_figure", "subject_positions",
           "embedding_std", "trace_noise", "window_layers", "KINDS"]

#: The site each kind restores.
KINDS = {"resid": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}


def window_layers(layer: int, window: int, n_layers: int) -> range:
    """The layers restored for row ``layer`` of an ``"mlp"``/``"attn"`` trace (ROME's ``trace_important_window``).

    >>> list(window_layers(0, 10, 12)), list(window_layers(6, 10, 12)), list(window_layers(3, 3, 12))
    ([0, 1, 2, 3, 4], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [2, 3, 4])
    """
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


def subject_positions(adapter, ids, subject) -> list[int]:
    """The token positions of ``subject`` in ``ids``: a substring of the decoded prompt (its first occurrence;
    every token overlapping it, as ROME's ``find_token_range``), or positions given as ints."""
    T = len(ids)
    if isinstance(subject, str):
        toks = adapter.to_str_tokens(ids)
        whole = "".join(toks)
        at = whole.find(subject)
        if not subject or at < 0:
            raise ValueError(f"subject {subject!r} is not in the prompt's tokens {toks!r}: pass a substring of "
                             "the prompt, or token positions")
        ends = np.cumsum([len(t) for t in toks])
        start = int(np.searchsorted(ends, at, side="right"))
        end = int(np.searchsorted(ends, at + len(subject), side="left")) + 1
        return list(range(start, end))
    pos = sorted({int(p) % T if -T <= int(p) < T else int(p) for p in subject})
    if not pos or pos[0] < 0 or pos[-1] >= T:
        raise ValueError(f"subject positions {list(subject)!r} must be non-empty and lie in [0, {T})")
    return pos


def embedding_std(adapter) -> float:
    """The std of every entry of the model's token-embedding matrix (the default noise unit; see the module docs)."""
    m = getattr(adapter, "model", None)
    get = getattr(m, "get_input_embeddings", None)
    W = get().weight if callable(get) and get() is not None else getattr(m, "W_E", None)
    if W is None:
        raise ValueError(f"cannot find the token-embedding matrix of {adapter!r}: pass noise_std=")
    return float(W.detach().double().std())


def trace_noise(samples: int, n_subject: int, d_model: int, seed: int = 0) -> torch.Tensor:
    """The unit Gaussian draws ``[samples, n_subject, d_model]`` (float32) a trace scales by its noise std."""
    return torch.randn((samples, n_subject, d_model), generator=torch.Generator().manual_seed(int(seed)))


@dataclass
class CausalTrace:
    """One causal trace: ``values [L, T]`` the target's probability with cell ``(layer, pos)`` restored
    (mean over the noise samples); ``low`` the corrupted and ``high`` the clean probability."""

    values: np.ndarray
    kind: str
    window: int
    low: float
    high: float
    tokens: list[str]
    subject: list[int]
    target: int
    target_str: str
    noise_std: float
    samples: int
    seed: int
    noise: np.ndarray = field(repr=False)     # the noise added: [samples, n_subject, d]
    complete: bool = True                     # False: cancelled (cells not computed are NaN)

    @property
    def site(self) -> str:
        return KINDS[self.kind]

    @property
    def layers(self) -> list[int]:
        return list(range(self.values.shape[0]))

    def normalized(self) -> np.ndarray:
        """``(v - low) / (high - low)``: 1 = the restoration brings back the clean probability."""
        return (self.values - self.low) / (self.high - self.low)

    def grid(self) -> PatchGrid:
        """As a denoising :class:`PatchGrid` by position (clean = ``high``, corrupted = ``low``), which
        :class:`~mechviz.widgets.patching.PatchGridView` draws (``view.show_grid(trace.grid())``). Its cell
        ``(l, p)`` of an mlp/attn trace restores the window of layers around ``l``, not ``l`` alone."""
        tokens = [t + "*" if i in self.subject else t for i, t in enumerate(self.tokens)]
        return PatchGrid(values=self.values.copy(), site=self.site, by="position", direction="denoise",
                         layers=self.layers, tokens=tokens, heads=[], clean_metric=self.high,
                         corrupted_metric=self.low, method="causal-trace", complete=self.complete)

    def figure(self):
        return causal_trace_figure([self])

    def __repr__(self) -> str:
        win = f", window {self.window}" if self.kind != "resid" else ""
        return (f"CausalTrace({self.kind}{win}: {self.values.shape[0]} layers x {self.values.shape[1]} tokens, "
                f"subject {self.subject}, target {self.target_str!r}; p clean {self.high:.4g}, corrupted "
                f"{self.low:.4g}, restored max {np.max(self.values):.4g}; {self.samples} samples, noise std "
                f"{self.noise_std:.4g})")


class _Tracer:
    """The shared state of the traces of one prompt: clean run, noise, base pass of the engine."""

    def __init__(self, adapter, prompt, subject, target, noise, samples, seed, noise_std, batch_tokens):
        if samples < 1:
            raise ValueError("samples must be at least 1")
        self.adapter = a = wrap(adapter)
        self.ids = a.to_tokens(prompt)
        self.T, self.L = len(self.ids), a.n_layers
        self.subj = subject_positions(a, self.ids, subject)
        self.s0, self.S, self.batch_tokens = self.subj[0], int(samples), int(batch_tokens)
        caps = ["resid_pre.0"] + [f"{s}.{lay}" for s in KINDS.values() for lay in range(self.L)]
        self.clean = a.run(self.ids, capture=caps)
        probs = torch.softmax(self.clean.logits[-1].double(), -1)
        self.target = int(probs.argmax()) if target is None else self._target_id(target)
        self.high = float(probs[self.target])
        self.noise_std = embedding_std(a) if noise_std is None else float(noise_std)
        self.seed, self.scale = int(seed), float(noise) * self.noise_std
        self.eps = trace_noise(self.S, len(self.subj), a.d_model, seed) * self.scale
        # resid_pre.0 at the subject, noised, per sample: [S, n, d]
        self.noised = self.clean.cache["resid_pre.0"][self.subj][None] + self.eps
        self.base = a.patch_base(self.ids)
        self.low = float(self._pass([[]])[0])

    def _target_id(self, target) -> int:
        if isinstance(target, str):
            ids = self.adapter.tokenizer(target, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise ValueError(f"target {target!r} is {len(ids)} tokens; give one token (or its id)")
            return int(ids[0])
        return int(target)

    def _scores(self, cells: list[list[tuple[Site, int]]], lock=nullcontext) -> Iterator[np.ndarray]:
        """The mean target probability of each cell, a cell being the ``(site, pos)`` it restores: one
        array per batched pass (each pass under ``lock()``)."""
        per_pass = max(1, self.batch_tokens // (self.S * (self.T - self.s0)))
        for i in range(0, len(cells), per_pass):
            with lock():
                yield self._pass(cells[i:i + per_pass])

    def _pass(self, cells, probs: bool = False) -> np.ndarray:
        a, S, n = self.adapter, self.S, len(self.subj)
        rows = len(cells) * S
        r = torch.arange(rows)
        edits = [Edit(Site("resid_pre", 0), r.repeat_interleave(n), torch.tensor(self.subj).repeat(rows), None,
                      self.noised.repeat(len(cells), 1, 1).reshape(rows * n, -1))]
        by_site: dict[Site, list] = {}
        for c, cell in enumerate(cells):
            for site, pos in cell:
                by_site.setdefault(site, []).append((c, pos))
        for site, hits in by_site.items():
            cs, ps = torch.tensor([h[0] for h in hits]), torch.tensor([h[1] for h in hits])
            vals = self.clean.cache[str(site)][ps]                          # [h, d]
            rr = (cs[:, None] * S + torch.arange(S)).reshape(-1)            # every sample row of each cell
            edits.append(Edit(site, rr, ps.repeat_interleave(S), None, vals.repeat_interleave(S, 0)))
        final = a.forward_from(self.base, rows, edits, start_layer=0, start_pos=self.s0, keep=[self.T - 1])
        with torch.inference_mode():
            logits = a.logits_of(final[:, -1])
        p = torch.softmax(logits.double(), -1)
        if probs:  # every token's probability, mean over the samples: [cells, vocab]
            return p.reshape(len(cells), S, -1).mean(1).float().cpu().numpy()
        return p[:, self.target].reshape(len(cells), S).mean(1).cpu().numpy()

    def cell(self, kind: str, window: int, layer: int, pos: int) -> list[tuple[Site, int]]:
        """What cell ``(layer, pos)`` of a ``kind`` trace restores."""
        _check(kind, window)
        layers = [layer] if kind == "resid" else window_layers(layer, window, self.L)
        return [(Site(KINDS[kind], k), pos) for k in layers]

    def cell_probs(self, kind: str, window: int, layer: int, pos: int) -> np.ndarray:
        """The next-token probabilities ``[vocab]`` (mean over the samples) with cell ``(layer, pos)`` restored."""
        if pos < self.s0:  # before the subject: the corrupted run itself
            return self._pass([[]], probs=True)[0]
        return self._pass([self.cell(kind, window, layer, pos)], probs=True)[0]

    def blank(self, kind: str, window: int) -> CausalTrace:
        """The trace before any restored pass: cells from the first subject token on NaN (those before
        it cannot see the noise: they score the corrupted probability)."""
        _check(kind, window)
        values = np.full((self.L, self.T), self.low)
        values[:, self.s0:] = np.nan
        return CausalTrace(values=values, kind=kind, window=int(window), low=self.low, high=self.high,
                           tokens=list(self.clean.token_strs), subject=list(self.subj), target=self.target,
                           target_str=self.adapter.to_str_tokens(torch.tensor([self.target]))[0],
                           noise_std=self.noise_std, samples=self.S, seed=self.seed, noise=self.eps.numpy())

    def trace(self, kind: str, window: int, on_progress: Callable[[CausalTrace, int, int], None] | None = None,
              cancel: Callable[[], bool] | None = None,
              lock: Callable[[], ContextManager] | None = None) -> CausalTrace:
        """The trace, a batched pass at a time (under ``lock()``): ``on_progress(partial, done, total)``
        after each, cells not computed yet NaN; ``cancel()`` True stops between passes (the result then
        has ``complete=False``)."""
        result = self.blank(kind, window)
        values = result.values
        where = [(lay, p) for lay in range(self.L) for p in range(self.s0, self.T)]  # earlier: no noise to undo
        cells = [self.cell(kind, window, lay, p) for lay, p in where]
        done = 0
        for scores in self._scores(cells, lock or nullcontext):
            for (lay, p), v in zip(where[done:done + len(scores)], scores):
                values[lay, p] = v
            done += len(scores)
            if on_progress is not None:
                on_progress(result, done, len(cells))
            if cancel is not None and done < len(cells) and cancel():
                result.complete = False
                break
        return result


def _check(kind: str, window: int) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}; got {kind!r}")
    if window < 1:
        raise ValueError("window must be at least 1")


def causal_trace(adapter, prompt, subject, *, target=None, kind: str = "resid", window: int = 10,
                 noise: float = 3.0, samples: int = 10, seed: int = 0, noise_std: float | None = None,
                 batch_tokens: int = 4096) -> CausalTrace:
    """The causal trace of ``prompt`` with ``subject`` (a substring of the prompt, or token positions)
    corrupted: the target's probability at the last position with each ``(layer, position)`` restored.

    ``kind``: ``"resid"`` restores the output of block ``layer``; ``"mlp"`` / ``"attn"`` the MLP / attention
    outputs of the ``window`` layers centred on ``layer``. Noise: ``noise`` x the std of the token-embedding
    matrix (or x ``noise_std``), ``samples`` draws seeded by ``seed``. ``batch_tokens`` bounds the token-rows
    of one batched pass. See the module docs for the ROME conventions followed.
    """
    return _Tracer(adapter, prompt, subject, target, noise, samples, seed, noise_std, batch_tokens).trace(kind, window)


def causal_traces(adapter, prompt, subject, *, kinds: Sequence[str] = ("resid", "mlp", "attn"), window: int = 10,
                  target=None, noise: float = 3.0, samples: int = 10, seed: int = 0, noise_std: float | None = None,
                  batch_tokens: int = 4096) -> list[CausalTrace]:
    """The three traces of the paper (hidden states, MLP, attention) from one clean run and one noise draw."""
    tracer = _Tracer(adapter, prompt, subject, target, noise, samples, seed, noise_std, batch_tokens)
    return [tracer.trace(k, window) for k in kinds]


def causal_trace_figure(traces: Sequence[CausalTrace]):
    """The traces side by side as ROME draws them: tokens down (subject tokens marked ``*``), layers across,
    colour = the target's probability from the corrupted score (white) up."""
    from .figures import _clip, _figure, fit

    cmaps = {"resid": "Purples", "mlp": "Greens", "attn": "Reds"}
    what = {"resid": "single restored layer", "mlp": "restored MLP", "attn": "restored attention"}
    T = traces[0].values.shape[1]
    fig = _figure(3.6 * len(traces), max(2.5, 0.3 * T + 1.3))
    for i, tr in enumerate(traces):
        ax = fig.add_subplot(1, len(traces), i + 1)
        im = ax.pcolormesh(tr.values.T, cmap=cmaps[tr.kind], vmin=tr.low)
        ax.invert_yaxis()
        ax.set_yticks(np.arange(T) + 0.5, [_clip(t + ("*" if j in tr.subject else ""), 12)
                                           for j, t in enumerate(tr.tokens)], fontsize=7)
        ax.set_xticks(np.arange(tr.values.shape[0]) + 0.5, tr.layers, fontsize=7)
        win = "" if tr.kind == "resid" else f", window {tr.window}"
        ax.set_title(f"{what[tr.kind]}{win}", fontsize=9)
        ax.set_xlabel("layer")
        fig.colorbar(im, ax=ax, label=f"p({_clip(tr.target_str, 10)})")
    return fit(fig)
