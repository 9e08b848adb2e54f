"""The attribution graph of the Lab's prompt in a view (:mod:`mechviz.analysis.graph`): features, error nodes,
embeddings and target logits laid out by position (columns) and layer (rows), edges coloured by sign.

Bound with ``lab.add(mechviz.GraphView(), transcoders=None, targets=None, max_features=None,
node_threshold=0.8, edge_threshold=0.98, max_nodes=400, max_edges=3000)``. The graph is computed once per
prompt (and options): in a worker thread with a progress bar and a Cancel button when a kernel loop runs
(a newer prompt supersedes it), at once from a script. Only the pruned subgraph is sent (a binary node
table and edge list, see :mod:`~mechviz.widgets.graph_payload`), within the ``max_nodes`` / ``max_edges``
budget (a visible ``notice`` says what it left out). The view's threshold sliders, pins, groups and labels
are widget state: the kernel re-prunes the cached graph (no recomputation) and a saved notebook keeps them.
A clicked feature asks the kernel for its top output tokens and activations and selects it in the Lab
(``dictionary``, ``feature``), so the feature view and the dashboard follow. The graph is of the unsteered
model, whatever the Lab steers.
"""

from __future__ import annotations

import threading

import numpy as np

import traitlets as t
import torch

from ..analysis.graph import attribution_graph, influence
from ._esm import bundle
from .base import Feed, Shown, View
from .graph_payload import (edge_answer, feature_detail, intervention_answer, node_rows, payload, select,
                            transcoders_of)
from .runner import live
from .transport import Array

_KEEP = object()   # a Shown that only updates status traits: the graph shown stays
_CACHE = 4         # graphs kept per view (prompt + options)...
_CACHE_BYTES = 1 << 30   # ...within this much dense adjacency (a 128-token graph of every feature is ~1.3 GB)


class GraphView(View):
    """An attribution graph (see the module docstring).

    Node table (binary, one row per node sent): ``node_kind`` (0 feature, 1 error, 2 embedding, 3 logit),
    ``node_layer`` (embeddings -1, logits ``n_layers``), ``node_pos``, ``node_feature`` (the feature index;
    a logit node's token id; -1 otherwise), ``node_value`` float32 (activation, error norm, embedding norm,
    demeaned logit), ``node_influence`` float32, ``node_index`` (row in ``Graph.nodes``), ``logit_token``
    (index of ``strings``, -1 none) and ``logit_prob`` float32. Edges: ``edge_src``, ``edge_dst`` (indexes
    into the node table) and ``edge_weight`` float16, largest ``|weight|`` first. ``tokens``: the prompt's
    token strings. ``notice``: what the budget left out; ``sent_bytes``: bytes of one payload; ``totals``:
    [pruned nodes, pruned edges, graph nodes, graph edges]. Widget state: ``node_threshold``,
    ``edge_threshold``, ``pinned`` (node keys), ``groups`` ([{"name", "members"}]), ``labels`` ({key: text}).
    Requests from the browser, answered by the kernel: ``detail_request`` {"key", "id"} -> ``detail`` (a
    feature's top output tokens and activations; it also selects the feature in the Lab);
    ``intervention_request`` {"edits": {key: value}, "id"} -> ``intervention_result`` (top tokens of the
    model as it is and with the edits, attention frozen and recomputed; shown features' activation changes:
    :func:`~mechviz.widgets.graph_payload.intervention_answer`); ``edge_request`` {"src", "dst", "id"} ->
    ``edge_result`` (the heads carrying the edge; the largest share is selected in the Lab's layer / head).
    ``status``: "" | "computing" (``progress``, ``stage``) | "ready" | "cancelled" | "error".

    >>> import mechviz
    >>> lab = mechviz.Lab.default(prompt="John gave a drink to", sae="all")
    >>> view = lab.add(GraphView(), max_features=30, max_nodes=20)
    >>> view.status, len(view.node_kind), view.notice.split(":")[0]
    ('ready', 20, 'showing 20 of 25 nodes')
    >>> view.node_threshold = 0.5            # re-pruned from the cached graph, nothing recomputed
    >>> len(view.node_kind), view.notice
    (19, '')
    """

    _esm = bundle("graph")
    node_kind = Array("int32")
    node_layer = Array("int32")
    node_pos = Array("int32")
    node_feature = Array("int32")
    node_value = Array("float32")
    node_influence = Array("float32")
    node_index = Array("int32")
    logit_token = Array("int32")
    logit_prob = Array("float32")
    edge_src = Array("int32")
    edge_dst = Array("int32")
    edge_weight = Array("float16")
    strings = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    tokens = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    n_layers = t.Int(0).tag(sync=True)
    totals = t.List(t.Int(), default_value=[]).tag(sync=True)
    notice = t.Unicode("").tag(sync=True)
    sent_bytes = t.Int(0).tag(sync=True)
    status = t.Unicode("").tag(sync=True)
    progress = t.Float(0.0).tag(sync=True)
    stage = t.Unicode("").tag(sync=True)
    cancel_request = t.Int(0).tag(sync=True)
    node_threshold = t.Float(0.8).tag(sync=True)
    edge_threshold = t.Float(0.98).tag(sync=True)
    max_nodes = t.Int(400).tag(sync=True)
    max_edges = t.Int(3000).tag(sync=True)
    pinned = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    groups = t.List(t.Dict(), default_value=[]).tag(sync=True)
    labels = t.Dict(default_value={}).tag(sync=True)
    detail_request = t.Dict(default_value=None, allow_none=True).tag(sync=True)
    detail = t.Dict(default_value={}).tag(sync=True)
    intervention_request = t.Dict(default_value=None, allow_none=True).tag(sync=True)
    intervention_result = t.Dict(default_value={}).tag(sync=True)
    edge_request = t.Dict(default_value=None, allow_none=True).tag(sync=True)
    edge_result = t.Dict(default_value={}).tag(sync=True)
    title = t.Unicode("Attribution graph").tag(sync=True)

    def feed(self, lab, transcoders=None, targets=None, max_features: int | None = None,
             node_threshold: float | None = None, edge_threshold: float | None = None, max_nodes: int | None = None,
             max_edges: int | None = None) -> Feed:
        """The graph of the Lab's prompt on ``transcoders`` (default: the Lab's transcoders, one per layer; or
        a list of SAEs / names in ``lab.saes``: a clicked feature selects its dictionary in the Lab only when
        it is one of ``lab.saes``); ``targets`` and ``max_features`` go to
        :func:`~mechviz.analysis.graph.attribution_graph`; the thresholds and budget set the view's traits (None:
        keep the view's, by default 0.8, 0.98, 400 and 3000)."""
        node_threshold = self.node_threshold if node_threshold is None else node_threshold
        edge_threshold = self.edge_threshold if edge_threshold is None else edge_threshold
        max_nodes = self.max_nodes if max_nodes is None else max_nodes
        max_edges = self.max_edges if max_edges is None else max_edges
        self._lab = lab
        self._tcs, self._names = transcoders_of(lab, transcoders)
        if max_features is not None and (isinstance(max_features, bool) or int(max_features) < 1):
            raise ValueError(f"max_features must be a positive int or None, got {max_features!r}")
        if not (0 <= node_threshold <= 1 and 0 <= edge_threshold <= 1):
            raise ValueError("node_threshold and edge_threshold must be in [0, 1]")
        if int(max_nodes) < 1 or int(max_edges) < 0:
            raise ValueError(f"max_nodes must be at least 1 and max_edges at least 0, got {max_nodes}, {max_edges}")
        self._options = {"targets": None if targets is None else list(targets), "max_features": max_features}
        self._cache: dict = {}
        self._job = None            # (key, threading.Event) of the graph being computed in a worker
        self._jobs_lock = threading.Lock()
        self._entry = None          # the cached (graph, influence, token strs, logit strs) shown
        with self.hold_trait_notifications():
            self.node_threshold, self.edge_threshold = float(node_threshold), float(edge_threshold)
            self.max_nodes, self.max_edges = int(max_nodes), int(max_edges)
        names = ["node_threshold", "edge_threshold", "max_nodes", "max_edges", "pinned"]
        for fn, on in ((self._on_prune, names), (self._on_request, ["detail_request", "intervention_request",
                                                                    "edge_request"]),
                       (self._on_cancel, ["cancel_request"])):
            self.unobserve(fn, names=on)   # (bound again: one observer each)
            self.observe(fn, names=on)

        def graph_payload(p):
            key = (p.prompt, repr(self._options))
            with self._jobs_lock:
                entry = self._cache.get(key)
                if entry is not None:
                    if self._job is not None:   # a graph being computed for another prompt is superseded
                        self._job[1].set()
                        self._job = None
                    return {"entry": entry, "prompt": p.prompt}
                if live(lab._loop):
                    self._start(key, p.prompt)
                    return {"status": "computing", "prompt": p.prompt}
            try:
                entry = self._compute(p.prompt, None, None)
            except Exception as exc:   # shown in this view only; the last good graph stays
                return {"status": "error", "error": f"attribution graph: {type(exc).__name__}: {exc}",
                        "prompt": p.prompt}
            self._remember(key, entry)
            return {"entry": entry, "prompt": p.prompt}
        return Feed(lambda: [], graph_payload)

    # -- computing the graph --------------------------------------------------------------------------
    def _compute(self, prompt: str, progress, cancelled, partial=None):
        g = attribution_graph(self._lab.model, self._tcs, prompt, progress=progress, cancelled=cancelled,
                              partial=partial and (lambda g: partial(self._entry_of(g))), **self._options)
        return self._entry_of(g)

    def _entry_of(self, g):
        strs = self._lab.model.to_str_tokens
        return g, influence(g), strs(torch.tensor(g.tokens)), strs(torch.tensor(g.logit_tokens))

    def _remember(self, key, entry) -> None:
        """Cache a graph; the oldest go beyond ``_CACHE`` graphs or ``_CACHE_BYTES`` of adjacency (the newest stays)."""
        self._cache[key] = entry
        size = lambda: sum(e[0].adjacency.nbytes for e in self._cache.values())  # noqa: E731
        while len(self._cache) > _CACHE or (len(self._cache) > 1 and size() > _CACHE_BYTES):
            self._cache.pop(next(iter(self._cache)))

    def _start(self, key, prompt: str) -> None:
        """A worker for ``key`` (called holding ``_jobs_lock``): a running one for another key is cancelled."""
        if self._job is not None:
            if self._job[0] == key:
                return
            self._job[1].set()
        cancel = threading.Event()
        self._job = (key, cancel)
        threading.Thread(target=self._work, args=(key, prompt, cancel), daemon=True, name="mechviz-graph").start()

    def _work(self, key, prompt: str, cancel: threading.Event) -> None:
        def report(traits):   # dropped once cancelled (checked on the loop: none lands after "cancelled")
            self._on_loop(lambda: None if cancel.is_set() else self._set_traits(traits))

        def progress(fraction, stage=""):
            report({"status": "computing", "progress": float(fraction), "stage": str(stage)})
        report({"status": "computing", "progress": 0.0, "stage": "running the model"})
        lock = self._lab.lock
        held = [lock.background()]

        def cancelled():   # polled between batches: step aside for interactive work (an edit, a newer prompt)
            if lock.waiting:
                held[0].__exit__(None, None, None)
                held[0] = lock.background()
                held[0].__enter__()
            return cancel.is_set()
        def first_look(entry):   # streamed: the logits and their direct inputs while the features' rows compute
            shown = self.prepare(entry=entry, prompt=prompt)
            shown.traits.update(status="computing", progress=0.15,
                                stage="first look: the logits' direct inputs; the features' own inputs next")
            self._on_loop(lambda: None if cancel.is_set() else self.apply(shown))
        try:
            held[0].__enter__()
            try:
                entry = self._compute(prompt, progress, cancelled, first_look)
            finally:
                held[0].__exit__(None, None, None)
            with self._jobs_lock:
                self._remember(key, entry)
                latest = self._job is not None and self._job[0] == key and not cancel.is_set()
            if latest:
                shown = self.prepare(entry=entry, prompt=prompt)
                self._lab._loop.call_soon_threadsafe(lambda: self.apply(shown))
        except Exception as exc:
            if not cancel.is_set():
                self._set_on_loop({"status": "error", "error": f"attribution graph: {type(exc).__name__}: {exc}"})
        finally:
            with self._jobs_lock:
                if self._job is not None and self._job[1] is cancel:
                    self._job = None

    def _on_cancel(self, change) -> None:
        with self._jobs_lock:
            job, self._job = self._job, None
        if job is not None:
            job[1].set()
            self._set_on_loop({"status": "cancelled", "stage": "cancelled: edit the prompt to compute again"})

    # -- payloads -----------------------------------------------------------------------------------
    def prepare(self, entry=None, prompt: str = "", status: str = "", error: str = "") -> Shown:
        """The traits showing ``entry`` (a cached graph) pruned at the view's thresholds, budget and pins;
        without one, only ``status`` / ``error`` (the graph shown stays)."""
        if entry is None:
            return Shown({"status": status, "error": error, "progress": 0.0}, _KEEP, prompt)
        g, inf, toks, lstrs = entry
        sel = select(g, self.node_threshold, self.edge_threshold, self.max_nodes, self.max_edges, self.pinned, inf)
        traits = payload(g, sel, inf, toks, lstrs)
        traits.update(status="ready", progress=1.0, stage="")
        shown = Shown(traits, g, prompt)
        shown.entry = entry
        return shown

    def apply(self, shown: Shown) -> None:
        if shown.result is _KEEP:
            self._set_traits(shown.traits)
            return
        self._entry = getattr(shown, "entry", self._entry)
        self._pruned = getattr(self, "_pruned", 0) + 1   # a re-prune still in flight is now stale
        super().apply(shown)

    def _on_prune(self, change) -> None:
        if self._entry is None:
            return
        entry, prompt = self._entry, self.prompt
        self._pruned = n = getattr(self, "_pruned", 0) + 1

        def now():   # (in a worker when live: a big graph takes seconds) only the newest re-prune is applied
            try:
                shown = self.prepare(entry=entry, prompt=prompt)
            except ValueError as exc:
                self._set_on_loop({"error": str(exc)})
                return
            self._on_loop(lambda: self.apply(shown) if self._pruned == n else None)
        self._off_loop(now)

    # -- requests from the browser --------------------------------------------------------------------
    def _on_request(self, change) -> None:
        request = change["new"]
        if request:
            self._off_loop(lambda: self._answer(change["name"], request))

    def _answer(self, name: str, request: dict) -> None:
        """Answer one request from the browser (in a worker when live), on the loop; a bad one sets ``error``."""
        what, trait = {"detail_request": ("detail", "detail"), "edge_request": ("edge", "edge_result"),
                       "intervention_request": ("intervention", "intervention_result")}[name]
        then = None
        try:
            if self._entry is None:
                raise ValueError("no graph is shown yet")
            g = self._entry[0]
            with self._lab.lock:
                if name == "detail_request":
                    out = self._detail(g, request)
                    if out["dictionary"]:
                        then = lambda: self._select(dictionary=out["dictionary"], feature=out["feature"])  # noqa: E731
                elif name == "edge_request":
                    out = edge_answer(g, str(request.get("src")), str(request.get("dst")))
                    if out["heads"]:
                        layer, head = out["heads"][0][:2]
                        then = lambda: self._select(layer=layer, head=head)  # noqa: E731
                else:
                    out = intervention_answer(self._lab.model, g, request.get("edits"), self.node_index.tolist())
            out["id"] = request.get("id", 0)
            answer = {trait: out, "error": ""}
        except (ValueError, KeyError) as exc:
            answer = {"error": f"{what}: {exc.args[0] if exc.args else exc}"}
        self._set_on_loop(answer)
        if then is not None:
            self._on_loop(then)

    def _detail(self, g, request) -> dict:
        key = str(request.get("key"))
        node = g.nodes[node_rows(g, [key])[0]]
        if node[0] != "feature":
            raise ValueError(f"details come for feature nodes, not {key!r}")
        _, layer, pos, f = node
        d = feature_detail(self._lab.model, self._tcs[layer], g, layer, f)
        d.update(key=key, layer=layer, pos=pos, feature=f, activation=float(g.values[g.nodes.index(node)]),
                 dictionary=self._names[layer] or "")
        return d

    def _select(self, dictionary: str | None = None, feature: int | None = None, layer: int | None = None,
                head: int | None = None) -> None:
        """Set the Lab's shared selection (the other views follow)."""
        sel = self._lab.selection
        if dictionary is not None and sel.dictionary != dictionary:
            sel.dictionary = dictionary    # (resets the feature: set it after)
        for name, value in (("feature", feature), ("layer", layer), ("head", head)):
            if value is not None:
                setattr(sel, name, int(value))

    # -- threads and the loop -------------------------------------------------------------------------
    def _off_loop(self, fn) -> None:
        if live(self._loop):
            threading.Thread(target=fn, daemon=True, name="mechviz-graph-request").start()
        else:
            fn()

    def _on_loop(self, fn) -> None:
        if live(self._loop):
            self._loop.call_soon_threadsafe(fn)
        else:
            fn()

    def _set_traits(self, traits: dict) -> None:
        with self.hold_sync():
            for name, value in traits.items():
                setattr(self, name, value)

    def _set_on_loop(self, traits: dict) -> None:
        self._on_loop(lambda: self._set_traits(traits))

    def close(self) -> None:
        job = getattr(self, "_job", None)
        if job is not None:   # a graph still being computed for this view stops at its next batch
            job[1].set()
        super().close()

    async def finished(self, poll: float = 0.05, timeout: float = 600.0) -> "GraphView":
        """Wait (``await view.finished()`` in a cell) until the graph is computed (or failed, or cancelled).
        Only needed before saving or exporting a notebook: the work runs in a worker and its result is
        applied on the kernel's loop, which a blocking wait would stall."""
        import asyncio

        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while (self.status == "computing" or (self.status == "" and self.seq == 0)) and loop.time() < end:
            await asyncio.sleep(poll)
        await asyncio.sleep(poll)
        self.send_state()            # this cell's output holds the whole state (nbclient records per cell)
        return self

    def figure(self):
        """A matplotlib Figure of the shown (pruned) subgraph: nodes by token position and layer, edges by sign
        (see :func:`mechviz.analysis.view_figures.graph_figure`)."""
        from ..analysis.view_figures import graph_figure

        self._need_result()
        if self.node_kind is None:
            raise ValueError("nothing to draw yet: this GraphView has no graph")
        S = self.strings
        labels = [S[i] if 0 <= i < len(S) else "" for i in np.asarray(self.logit_token).tolist()]
        return graph_figure(self.node_kind, self.node_layer, self.node_pos, self.node_feature, self.node_influence,
                            self.edge_src, self.edge_dst, self.edge_weight, self.tokens, self.n_layers, labels,
                            prompt=self.prompt, what=self.title)

    def __repr__(self) -> str:
        n = 0 if self.node_kind is None else len(self.node_kind)
        m = 0 if self.edge_src is None else len(self.edge_src)
        return f"GraphView({n} nodes, {m} edges, status={self.status!r}, {self.sent_bytes:,} bytes sent)"


__all__ = ["GraphView"]
