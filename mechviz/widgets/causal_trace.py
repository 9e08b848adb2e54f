"""Causal tracing (ROME) in a :class:`~mechviz.widgets.patching.PatchGridView`, bound to a Lab:
``lab.patching(prompt, trace=dict(subject=..., kind="mlp", window=10, samples=10))``.

The session is a patching session whose job is :meth:`causal_tracing._Tracer.trace`: cells stream in a
batched pass at a time, the view's cancel button stops it between passes, and a clicked cell answers with
that restored run's next tokens (mean over the noise samples). There is no attribution estimate: the grid
starts blank.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from ..analysis import causal_tracing as CT
from ..analysis.prompt_pair import CellDetail
from .patching import PatchGridView, PatchingSession
from .runner import ModelLock

TRACE_ARGS = ("subject", "kind", "window", "target", "noise", "samples", "seed", "noise_std", "batch_tokens")


class CausalTraceSession(PatchingSession):
    """The work behind a causal-trace grid: one :class:`~mechviz.analysis.causal_tracing` tracer (clean
    run, noise draw) shared by the streamed trace and every clicked cell."""

    def __init__(self, view: PatchGridView, tracer, kind: str, window: int, lock: ModelLock,
                 loop: asyncio.AbstractEventLoop | None):
        super().__init__(view, None, CT.KINDS[kind], "position", "denoise", lock, loop)
        self.tracer, self.kind, self.window = tracer, kind, int(window)

    @classmethod
    def create(cls, view: PatchGridView, model, lock: ModelLock, loop, prompt: str, trace: dict) -> "CausalTraceSession":
        """The session for ``lab.patching(prompt, trace={...})``: ``trace`` holds the arguments of
        :func:`~mechviz.analysis.causal_tracing.causal_trace` (``subject`` required)."""
        if not isinstance(trace, dict) or "subject" not in trace:
            raise TypeError("trace= takes a dict of causal_trace's arguments, with the subject: "
                            "trace=dict(subject='Eiffel Tower', kind='mlp', window=10, samples=10)")
        unknown = sorted(set(trace) - set(TRACE_ARGS))
        if unknown:
            raise TypeError(f"unknown causal-trace argument(s) {', '.join(unknown)}; it takes {', '.join(TRACE_ARGS)}")
        args = {"kind": "resid", "window": 10, "target": None, "noise": 3.0, "samples": 10, "seed": 0,
                "noise_std": None, "batch_tokens": 4096, **trace}
        CT._check(args["kind"], args["window"])
        with lock:
            tracer = CT._Tracer(model, prompt, args["subject"], args["target"], args["noise"], args["samples"],
                                args["seed"], args["noise_std"], args["batch_tokens"])
        kind, window = args["kind"], args["window"]
        win = "" if kind == "resid" else f", window {window}"
        view.title = f"Causal trace ({dict(resid='hidden states', mlp='MLP', attn='attention')[kind]}{win})"
        session = cls(view, tracer, kind, window, lock, loop)
        session.estimate()
        return session

    def estimate(self):
        """No attribution estimate for a trace: the grid's shape, its cells blank until they stream in."""
        blank = self.tracer.blank(self.kind, self.window)
        self.view.show_grid(blank.grid(), status="estimate")
        self.view.note = (f"target {blank.target_str!r}: p = {blank.high:.4g} clean, {blank.low:.4g} with the subject "
                          f"(tokens marked *) noised; {blank.samples} noise samples")

    def _work(self) -> None:
        last = [0.0]

        def progress(partial, done, total):  # worker thread: at most ~5 redraws a second
            if time.monotonic() - last[0] > 0.2 or done == total:
                last[0] = time.monotonic()
                self._on_loop(self.view.show_grid, partial.grid(), None, "running")
        try:
            trace = self.tracer.trace(self.kind, self.window, on_progress=progress, cancel=self.cancelled,
                                      lock=self.lock.background)
            self.trace = trace
            self._on_loop(self.view.show_grid, trace.grid(), None, "done" if trace.complete else "cancelled")
        except Exception as exc:  # shown in the widget
            self._on_loop(self.view.fail, f"{type(exc).__name__}: {exc}")

    def _detail(self, cell, is_stale) -> CellDetail:  # worker side
        row, col = cell
        with self.lock:
            probs = self.tracer.cell_probs(self.kind, self.window, row, col)
        top = np.argsort(-probs, kind="stable")[:8]
        return CellDetail(cell=(int(row), int(col)), metric=float(probs[self.tracer.target]),
                          top_strs=self.tracer.adapter.to_str_tokens(top), top_probs=probs[top].astype(np.float32),
                          lens_rows=[], lens_strs=[], lens_probs=np.zeros((0, 5), np.float32))
