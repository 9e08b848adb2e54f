"""Feature dashboards in a view: for the selected (dictionary, feature), what SAEDashboard / Neuronpedia show,
computed over a corpus in the kernel (:mod:`mechviz.analysis.dashboards`).

Bound with ``lab.add(mechviz.DashboardView())`` (``corpus=``, ``k=``, ``cache_dir=``: see
:func:`~mechviz.analysis.dashboards.feature_dashboards`). The dashboards of a dictionary are computed once, the
first time it is shown: in a worker thread with a progress bar in the view when a kernel loop runs (the other
views do not wait), at once from a script. The view then follows the shared selection: a feature picked in any
view (a row of the feature view, a search result here) opens its dashboard. Each payload carries the selected
feature's dashboard and those of the prompt's most active features, so a static export can switch among them
with no kernel. A search box finds features by token (those that fire on it in the corpus, or promote it).
"""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import traitlets as t

from ..analysis.checks import positive_int
from ..analysis.features import encode, top_features
from ._esm import bundle
from .base import Feed, Shown, View
from .runner import live
from .selection import Index
from .transport import Array, Packed, string_table


class DashboardView(View):
    """Feature dashboards of one dictionary over a corpus.

    Arrays (binary), for the ``N`` features ``features`` (int32) the payload carries: ``stats`` float32
    ``[N, 3]`` (density, mean activation when active, max); contexts ``ctx_tokens`` int32 ``[N, C, W]``
    (indexes of ``strings``; -1 beyond the text), ``ctx_acts`` float16 ``[N, C, W]`` (the feature over each
    window; the centre is column ``centre``), ``ctx_group`` int32 ``[N, C]`` (which of ``group_labels[n]``
    the context belongs to: 0 the top activations, then activation intervals, highest first; -1 an empty
    slot); ``hist_counts`` int32 ``[N, B]`` over the log bins ``hist_edges`` float32 ``[B + 1]``;
    ``logit_counts`` int32 ``[N, LB]`` over ``logit_range`` float32 ``[N, 2]``; ``effect_idx`` int32
    ``[N, 2, k]`` (promoted, suppressed: indexes of ``strings``) and ``effect_val`` float32 ``[N, 2, k]``.
    ``status``: ``""`` | ``"computing"`` (``progress`` 0..1) | ``"ready"``; ``neuronpedia``: the feature's
    page with ``{}`` for its id ("" none: a link only, nothing fetched). Search: the browser sets
    ``search_request`` ``{"token", "by": "activation" | "logit", "id"}``; the kernel answers ``search_result``
    ``[[feature, score], ...]`` and ``search_label`` (or ``error``). Selection (linked): ``feature``,
    ``dictionary``. ``view.result`` is the :class:`~mechviz.analysis.dashboards.Dashboards` shown.
    """

    _esm = bundle("dashboard")
    features = Array("int32")
    stats = Array("float32")
    ctx_tokens = Array("int32")
    ctx_acts = Array("float16")
    ctx_group = Array("int32")
    group_labels = t.List(t.List(t.Unicode()), default_value=[]).tag(sync=True)
    hist_counts = Array("int32")
    hist_edges = Array("float32")
    logit_counts = Array("int32")
    logit_range = Array("float32")
    effect_idx = Array("int32")
    effect_val = Array("float32")
    strings = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    centre = t.Int(0).tag(sync=True)
    corpus_label = t.Unicode("").tag(sync=True)
    status = t.Unicode("").tag(sync=True)
    progress = t.Float(0.0).tag(sync=True)
    neuronpedia = t.Unicode("").tag(sync=True)
    search_request = t.Dict(default_value=None, allow_none=True).tag(sync=True)
    search_result = t.List(t.List(), default_value=[]).tag(sync=True)
    search_label = t.Unicode("").tag(sync=True)
    feature = Index(-1).tag(sync=True)
    dictionary = t.Unicode("").tag(sync=True)
    title = t.Unicode("Feature dashboard").tag(sync=True)

    def feed(self, lab, corpus=None, k: int = 10, n: int = 16, cache_dir=None, **options) -> Feed:
        """Dashboards of the shown dictionary over ``corpus`` (default: the bundled held-out text), with
        ``k`` top contexts; each payload carries the selected feature and the prompt's ``n`` most active."""
        from ..analysis.dashboards import feature_dashboards

        if lab.sae is None:
            raise ValueError("the dashboard view needs an SAE: Lab(..., sae=...) or lab.add_sae(...)")
        k, n = positive_int(k, "k"), positive_int(n, "n")
        jobs = _Jobs(self, lab, lambda sae, progress: feature_dashboards(
            lab.model, sae, corpus, k=k, cache_dir=cache_dir, progress=progress, **options))
        self._search = jobs.search
        self.unobserve(self._on_search, names="search_request")   # (bound again: one observer)
        self.observe(self._on_search, names="search_request")

        def payload(p):
            name = lab.saes.resolve(lab.selection.dictionary)
            sae = lab.saes[name]
            dash = jobs.get(name, sae)
            if dash is None:   # still computing (in a worker): the view shows its progress
                return {"dash": None, "prompt": p.prompt}
            if sae.site in p.run.cache:   # the prompt's most active features (the feature view's encoding, shared)
                acts = p.cached(("encode", id(sae)), lambda: encode(sae, p.run))[1]
                top = top_features(acts.float().cpu().numpy(), n)
            else:
                top = []
            chosen = [lab.selection.feature] if lab.selection.feature >= 0 else []
            return {"dash": dash, "features": chosen + [int(f) for f in top], "prompt": p.prompt}
        return Feed(lambda: [lab.sae.site], payload)

    def prepare(self, dash, features=(), prompt: str = "") -> Shown:
        """Pack the dashboards of ``features`` (those in ``dash``; the first is the selected one)."""
        if dash is None:
            return Shown({"status": "computing"}, self.result, prompt)
        have = [int(f) for f in dict.fromkeys(features) if 0 <= int(f) and int(f) in dash._col]
        boards = [dash.feature(f) for f in have]
        traits = _pack(boards, dash)
        traits["neuronpedia"] = _neuronpedia(dash.sae)
        S, T = dash.rows.shape
        traits["corpus_label"] = f"{S} rows x {T} tokens ({int(dash.arrays['n_tokens'])} counted) · {dash.sae.site}"
        traits["status"], traits["progress"] = "ready", 1.0
        return Shown(traits, dash, prompt)

    def follows(self, name: str, value) -> bool:
        """Whether a new selection ``name = value`` needs a new payload (a feature not in this one)."""
        if name != "feature" or value < 0 or self.features is None:
            return False
        return int(value) not in set(self.features.tolist())

    def _on_search(self, change) -> None:
        request = change["new"]
        if not request or not str(request.get("token", "")):
            return
        if live(self._loop):
            threading.Thread(target=self._search_now, args=(request,), daemon=True, name="mechviz-search").start()
        else:
            self._search_now(request)

    def _search_now(self, request) -> None:
        try:
            hits = self._search(request)
            answer = {"search_result": [[int(f), float(s)] for f, s in zip(hits.features, hits.scores)],
                      "search_label": hits.query, "error": ""}
        except (ValueError, KeyError) as exc:
            answer = {"error": f"search: {exc.args[0] if exc.args else exc}", "search_result": [], "search_label": ""}
        self._set_on_loop(answer)

    def _set_on_loop(self, traits: dict) -> None:
        def put():
            with self.hold_sync():
                for name, value in traits.items():
                    setattr(self, name, value)
        if live(self._loop):
            self._loop.call_soon_threadsafe(put)
        else:
            put()

    async def finished(self, poll: float = 0.05, timeout: float = 600.0) -> "DashboardView":
        """Wait (``await dash.finished()`` in a cell) until the dictionary's dashboards are computed (or
        failed). Only needed before saving or exporting a notebook: the work runs in a worker and its result
        is applied on the kernel's loop, which a blocking wait would stall."""
        import asyncio

        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while (self.status == "computing" or (self.status == "" and self.seq == 0)) and loop.time() < end:
            await asyncio.sleep(poll)
        await asyncio.sleep(poll)   # the refresh that follows "ready" is applied on the loop
        self.send_state()            # this cell's output holds the whole state (nbclient records per cell)
        return self

    def figure(self):
        """A matplotlib Figure of the shown dashboard (the selected ``feature``, else the payload's first):
        activation histogram, logit effects, top contexts (see :func:`mechviz.analysis.view_figures.dashboard_figure`)."""
        from ..analysis.view_figures import dashboard_figure

        self._need_result()
        if self.features is None or not len(self.features):
            raise ValueError("nothing to draw yet: this DashboardView holds no dashboard")
        feats = np.asarray(self.features).tolist()
        n = feats.index(self.feature) if self.feature in feats else 0
        S, W = self.strings, self.centre

        def context(row):
            return "".join(f"[{S[t]}]" if j == W else S[t] for j, t in enumerate(row) if t >= 0)
        tops = [(context(row), float(self.ctx_acts[n, i, W])) for i, row in enumerate(self.ctx_tokens[n])
                if self.ctx_group[n, i] == 0]
        effects = [[(S[i], float(v)) for i, v in zip(self.effect_idx[n, side], self.effect_val[n, side])] for side in (0, 1)]
        return dashboard_figure(feats[n], self.stats[n], self.hist_counts[n], self.hist_edges, effects[0], effects[1],
                                tops, prompt=self.prompt, what=f"{self.title} ({self.dictionary})" if self.dictionary
                                else self.title)

    def __repr__(self) -> str:
        shown = "none" if self.features is None else self.features.tolist()[:5]
        return f"DashboardView(feature={self.feature}, status={self.status!r}, features={shown}, {self.corpus_label})"


class _Jobs:
    """Each dictionary's dashboards, computed once: in a worker thread when the Lab runs live (the view's
    progress bar follows; when done the Lab refreshes its views), else at once."""

    def __init__(self, view: DashboardView, lab, compute):
        self.view, self.lab, self.compute = view, lab, compute
        self.done: dict = {}      # name -> (sae, Dashboards)
        self.running: set = set()
        self.lock = threading.Lock()

    def get(self, name: str, sae):
        with self.lock:
            have = self.done.get(name)
            if have is not None and have[0] is sae:
                return have[1]
            if live(self.lab._loop):   # in a worker; the Lab refreshes the view when it is done
                if name not in self.running:
                    self.running.add(name)
                    threading.Thread(target=self._work, args=(name, sae), daemon=True,
                                     name="mechviz-dashboards").start()
                return None
        dash = self.compute(sae, False)    # a script: now
        with self.lock:
            self.done[name] = (sae, dash)
        return dash

    def _work(self, name: str, sae) -> None:
        def progress(done, total):
            self.view._set_on_loop({"status": "computing", "progress": done / max(total, 1)})
        try:
            with self.lab.lock.background():
                dash = self.compute(sae, progress)
            with self.lock:
                self.done[name] = (sae, dash)
            lab = self.lab   # refresh the views from the last pass: now this dictionary's dashboards are ready
            lab._loop.call_soon_threadsafe(lambda: lab._live(replace(lab._wanted, reuse=True)))
        except Exception as exc:
            self.view._set_on_loop({"status": "error", "error": f"dashboards: {type(exc).__name__}: {exc}"})
        finally:
            with self.lock:
                self.running.discard(name)

    def search(self, request):
        name = self.lab.saes.resolve(self.lab.selection.dictionary)
        have = self.done.get(name)
        if have is None:
            raise ValueError("the dashboards of this dictionary are still being computed")
        by = request.get("by", "activation")
        with self.lab.lock:
            return have[1].search_by_token(str(request["token"]), by=by)


def _neuronpedia(sae) -> str:
    nid = getattr(sae, "neuronpedia_id", None)
    return f"https://www.neuronpedia.org/{nid}/{{}}" if nid else ""


def _pack(boards, dash) -> dict:
    """The traits of several :class:`~mechviz.analysis.dashboards.FeatureDashboard` s, stacked."""
    N = len(boards)
    W = dash.params["left"] + dash.params["right"] + 1
    groups = [[b.top] + list(b.intervals) for b in boards]
    C = max([sum(len(c) for c in g) for g in groups] + [1])
    tok = np.full((N, C, W), -1, np.int64)
    strs = np.full((N, C, W), "", dtype=object)
    acts = np.zeros((N, C, W), np.float32)
    grp = np.full((N, C), -1, np.int32)
    labels = []
    for i, g in enumerate(groups):
        row, names = 0, []
        for gi, ctx in enumerate(g):
            names.append(f"top {len(ctx)} activations" if gi == 0 else
                         f"interval {ctx.lo:.3g}–{ctx.hi:.3g} ({ctx.count} tokens)")
            m = len(ctx)
            tok[i, row:row + m], acts[i, row:row + m], grp[i, row:row + m] = ctx.tokens, ctx.window_acts, gi
            strs[i, row:row + m] = np.array(ctx.token_strs, dtype=object).reshape(m, W) if m else strs[i, :0]
            row += m
        labels.append(names)
    k = max([len(b.promoted_strs) for b in boards] + [0])
    eff = np.array([[list(b.promoted_strs), list(b.suppressed_strs)] for b in boards], dtype=object).reshape(N, 2, k)
    strings, idx = string_table(np.concatenate([strs.reshape(-1), eff.reshape(-1)]))
    ctx_idx = np.where(tok >= 0, idx[:strs.size].reshape(N, C, W), -1)
    eff_val = np.array([[b.promoted_values, b.suppressed_values] for b in boards], np.float32).reshape(N, 2, k) if k \
        else np.zeros((N, 2, 0), np.float32)
    lb = max([0 if b.logit_hist_counts is None else len(b.logit_hist_counts) for b in boards] + [0])
    logit_counts = np.array([b.logit_hist_counts if b.logit_hist_counts is not None else np.zeros(lb) for b in boards],
                            np.int64).reshape(N, lb)
    logit_range = np.array([[b.logit_hist_edges[0], b.logit_hist_edges[-1]] if b.logit_hist_edges is not None
                            else [0.0, 0.0] for b in boards], np.float32).reshape(N, 2)
    stats = np.array([[b.density, b.mean_active, b.max_act] for b in boards], np.float32).reshape(N, 3)
    hist = np.array([b.hist_counts for b in boards], np.int64).reshape(N, -1)
    return {"features": Packed(np.array([b.feature for b in boards], np.int64), "int32"),
            "stats": Packed(stats, "float32"), "ctx_tokens": Packed(ctx_idx, "int32"),
            "ctx_acts": Packed(acts, "float16"), "ctx_group": Packed(grp, "int32"), "group_labels": labels,
            "hist_counts": Packed(hist, "int32"),
            "hist_edges": Packed(np.asarray(boards[0].hist_edges if boards else [0.0], np.float32), "float32"),
            "logit_counts": Packed(logit_counts, "int32"), "logit_range": Packed(logit_range, "float32"),
            "effect_idx": Packed(idx[strs.size:].reshape(N, 2, k), "int32"), "effect_val": Packed(eff_val, "float32"),
            "strings": strings, "centre": int(dash.params["left"])}
