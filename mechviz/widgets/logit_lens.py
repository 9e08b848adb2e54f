"""Logit-lens view: residual-stream points x positions, each cell the top-k next tokens."""

from __future__ import annotations

import anywidget
import numpy as np
import traitlets as t

from ..analysis.logit_lens import LogitLens
from ._esm import bundle
from .transport import ArrayTrait, pack, pack_strings, unpack

COLOR_MODES = ("top_prob", "target_prob", "target_rank", "entropy")


class LogitLensView(anywidget.AnyWidget):
    """What the model would predict if its residual stream stopped at each layer.

    Rows (``rows``) are ``resid_pre`` of every layer and the final ``resid_post`` (through the
    model's own final norm and unembedding); columns are the prompt's tokens. Arrays (binary):
    ``top_idx`` int32 ``[R, T, k]`` indexes ``strings``; ``top_probs`` float16 ``[R, T, k]``;
    ``entropy`` ``[R, T]``; ``target_prob`` ``[R, T]`` (NaN: no target) and ``target_rank``.
    ``color_by`` picks what colours the cells (switchable in the browser, also in a static export).
    Selection (linked): ``layer`` (= row), ``token``.

    The data are also here as numpy: ``view.lens`` (a :class:`~mechviz.analysis.LogitLens`) and
    :meth:`figure` draws it with matplotlib.
    """

    _esm = bundle("logit_lens")
    tokens = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    rows = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    strings = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    top_idx = ArrayTrait()
    top_probs = ArrayTrait()
    entropy = ArrayTrait()
    target_prob = ArrayTrait()
    target_rank = ArrayTrait()
    target_label = t.Unicode("").tag(sync=True)
    color_by = t.Enum(COLOR_MODES, default_value="top_prob").tag(sync=True)
    prompt = t.Unicode("").tag(sync=True)
    seq = t.Int(0).tag(sync=True)
    layer = t.Int(0).tag(sync=True)
    token = t.Int(-1).tag(sync=True)
    error = t.Unicode("").tag(sync=True)
    title = t.Unicode("Logit lens").tag(sync=True)

    lens: LogitLens | None = None

    def show(self, lens: LogitLens, prompt: str = "", target_label: str = "", seq: int | None = None):
        """Display a :class:`~mechviz.analysis.LogitLens` grid."""
        self.lens = lens
        strings, top_idx = pack_strings(lens.top_strs)
        R, T, _ = lens.top_ids.shape
        nan = np.full((R, T), np.nan, np.float32)
        with self.hold_sync():
            self.tokens, self.rows, self.strings = list(lens.token_strs), list(lens.rows), strings
            self.top_idx = top_idx
            self.top_probs = pack(lens.top_probs, "float16")
            self.entropy = pack(lens.entropy, "float16")
            self.target_prob = pack(nan if lens.target_prob is None else lens.target_prob, "float16")
            self.target_rank = pack(np.full((R, T), -1) if lens.target_rank is None else lens.target_rank, "int32")
            self.target_label = target_label
            if lens.target_prob is None and self.color_by in ("target_prob", "target_rank"):
                self.color_by = "top_prob"
            self.prompt = prompt
            self.seq = self.seq + 1 if seq is None else seq
            self.error = ""

    def figure(self, by: str | None = None):
        """A matplotlib Figure of the grid (coloured by ``by``, default the view's ``color_by``)."""
        from ..analysis.figures import logit_lens_figure
        if self.lens is None:
            raise ValueError("nothing to draw yet: the view has no data")
        return logit_lens_figure(self.lens, by=by or self.color_by)

    @property
    def values(self) -> dict[str, np.ndarray]:
        """The displayed arrays by name (as sent, i.e. float16-rounded)."""
        return {name: unpack(getattr(self, name)) for name in
                ("top_idx", "top_probs", "entropy", "target_prob", "target_rank")}

    def __repr__(self) -> str:
        shape = (self.top_probs or {}).get("shape", [0, 0, 0])
        return (f"LogitLensView(prompt={self.prompt!r}, rows={shape[0]}, tokens={shape[1]}, k={shape[2]}, "
                f"color_by={self.color_by!r}, layer={self.layer}, token={self.token})")
