"""Patching-grid view: fills in as exact values stream in, over an instant attribution estimate."""

from __future__ import annotations

import anywidget
import numpy as np
import traitlets as t

from ._esm import bundle
from .transport import ArrayTrait, pack, unpack


class PatchGridView(anywidget.AnyWidget):
    """An activation-patching grid.

    Arrays (binary, float32 ``[rows, cols]``): ``values`` the patched metric, NaN where not computed
    yet; ``estimate`` the attribution-patching estimate of the same cells (drawn, marked as an
    estimate, where ``values`` is NaN). Colour: a diverging map centred on zero of
    ``(v - corrupted_metric) / (clean_metric - corrupted_metric)`` (1 = the patch restores the
    whole clean/corrupted gap). ``row_labels``/``col_labels`` name layers (or layer/head) and
    tokens (or heads). ``done``/``total`` count exact cells; ``status``: ``"estimate"`` |
    ``"running"`` | ``"done"`` | ``"cancelled"`` | ``"error"``.
    Click: ``cell = [row, col]`` (``[-1, -1]`` none); the kernel answers, in one update, with the
    cell it answers (``detail_cell``), that patched run's metric (``detail_metric``, equal to the
    cell's value), top next tokens (``detail_strs``, ``detail_probs``) and its logit lens at the
    metric's position (``lens_strs`` ``[R][k]`` text, ``lens_probs`` ``[R, k]``, rows ``lens_rows``).
    The browser shows the answer only while ``detail_cell`` equals ``cell``.
    ``cancel_requests``: the browser increments it to stop the exact computation.
    """

    _esm = bundle("patch_grid")
    values = ArrayTrait()
    estimate = ArrayTrait()
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
    detail_cell = t.List(t.Int(), default_value=[-1, -1]).tag(sync=True)  # the cell detail_*/lens_* describe
    detail_metric = t.Float(None, allow_none=True).tag(sync=True)  # None until a cell is clicked
    detail_strs = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    detail_probs = ArrayTrait()
    lens_rows = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    lens_strs = t.List(t.List(t.Unicode()), default_value=[]).tag(sync=True)
    lens_probs = ArrayTrait()
    cancel_requests = t.Int(0).tag(sync=True)
    error = t.Unicode("").tag(sync=True)
    title = t.Unicode("Activation patching").tag(sync=True)

    grid = None  # the latest mechviz.analysis.patching.PatchGrid (exact values)

    def show_grid(self, grid, estimate=None, status: str | None = None):
        """Display a PatchGrid (possibly partial) and optionally its attribution estimate."""
        self.grid = grid
        mat, rows, cols = grid._matrix(grid.values)
        with self.hold_sync():
            self.values = pack(np.asarray(mat, np.float32), "float32")
            if estimate is not None:
                self.estimate = pack(np.asarray(estimate._matrix(estimate.values)[0], np.float32), "float32")
            self.row_labels, self.col_labels = rows, cols
            self.clean_metric, self.corrupted_metric = float(grid.clean_metric), float(grid.corrupted_metric)
            self.site, self.by, self.direction = grid.site, grid.by, grid.direction
            self.done, self.total = grid.n_done, int(np.size(grid.values))
            if status is not None:
                self.status = status

    async def finished(self, poll: float = 0.05) -> "PatchGridView":
        """Wait (``await grid.finished()`` in a cell) until the exact values are all in, cancelled or
        failed. Only needed before saving or exporting a notebook: results are applied on the
        kernel's event loop, which a blocking wait would stall."""
        import asyncio

        while self.status not in ("done", "cancelled", "error", ""):
            await asyncio.sleep(poll)
        # re-send the whole state from this cell: updates applied between cells are not recorded
        # by a notebook executor (nbclient files output by the cell that caused it)
        self.send_state()
        return self

    def figure(self, normalized: bool = True):
        """The grid as a matplotlib Figure."""
        if self.grid is None:
            raise ValueError("nothing to draw yet: the view has no data")
        return self.grid.figure(normalized=normalized)

    @property
    def matrix(self) -> np.ndarray | None:
        """The displayed exact values as a 2-D numpy array (NaN where not computed)."""
        return unpack(self.values)

    def __repr__(self) -> str:
        return (f"PatchGridView(site={self.site!r}, by={self.by!r}, {self.done}/{self.total} cells, "
                f"status={self.status!r}, cell={self.cell})")
