"""Logit-lens view: residual-stream points x positions, each cell the top-k next tokens."""

from __future__ import annotations

import numpy as np
import traitlets as t

from ..analysis import logit_lens as lens_fns
from ..analysis.checks import positive_int
from ..analysis.logit_lens import LogitLens
from ._esm import bundle
from .base import Feed, Shown, View, received as received_traits
from .selection import Index
from .transport import Array, Packed, string_table

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
    layer = Index(0).tag(sync=True)
    token = Index(-1).tag(sync=True)
    title = t.Unicode("Logit lens").tag(sync=True)

    result: LogitLens | None = None

    def feed(self, lab, k: int = 5, target="next") -> Feed:
        k = positive_int(k, "k")
        lens_fns.check_target(target, lab.model)
        label = "next token" if isinstance(target, str) and target == "next" else str(target)
        sites = lens_fns.needs(lab.model.n_layers)

        if getattr(lab.model, "reduce_views", False):  # nnsight: top-k computed inside the trace, one payload
            from ..analysis.reduced import reduced_logit_lens

            def payload(p):
                lens, n = reduced_logit_lens(lab.model, p.run.tokens, k=k, target=target,
                                             edits=lab._edits(p.steering))
                return {"lens": lens, "prompt": p.prompt, "target_label": label, "received": n}
            return Feed(lambda: [], payload)

        def stream(p):  # the final prediction and the selected column first, then the other rows
            token = lab.selection.token
            first = (token,) if 0 <= token < len(p.run.token_strs) else (-1,)
            for lens in lens_fns.logit_lens_stream(lab.model, p.run, k=k, target=target, first=first):
                yield {"lens": lens, "prompt": p.prompt, "target_label": label}
        return Feed(lambda: sites, stream=stream)

    def prepare(self, lens: LogitLens, prompt: str = "", target_label: str = "", received: int | None = None) -> Shown:
        """Pack a :class:`~mechviz.analysis.LogitLens` grid (complete, or a stage of
        :func:`~mechviz.analysis.logit_lens.logit_lens_stream`: cells not computed yet have
        ``top_ids`` -1 and are drawn as pending)."""
        R, T, _ = lens.top_ids.shape
        top_strs = lens.top_strs if lens.top_strs is not None else np.full(lens.top_ids.shape, "", dtype=object)
        strings, top_idx = string_table(top_strs)
        top_idx = np.where(lens.top_ids < 0, -1, top_idx)  # pending cells
        no_target = lens.target_prob is None
        traits = {"tokens": list(lens.token_strs), "rows": list(lens.rows), "strings": strings,
                  "top_idx": Packed(top_idx, "int32"), "top_probs": Packed(lens.top_probs, "float16"),
                  "entropy": Packed(lens.entropy, "float16"),
                  "target_prob": Packed(np.full((R, T), np.nan, np.float32) if no_target else lens.target_prob,
                                        "float16"),
                  "target_rank": Packed(np.full((R, T), -1) if no_target else lens.target_rank, "int32"),
                  "target_label": target_label, **received_traits(received)}
        return Shown(traits, lens, prompt)

    def _applied(self, shown: Shown) -> None:
        if shown.result.target_prob is None and self.color_by in ("target_prob", "target_rank"):
            self.color_by = "top_prob"

    def figure(self, by: str | None = None):
        """A matplotlib Figure of the grid (coloured by ``by``, default the view's ``color_by``, on the widget's
        scale; rows in the widget's order; the selected layer and token outlined; the prompt in the title)."""
        from ..analysis.figures import logit_lens_figure

        return logit_lens_figure(self._need_result(), by=by or self.color_by, prompt=self.prompt,
                                 selected=(self.layer, self.token), what=self.title)

    def __repr__(self) -> str:
        shape = (0, 0, 0) if self.top_probs is None else self.top_probs.shape
        return (f"LogitLensView(prompt={self.prompt!r}, rows={shape[0]}, tokens={shape[1]}, k={shape[2]}, "
                f"color_by={self.color_by!r}, layer={self.layer}, token={self.token})")
