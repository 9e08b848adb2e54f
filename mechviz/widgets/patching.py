"""Patching-grid view, and the session that computes it: an instant attribution estimate, exact
values streamed in from a worker, cancel, and a clicked cell's patched run, all off the kernel's loop."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

import numpy as np
import traitlets as t

from ..analysis import patching as P
from ._esm import bundle
from .base import View
from .runner import LatestOnlyRunner, ModelLock, live
from .transport import Array


class PatchGridView(View):
    """An activation-patching grid.

    Arrays (binary, float32 ``[rows, cols]``): ``values`` the patched metric, NaN where not computed
    yet; ``estimate`` the attribution-patching estimate of the same cells (drawn, marked as an
    estimate, where ``values`` is NaN). Colour: a diverging map centred on zero of
    ``(v - corrupted_metric) / (clean_metric - corrupted_metric)`` (1 = the patch restores the
    whole clean/corrupted gap). ``row_labels``/``col_labels`` name layers (or layer/head) and
    tokens (or heads). ``done``/``total`` count exact cells; ``status``: ``"estimate"`` |
    ``"running"`` | ``"done"`` | ``"cancelled"`` | ``"error"``.
    Click: ``cell = [row, col]`` (``[-1, -1]`` none); the kernel answers, in one update, with
    ``detail_cell`` (the cell answered), that patched run's metric (``detail_metric``, equal to the
    cell's value), top next tokens (``detail_strs``, ``detail_probs``) and its logit lens at the last
    position (``lens_strs`` ``[R][k]`` text, ``lens_probs`` ``[R, k]``, rows ``lens_rows``).
    ``cancel_requests``: the browser increments it to stop the exact computation.
    ``view.result`` is the latest exact :class:`~mechviz.analysis.patching.PatchGrid`.
    """

    _esm = bundle("patch_grid")
    values = Array("float32")
    estimate = Array("float32")
    row_labels = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    col_labels = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    clean_metric = t.Float(1.0).tag(sync=True)
    corrupted_metric = t.Float(0.0).tag(sync=True)
    site = t.Unicode("").tag(sync=True)
    by = t.Unicode("position").tag(sync=True)
    direction = t.Unicode("denoise").tag(sync=True)
    done = t.Int(0).tag(sync=True)
    total = t.Int(0).tag(sync=True)
    status = t.Unicode("").tag(sync=True)
    cell = t.List(t.Int(), default_value=[-1, -1]).tag(sync=True)
    detail_cell = t.List(t.Int(), default_value=[-1, -1]).tag(sync=True)
    detail_metric = t.Float(None, allow_none=True).tag(sync=True)  # None until a cell is answered
    detail_strs = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    detail_probs = Array("float16")
    lens_rows = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    lens_strs = t.List(t.List(t.Unicode()), default_value=[]).tag(sync=True)
    lens_probs = Array("float16")
    cancel_requests = t.Int(0).tag(sync=True)

    @t.validate("cell")
    def _valid_cell(self, proposal):
        cell = proposal["value"]
        if len(cell) != 2 or any(isinstance(i, bool) for i in cell):
            raise t.TraitError(f"a cell is [row, col] (two whole numbers; [-1, -1] for none), got {list(cell)!r}")
        shape = None if self.values is None else self.values.shape
        if shape is not None and list(cell) != [-1, -1] and not (0 <= cell[0] < shape[0] and 0 <= cell[1] < shape[1]):
            raise t.TraitError(f"cell {list(cell)} is outside this {shape[0]} x {shape[1]} grid: rows 0..{shape[0] - 1}, "
                               f"columns 0..{shape[1] - 1} ([-1, -1] for none)")
        return cell
    title = t.Unicode("Activation patching").tag(sync=True)

    result: P.PatchGrid | None = None

    def show_grid(self, grid: P.PatchGrid, estimate: P.PatchGrid | None = None, status: str | None = None):
        """Display a PatchGrid (possibly partial) and optionally its attribution estimate."""
        self.result = grid
        mat, rows, cols = grid.matrix()
        with self.hold_sync():
            self.values = np.asarray(mat, np.float32)
            if estimate is not None:
                self.estimate = np.asarray(estimate.matrix()[0], np.float32)
            self.row_labels, self.col_labels = rows, cols
            self.clean_metric, self.corrupted_metric = float(grid.clean_metric), float(grid.corrupted_metric)
            self.site, self.by, self.direction = grid.site, grid.by, grid.direction
            self.done, self.total = grid.n_done, int(np.size(grid.values))
            if status is not None:
                self.status = status

    def show_detail(self, detail: P.CellDetail) -> None:
        """Display one cell's patched run (a :class:`~mechviz.analysis.patching.CellDetail`)."""
        with self.hold_sync():
            self.detail_cell = list(detail.cell)
            self.detail_metric = detail.metric
            self.detail_strs = detail.top_strs
            self.detail_probs = detail.top_probs
            self.lens_rows, self.lens_strs, self.lens_probs = detail.lens_rows, detail.lens_strs, detail.lens_probs
            self.error = ""

    def fail(self, message: str) -> None:
        with self.hold_sync():
            self.error, self.status = message, "error"

    async def finished(self, poll: float = 0.05) -> "PatchGridView":
        """Wait (``await grid.finished()`` in a cell) until the exact values are all in, cancelled or
        failed. Only needed before saving or exporting a notebook: results are applied on the
        kernel's event loop, which a blocking wait would stall."""
        while self.status not in ("done", "cancelled", "error", ""):
            await asyncio.sleep(poll)
        # re-send the whole state from this cell: updates applied between cells are not recorded
        # by a notebook executor (nbclient files output by the cell that caused it)
        self.send_state()
        return self

    def figure(self, normalized: bool = True):
        """The grid as a matplotlib Figure: the widget's scale (the normalised share of the gap, -1 .. 1), its
        rows and columns, the selected ``cell`` outlined (see :func:`mechviz.analysis.figures.patch_grid_figure`)."""
        from ..analysis.figures import patch_grid_figure

        g = self._need_result()
        state = "" if g.complete else " (incomplete)"
        what = (f"{self.title}: {g.site} by {g.by}, {g.direction}, clean {g.clean_metric:.3g}, corrupted "
                f"{g.corrupted_metric:.3g}{state}")
        return patch_grid_figure(g, normalized=normalized, prompt=self.prompt or "".join(g.tokens), what=what,
                                 selected=tuple(self.cell))

    def __repr__(self) -> str:
        return (f"PatchGridView(site={self.site!r}, by={self.by!r}, {self.done}/{self.total} cells, "
                f"status={self.status!r}, cell={self.cell})")


class PatchingSession:
    """The work behind one :class:`PatchGridView`, next to it: one :class:`~mechviz.analysis.patching.
    PromptPair` shared by the attribution estimate, the exact job and every cell's detail.

    The exact job runs on its own thread and takes the model ``lock`` per batch in background mode,
    so a live edit or a cell click waits at most for one batch; progress reaches the view at most
    about five times a second; the view's cancel button stops it between batches. A click is
    answered by a worker (the newest click wins); nothing here waits on the kernel's loop. With no
    loop (a script), everything runs synchronously in the caller.
    """

    #: about how long one batch of the exact job may hold the model (a live edit waits at most that)
    batch_seconds = 0.03

    def __init__(self, view: PatchGridView, pair: P.PromptPair, site: str, by: str, direction: str,
                 lock: ModelLock, loop: asyncio.AbstractEventLoop | None):
        self.view, self.pair, self.site, self.by, self.direction = view, pair, site, by, direction
        self.lock, self.loop = lock, loop
        self.thread: threading.Thread | None = None
        self._first_cancel = view.cancel_requests
        self._closed = False
        self._details = None if loop is None else LatestOnlyRunner(self._detail, self._show_detail,
                                                                   self._detail_failed, delay=0.0, loop=loop)
        view.observe(self._on_cell, names="cell")

    @classmethod
    def create(cls, view: PatchGridView, model, lock: ModelLock, loop, clean: str, corrupted: str | None,
               site: str, by: str, *, answers=None, metric=None, direction: str = "denoise",
               ablate: str | None = None, reference=None) -> "PatchingSession":
        """The session behind ``view`` for :meth:`mechviz.Lab.patching`: its prompt pair (a corrupted
        prompt, or an ablation of ``clean``: see :mod:`mechviz.analysis.ablation`) and the estimate, shown."""
        from ..analysis import ablation as A

        if (ablate is None) == (corrupted is None):
            raise TypeError("give a corrupted prompt to patch from, or ablate='zero' | 'mean' | 'resample' "
                            "(then no corrupted prompt)")
        if ablate is None and reference is not None:
            raise TypeError("reference= is for ablation grids (ablate=...)")
        P.direction_roles(direction)  # arguments first: no prompt pass for a call that cannot run
        with lock:
            if ablate is None:
                pair = P.prompt_pair(model, clean, corrupted, metric=metric, answers=answers,
                                     capture=P.patch_capture(model, site, by))
            else:
                pair = A.ablation_pair(model, clean, site, by, ablate, reference, metric, answers)
                direction = "noise"
                view.title = f"{ablate.capitalize()} ablation"
        session = cls(view, pair, site, by, direction, lock, loop)
        session.estimate()
        return session

    # -- estimate and exact values ----------------------------------------------------------------
    def estimate(self) -> P.PatchGrid:
        """Show the attribution-patching estimate (one forward and backward pass) at once."""
        with self.lock:
            est = P.attribution_patching(self.pair, site=self.site, by=self.by, direction=self.direction)
        blank = dataclasses.replace(est, values=np.full_like(est.values, np.nan), method="activation", complete=False)
        self.view.show_grid(blank, estimate=est, status="estimate")
        if est.clean_metric == est.corrupted_metric:  # no gap: every normalised value would be 0/0
            self.view.note = (f"the two runs' metrics are equal ({est.clean_metric:.4g}): there is no gap to "
                              "normalise by, so the cells are blank; read the raw values from Python (view.result.values)")
        return est

    def start(self) -> None:
        """Compute the exact grid (in a thread when there is a loop, else now)."""
        self.view.status = "running"
        if not live(self.loop):
            self._work()
        else:
            self.thread = threading.Thread(target=self._work, name="mechviz-patching", daemon=True)
            self.thread.start()

    def cancelled(self) -> bool:
        return self._closed or self.view.cancel_requests != self._first_cancel

    def _work(self) -> None:
        last = [0.0]

        def progress(grid, done, total):  # worker thread: at most ~5 redraws a second
            if time.monotonic() - last[0] > 0.2 or done == total:
                last[0] = time.monotonic()
                self._on_loop(self.view.show_grid, dataclasses.replace(grid, values=grid.values.copy()), None,
                              "running")
        try:
            grid = P.activation_patching(self.pair, site=self.site, by=self.by, direction=self.direction,
                                         on_progress=progress, cancel=self.cancelled, lock=self.lock.background,
                                         batch_seconds=self.batch_seconds)
            self._on_loop(self.view.show_grid, grid, None, "done" if grid.complete else "cancelled")
        except Exception as exc:  # shown in the widget
            self._on_loop(self.view.fail, f"{type(exc).__name__}: {exc}")

    def _on_loop(self, fn, *args) -> None:
        if not live(self.loop):
            fn(*args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    # -- a clicked cell ---------------------------------------------------------------------------
    def _on_cell(self, change) -> None:  # may run on a kernel subshell thread
        r, c = change["new"]
        if r < 0 or c < 0:
            return
        if self._details is None or not live(self.loop):
            try:
                self._show_detail((r, c), self._detail((r, c), lambda: False))
            except Exception as exc:
                self._detail_failed((r, c), exc)
        else:
            self._details.request((r, c))

    def _detail(self, cell, is_stale) -> P.CellDetail:  # worker side
        grid = self.view.result
        if grid is None:
            raise ValueError("the grid has no cells yet")
        with self.lock:
            return P.cell_detail(self.pair, grid, *cell)

    def _show_detail(self, cell, detail: P.CellDetail) -> None:
        self.view.show_detail(detail)

    def _detail_failed(self, cell, exc: BaseException) -> None:
        self.view.error = f"cannot show cell {list(cell)}: {exc}"

    def close(self) -> None:
        """Stop the exact job (between batches) and the detail worker."""
        self._closed = True
        self.view.unobserve(self._on_cell, names="cell")
        if self._details is not None:
            self._details.close()
