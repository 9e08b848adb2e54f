"""Logit-lens view: residual-stream points x positions, each cell the top-k next tokens."""

from __future__ import annotations

import numpy as np
import traitlets as t

from ..analysis import logit_lens as lens_fns
from ..analysis.checks import positive_int
from ..analysis.logit_lens import LogitLens
from ._esm import bundle
from .base import Feed, View
from .transport import Array, string_table

COLOR_MODES = ("top_prob", "target_prob", "target_rank", "entropy")


class LogitLensView(View):
    """What the model would predict if its residual stream stopped at each layer.

    Rows (``rows``) are ``resid_pre`` of every layer and the final ``resid_post`` (through the
    model's own final norm and unembedding); columns are the prompt's tokens. Arrays (binary):
    ``top_idx`` int32 ``[R, T, k]`` indexes ``strings``; ``top_probs`` float16 ``[R, T, k]``;
    ``entropy`` ``[R, T]``; ``target_prob`` ``[R, T]`` (NaN: no target) and ``target_rank``.
    ``color_by`` picks what colours the cells (switchable in the browser, also in a static export).
    Selection (linked): ``layer`` (= row), ``token``.

    ``view.result`` is the :class:`~mechviz.analysis.LogitLens` shown (top token texts included);
    :meth:`figure` draws it with matplotlib.
    """

    _esm = bundle("logit_lens")
    tokens = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    rows = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    strings = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    top_idx = Array("int32")
    top_probs = Array("float16")
    entropy = Array("float16")
    target_prob = Array("float16")
    target_rank = Array("int32")
    target_label = t.Unicode("").tag(sync=True)
    color_by = t.Enum(COLOR_MODES, default_value="top_prob").tag(sync=True)
    layer = t.Int(0).tag(sync=True)
    token = t.Int(-1).tag(sync=True)
    title = t.Unicode("Logit lens").tag(sync=True)

    result: LogitLens | None = None

    def feed(self, lab, k: int = 5, target="next") -> Feed:
        k = positive_int(k, "k")
        label = "next token" if isinstance(target, str) and target == "next" else str(target)
        sites = lens_fns.needs(lab.model.n_layers)

        def payload(p):
            return {"lens": lens_fns.logit_lens(lab.model, p.run, k=k, target=target), "prompt": p.prompt,
                    "target_label": label}
        return Feed(lambda: sites, payload)

    def show(self, lens: LogitLens, prompt: str = "", target_label: str = ""):
        """Display a :class:`~mechviz.analysis.LogitLens` grid."""
        strings, top_idx = string_table(lens.top_strs)
        R, T, _ = lens.top_ids.shape
        self.result = lens
        with self.hold_sync():
            self.tokens, self.rows, self.strings = list(lens.token_strs), list(lens.rows), strings
            self.top_idx = top_idx
            self.top_probs = lens.top_probs
            self.entropy = lens.entropy
            self.target_prob = np.full((R, T), np.nan, np.float32) if lens.target_prob is None else lens.target_prob
            self.target_rank = np.full((R, T), -1) if lens.target_rank is None else lens.target_rank
            self.target_label = target_label
            if lens.target_prob is None and self.color_by in ("target_prob", "target_rank"):
                self.color_by = "top_prob"
            self._shown(prompt)

    def figure(self, by: str | None = None):
        """A matplotlib Figure of the grid (coloured by ``by``, default the view's ``color_by``)."""
        from ..analysis.figures import logit_lens_figure

        return logit_lens_figure(self._need_result(), by=by or self.color_by)

    def __repr__(self) -> str:
        shape = (0, 0, 0) if self.top_probs is None else self.top_probs.shape
        return (f"LogitLensView(prompt={self.prompt!r}, rows={shape[0]}, tokens={shape[1]}, k={shape[2]}, "
                f"color_by={self.color_by!r}, layer={self.layer}, token={self.token})")
