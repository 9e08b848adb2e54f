"""Per-(layer, head) scores as a layers x heads heatmap: direct logit attribution or a head detector.

One view for both circuit tools. Bound through ``lab.add(HeadGridView(), answer=" Mary", wrong=" John")``
(direct logit attribution: diverging colours, the attention block and MLP of each layer as two more columns,
the embedding, positional embedding and biases as terms, and a by-source-token mode) or
``lab.add(HeadGridView(), detector="induction")`` (a detector's scores: sequential colours). Clicking a head
selects its layer and head in the shared selection, so a linked :class:`~mechviz.AttentionView` opens it.
"""

from __future__ import annotations

import numpy as np
import traitlets as t

from ..analysis import dla as dla_fns
from ..analysis import heads as head_fns
from ..analysis.checks import token_id
from ._esm import bundle
from .base import Difference, Feed, Shown, View, ab_prompt, ab_tokens
from .transport import Array, Packed

MODES = ("heads", "position")


class HeadGridView(View):
    """A layers x heads grid of one number per head.

    Arrays (binary, float32): ``values`` ``[L, H]`` (NaN: no value, e.g. per-head attribution refused);
    ``extra`` ``[L, E]`` more columns per layer, named by ``extra_labels`` (DLA: ``attn``, ``MLP``);
    ``by_position`` ``[L * H, T]`` each head split over source tokens ``tokens`` (untrusted text; DLA only).
    ``terms``: ``[label, value]`` pairs shown beside the grid (DLA: embed, pos_embed, bias, total).
    ``diverging``: colours centred on 0 (DLA) rather than sequential from ``vmin`` (detectors);
    ``vmin``/``vmax``: the colour scale's ends. ``mode`` (``"heads"`` / ``"position"``) is switchable in the
    browser when ``by_position`` is there. Selection (linked): ``layer``, ``head``.
    ``view.result`` is the :class:`~mechviz.analysis.dla.DLA` or :class:`~mechviz.analysis.heads.HeadScores`.
    """

    _esm = bundle("head_grid")
    values = Array("float32")
    extra = Array("float32")
    by_position = Array("float32")
    extra_labels = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    terms = t.List(t.List(), default_value=[]).tag(sync=True)
    tokens = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    value_label = t.Unicode("").tag(sync=True)
    diverging = t.Bool(False).tag(sync=True)
    vmin = t.Float(0.0).tag(sync=True)
    vmax = t.Float(1.0).tag(sync=True)
    mode = t.Enum(MODES, default_value="heads").tag(sync=True)
    layer = t.Int(0).tag(sync=True)
    head = t.Int(0).tag(sync=True)
    title = t.Unicode("Heads").tag(sync=True)

    def feed(self, lab, answer=None, wrong=None, position: int = -1, detector: str | None = None,
             path: dict | None = None, **options) -> Feed:
        """DLA with ``answer`` (and ``wrong``, ``position``); a detector with ``detector`` (one of
        :data:`mechviz.analysis.heads.KINDS`; ``options`` go to :func:`~mechviz.analysis.heads.head_scores`).
        ``"induction"`` runs its own repeated-random-token pass once, here, not on every prompt edit.
        ``path``: the arguments of :func:`~mechviz.analysis.path_patching.path_patching` (``clean``,
        ``corrupted``, ``receivers``, ``answers``, ...): every sender head's normalised effect on the first
        receiver (set), computed once, here (its two prompts are fixed, not the Lab's)."""
        adapter = lab.model
        if sum(x is not None for x in (answer, detector, path)) != 1:
            raise TypeError("HeadGridView takes answer= (direct logit attribution), detector= (head scores) "
                            "or path= (path patching)")
        if path is not None:
            from ..analysis.path_patching import path_patching

            if options or not isinstance(path, dict):
                raise TypeError("path= takes a dict of path_patching's arguments (clean, corrupted, receivers, ...)")
            with lab.lock:
                grid = path_patching(adapter, **path)
            said = [repr(x) if isinstance(x, str) else f"{len(x)} token ids" for x in (path.get("clean"), path.get("corrupted"))]
            return Feed(lambda: [], lambda p: {"result": grid, "prompt": f"{grid.direction}: {said[0]} vs {said[1]}"})
        if detector is not None:
            if detector == "induction" and "prompt" not in options:
                with lab.lock:
                    fixed = head_fns.head_scores(adapter, "induction", **options)
                return Feed(lambda: [], lambda p: {"result": fixed, "prompt": f"{fixed.tokens.shape[0]} x repeated "
                                                   f"random tokens ({fixed.tokens.shape[1]} tokens, BOS + R + R)"})
            sites = [f"attn_pattern.{layer}" for layer in range(adapter.n_layers)]
            return Feed(lambda: sites, lambda p: {"result": head_fns.head_scores(adapter, detector, run=p.run, **options),
                                                  "prompt": p.prompt})
        if options:
            raise TypeError(f"unknown option(s) for direct logit attribution: {', '.join(options)}")
        answer, wrong = token_id(adapter, answer), (None if wrong is None else token_id(adapter, wrong, "wrong answer"))
        sites = dla_fns.needs(adapter.n_layers, by_source=True)
        return Feed(lambda: sites, lambda p: {"result": dla_fns.direct_logit_attribution(
            adapter, p.run, answer, wrong, position, by_source=True), "prompt": p.prompt})

    def prepare(self, result, prompt: str = "") -> Shown:
        """Pack a :class:`~mechviz.analysis.dla.DLA`, :class:`~mechviz.analysis.heads.HeadScores`,
        :class:`~mechviz.analysis.path_patching.PathPatchGrid` or a :class:`~mechviz.widgets.base.Difference`
        of two DLAs or two HeadScores."""
        traits = _difference_traits(result) if isinstance(result, Difference) else _traits(result)
        shown = np.concatenate([np.ravel(traits["values"].array), np.ravel(traits["extra"].array)])
        if not np.isfinite(shown[~np.isnan(shown)]).all():
            raise FloatingPointError("head scores contain inf: nothing is shown")
        return Shown(traits, result, prompt)

    def difference(self, a: dict, b: dict) -> dict:
        """A's numbers minus B's (DLA or head scores; a path-patching grid has its own fixed prompts)."""
        if type(a["result"]).__name__ == "PathPatchGrid":
            raise TypeError("path patching compares its own two prompts: a difference of the Lab's prompts does not apply")
        return {"result": Difference(a["result"], b["result"]), "prompt": ab_prompt(a["prompt"], b["prompt"])}

    def _applied(self, shown: Shown) -> None:
        if self.by_position is None and self.mode == "position":
            self.mode = "heads"

    def figure(self):
        """A matplotlib Figure of the grid as shown: its ``mode`` (heads + per-layer columns, or heads x
        positions), its colour scale (``vmin`` .. ``vmax``, diverging or not), the selected head outlined,
        ``value_label`` and the prompt in the title (see :func:`mechviz.analysis.view_figures.head_grid_figure`)."""
        from ..analysis.view_figures import head_grid_figure

        self._need_result()
        return head_grid_figure(self.values, self.extra, self.extra_labels, self.by_position, self.tokens, self.mode,
                                self.vmin, self.vmax, self.diverging, self.value_label, (self.layer, self.head),
                                prompt=self.prompt, what=self.title)

    def __repr__(self) -> str:
        shape = (0, 0) if self.values is None else self.values.shape
        return (f"HeadGridView(prompt={self.prompt!r}, {self.value_label!r}, layers={shape[0]}, heads={shape[1]}, "
                f"layer={self.layer}, head={self.head})")


def _traits(result) -> dict:
    if isinstance(result, dla_fns.DLA):
        return _dla_traits(result)
    if isinstance(result, head_fns.HeadScores):
        return _scores_traits(result)
    if type(result).__name__ == "PathPatchGrid":
        return _path_traits(result)
    raise TypeError(f"HeadGridView shows a DLA, HeadScores or PathPatchGrid, not {type(result).__name__}")


def _measures(result) -> tuple:
    """What a result measures (two results subtract only when it is the same)."""
    if isinstance(result, dla_fns.DLA):
        return ("direct logit attribution", result.label)
    if isinstance(result, head_fns.HeadScores):
        return (result.kind, result.error_measure)
    return (type(result).__name__,)


def _difference_traits(d: Difference) -> dict:
    """A's traits minus B's: every number per head and layer, the terms by name, the split by source
    token where both prompts have the same length; always on a diverging scale."""
    if _measures(d.a) != _measures(d.b):
        raise ValueError(f"A is {_measures(d.a)} and B {_measures(d.b)}: nothing to subtract")
    ta, tb = _traits(d.a), _traits(d.b)
    arr = lambda traits, name: None if traits[name] is None else traits[name].array  # noqa: E731
    values, extra = arr(ta, "values") - arr(tb, "values"), arr(ta, "extra") - arr(tb, "extra")
    pa, pb = arr(ta, "by_position"), arr(tb, "by_position")
    same = pa is not None and pb is not None and pa.shape == pb.shape
    terms_b = dict((k, v) for k, v in tb["terms"])
    finite = np.concatenate([values[np.isfinite(values)], extra[np.isfinite(extra)]])
    m = float(np.abs(finite).max()) if finite.size else 1.0
    return {**ta, "values": Packed(values, "float32"), "extra": Packed(extra, "float32"),
            "by_position": Packed(pa - pb, "float32") if same else None,
            "tokens": ab_tokens(ta["tokens"], tb["tokens"]) if same else [],
            "terms": [[k, v - terms_b[k]] for k, v in ta["terms"] if k in terms_b],
            "value_label": f"A − B: {ta['value_label']}", "diverging": True, "vmin": -(m or 1.0), "vmax": m or 1.0,
            "note": "" if same or pa is None else "by source token: A and B differ in length, not shown"}


def _dla_traits(d) -> dict:
    L = len(d.attn)
    H = d.heads.shape[1] if d.heads is not None else 0
    heads = d.heads if d.heads is not None else np.full((L, max(H, 1)), np.nan)
    extra = np.stack([d.attn, d.mlp], 1)
    finite = np.concatenate([heads[np.isfinite(heads)], extra.ravel()])
    m = float(np.abs(finite).max()) if finite.size else 1.0
    terms = [["embed", d.embed]] + ([["pos_embed", d.pos_embed]] if d.pos_embed is not None else [])
    terms += [["biases (final norm, unembedding)", d.bias], ["total", d.total]]
    by_pos = None if d.heads_by_source is None else Packed(d.heads_by_source.reshape(-1, len(d.token_strs)), "float32")
    return {"values": Packed(heads, "float32"), "extra": Packed(extra, "float32"), "extra_labels": ["attn", "MLP"],
            "by_position": by_pos, "terms": [[k, float(v)] for k, v in terms], "tokens": list(d.token_strs),
            "value_label": f"{d.label} at token {d.position}", "diverging": True, "vmin": -(m or 1.0),
            "vmax": m or 1.0, "note": d.heads_note}


def _scores_traits(s) -> dict:
    L = s.scores.shape[0]
    lo = -1.0 if s.error_measure == "abs" else 0.0
    return {"values": Packed(s.scores, "float32"), "extra": Packed(np.zeros((L, 0)), "float32"), "extra_labels": [],
            "by_position": None, "terms": [], "tokens": list(s.token_strs),
            "value_label": f"{s.kind.replace('_', '-')} score ({s.error_measure})", "diverging": False,
            "vmin": lo, "vmax": 1.0, "note": ""}


def _path_traits(g) -> dict:
    """The first receiver (set) of a :class:`~mechviz.analysis.path_patching.PathPatchGrid`: each sender's
    share of the clean-corrupted gap (NaN: not a sender of it)."""
    L = g.n_layers
    vals = g.by_head(0, g.normalized())
    finite = vals[np.isfinite(vals)]
    m = float(np.abs(finite).max()) if finite.size else 1.0
    return {"values": Packed(vals, "float32"), "extra": Packed(np.zeros((L, 0)), "float32"), "extra_labels": [],
            "by_position": None, "tokens": [],
            "terms": [["clean metric", float(g.clean_metric)], ["corrupted metric", float(g.corrupted_metric)]],
            "value_label": f"path patching ({g.direction}): sender -> {g.labels[0]}, share of the gap",
            "diverging": True, "vmin": -(m or 1.0), "vmax": m or 1.0,
            "note": "" if len(g.receivers) == 1 else f"showing the first of {len(g.receivers)} receivers"}
