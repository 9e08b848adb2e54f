"""The Lab: what a user holds. A model (and optionally an SAE), a prompt, the views bound to them,
one shared selection, and the live loop.

The Lab computes nothing itself. On every prompt edit it runs ONE forward pass capturing the union
of what its views need (:class:`~mechviz.widgets.base.Feed`), hands that :class:`Pass` to each
view's feed (analysis functions, in the worker thread) and applies the results on the kernel's
loop. Views say how they are fed (``view.feed(lab)``); patching grids carry their own
:class:`~mechviz.widgets.patching.PatchingSession`; steering is :mod:`mechviz.steering`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch

from .dictionaries import Dictionaries
from .live_pass import LivePasses, _State
from .models import ModelAdapter, Run, wrap
from .steering import Steering
from .widgets.attention import AttentionView
from .widgets.base import Feed, Pass, View
from .widgets.features import FeatureView
from .widgets.logit_lens import LogitLensView
from .widgets.patching import PatchGridView, PatchingSession
from .widgets.prompt import PromptBox
from .widgets.runner import LatestOnlyRunner, ModelLock, live, running_loop
from .widgets.selection import SELECTION_TRAITS, Link, Selection

DEFAULT_PROMPT = "The cat sat on the mat. The cat sat on the"


def pin_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads. ``None``: ``$MECHVIZ_TORCH_THREADS``, else half the cores (at
    least 1, at most 8). On small shared machines oversubscribed threads make a forward pass ~10x
    slower, so this is deliberate rather than torch's default of every core."""
    if threads is None:
        env = os.environ.get("MECHVIZ_TORCH_THREADS")
        threads = int(env) if env else max(1, min(8, (os.cpu_count() or 2) // 2))
    torch.set_num_threads(threads)
    return threads


@dataclass
class _Binding:
    view: View
    link: Link
    feed: Feed | None = None                 # views that follow the prompt
    session: PatchingSession | None = None   # patching grids


class Lab(LivePasses):
    """A model plus a live prompt, shared by every view it builds: one forward pass per prompt edit
    captures the union of what the views need; selection (layer, head, token, feature) is shared.

    Example
    -------
    >>> import mechviz
    >>> lab = mechviz.Lab.default(prompt="The cat sat on the mat. The cat")
    >>> view = lab.attention()          # AttentionView showing lab.prompt
    >>> box = lab.show(view)            # prompt box + view: display it; edits update live
    >>> lab.prompt = "Hello world"      # synchronous recompute from Python
    >>> view.prompt
    'Hello world'
    >>> view.layer = 2                  # selection is shared: every linked view follows
    >>> lab.selection.layer
    2

    Parameters
    ----------
    model: a HuggingFace causal LM (GPT-2, GPT-NeoX/Pythia, Llama-family) or a TransformerLens
        ``HookedTransformer``, or a :class:`~mechviz.models.ModelAdapter`.
    tokenizer: the HF tokenizer (TransformerLens models bring their own).
    sae: an SAE for the feature view: a SAELens folder, an ``sae_lens`` SAE, ``(state_dict, cfg)``
        or a :class:`mechviz.saes.SAE` (see :func:`mechviz.saes.load_sae`); a list of them (one per layer,
        say) adds each. More with :meth:`add_sae`; ``lab.saes`` holds them by name.
    prompt: the first prompt.
    threads: torch intra-op threads (see :func:`pin_threads`).
    name: the model's name (checked against the SAE's ``model_name``).
    allow_model_mismatch: accept an SAE whose config names another model.
    selection: another Lab's :class:`~mechviz.widgets.selection.Selection` to share (its views and this
        Lab's then select together; :class:`mechviz.Compare` does this).
    """

    def __init__(self, model, tokenizer=None, *, sae=None, prompt: str = "", threads: int | None = None,
                 name: str | None = None, allow_model_mismatch: bool = False, selection: Selection | None = None):
        self.model: ModelAdapter = wrap(model, tokenizer, name=name)
        self.threads = pin_threads(threads)
        self.lock = ModelLock()     # one pass at a time; patching jobs step aside between batches
        self.selection = selection or Selection()  # shared by every view: linked in the browser (survives export)
        self.selection.observe(self._on_feature_selected, names="feature")
        self.selection.observe(self._on_dictionary_selected, names="dictionary")
        self.saes = Dictionaries()   # the SAEs and transcoders, by name; the selection says which is shown
        self.steering: Steering | None = None   # what the views show
        self.last: Pass | None = None            # the pass they show
        self._wanted = _State(prompt)            # the newest request
        self._bindings: dict[View, _Binding] = {}
        self._loop = running_loop()  # the kernel's loop when built in a cell; live edits run through it
        self._runner: LatestOnlyRunner | None = None
        self.prompt_box = PromptBox(value=prompt, max_tokens=self.model.max_len or 0)
        self.prompt_box.observe(self._on_edit, names="value")
        names = [self.add_sae(one, allow_model_mismatch=allow_model_mismatch)
                 for one in (sae if isinstance(sae, (list, tuple)) else [] if sae is None else [sae])]
        if names:
            self.selection.dictionary = names[0]

    @property
    def model_info(self) -> str:
        """What computes every view's numbers: name, backend and numerics, dtype, device."""
        from .models.describe import describe

        return str(describe(self.model))

    @classmethod
    def default(cls, prompt: str = DEFAULT_PROMPT, sae: bool | str = True, **kwargs) -> "Lab":
        """A Lab on mechviz's bundled model, offline (see :mod:`mechviz.zoo`), with its dictionaries:
        ``sae=True`` the SAE on ``resid_post.1``; ``"layers"`` an SAE on every layer's ``resid_post`` (the
        first shown); ``"all"`` those and a transcoder per layer (``mlp_in.L -> mlp_out.L``); False none."""
        from .zoo import dictionary_dirs, load_default_model

        if sae not in (True, False, "layers", "all"):
            raise ValueError(f"sae= takes True, False, 'layers' or 'all', not {sae!r}")
        model, tokenizer = load_default_model()
        chosen = {True: "default", False: None}.get(sae, sae)
        return cls(model, tokenizer, prompt=prompt, sae=dictionary_dirs(chosen) if chosen else None, **kwargs)

    @property
    def sae(self):
        """The dictionary the feature views show (``lab.selection.dictionary``; the first added by default),
        or None without one."""
        return self.saes.get(self.saes.resolve(self.selection.dictionary)) if len(self.saes) else None

    def add_sae(self, sae, *, site: str | None = None, name: str | None = None,
                allow_model_mismatch: bool = False) -> str:
        """Add an SAE or transcoder (checked against the model: site, width, and the model it was trained
        on) under ``name`` (default: its site; a name in use is replaced) and show it; returns the name.

        >>> lab = mechviz.Lab.default()                                      # doctest: +SKIP
        >>> [lab.add_sae(f"saes/resid_post.{l}") for l in range(4)]          # doctest: +SKIP
        ['resid_post.0', 'resid_post.1', 'resid_post.2', 'resid_post.3']
        """
        from .saes import check_sae_fits, load_sae

        sae = load_sae(sae, site=site)
        check_sae_fits(sae, self.model, allow_model_mismatch=allow_model_mismatch)
        name = self.saes.add(sae, name)
        if self._wanted.steering is not None and self._wanted.steering.dictionary == name:
            self.steering, self._wanted = None, replace(self._wanted, steering=None)  # it steered the one replaced
        if self.selection.dictionary != name:
            self.selection.dictionary = name   # shown now (its observer recomputes the views)
        else:
            self._refresh()
        return name

    def _edits(self, steering: Steering | None) -> dict:
        return {} if steering is None else steering.edits(self.saes[steering.dictionary])

    # -- prompt and steering ----------------------------------------------------------------------
    @property
    def prompt(self) -> str:
        """The prompt the views show. Setting it recomputes synchronously (errors raise here and
        are shown in the widgets, which keep the last good view)."""
        return self.last.prompt if self.last is not None else self._wanted.prompt

    @prompt.setter
    def prompt(self, text: str) -> None:
        if self.prompt_box.value != text:
            self._syncing = True  # the box shows the text; the observer must not start a live run
            try:
                self.prompt_box.value = text
            finally:
                self._syncing = False
        self._recompute(replace(self._wanted, prompt=text))

    def steer(self, feature: int | None, value: float = 0.0, mode: str = "clamp", dictionary: str | None = None) -> None:
        """Clamp SAE ``feature`` to ``value`` (``mode="clamp"``) or scale it by ``value``
        (``mode="scale"``) in every view's forward pass; ``steer(None)`` turns steering off. The feature is
        of ``dictionary`` (default: the one shown). A steering that fails (e.g. overflows the model) raises
        and leaves the previous one applied."""
        name = self.saes.resolve(dictionary or self.selection.dictionary)
        steering = None if feature is None else Steering.checked(feature, value, mode, self.saes.get(name), name)
        self._recompute(replace(self._wanted, steering=steering))

    def run(self, prompt: str | None = None, capture=()) -> Run:
        """One forward pass on ``prompt`` (default: the current prompt) capturing ``capture``
        (with the current steering applied, if any)."""
        edits = self._edits(self.steering)
        with self.lock:
            return self.model.run(self.prompt if prompt is None else prompt, capture=capture, edits=edits)

    def _on_steer_request(self, change) -> None:  # a FeatureView's steering controls, one message
        try:
            name = self.saes.resolve(self.selection.dictionary)
            steering = Steering.from_request(change["new"], self.saes.get(name), name)
        except ValueError as exc:  # shown in that view; the applied steering and the last view stay
            view, message = change["owner"], str(exc)

            def refuse():  # "" first: a second refusal with the same text must still reach the browser
                view.error = ""
                view.error = message
            if not live(self._loop):
                refuse()
            else:  # traits are set on the loop's thread
                self._loop.call_soon_threadsafe(refuse)
            return
        self._live(replace(self._wanted, steering=steering))

    def _on_dictionary_selected(self, change) -> None:
        from_browser = "dictionary" in getattr(self.selection, "_property_lock", {})
        try:
            self.saes.resolve(change["new"])
        except KeyError as exc:
            if not from_browser:   # from Python: refused, the shown dictionary stays
                self.selection.dictionary = change["old"]
                raise
            for b in list(self._bindings.values()):
                if isinstance(b.view, FeatureView):
                    b.view.error = exc.args[0]
            return
        if self.selection.feature != -1:
            self.selection.feature = -1   # a feature id means a feature of one dictionary
        if self.last is None:
            return
        state = replace(self._wanted, reuse=True)   # the feature views read another dictionary
        self._live(state) if from_browser else self._recompute(state)

    def _on_feature_selected(self, change) -> None:
        if any(b.view.follows("feature", change["new"]) for b in list(self._bindings.values()) if b.feed):
            self._live(replace(self._wanted, reuse=True))  # a view must include it: a new payload, no new pass

    # -- the view registry --------------------------------------------------------------------------
    def add(self, view: View, *, refresh: bool = True, **options) -> View:
        """Bind ``view`` to this Lab: it follows the prompt (fed by ``view.feed(lab, **options)``) and
        the shared selection. Returns the view."""
        feed = view.feed(self, **options)
        self._register(view, feed=feed)
        if isinstance(view, FeatureView):
            view.observe(self._on_steer_request, names="steer_request")
        if refresh:
            others = {v: v.error for v in self._bindings if v is not view}
            box = (self.prompt_box.status, self.prompt_box.error)
            try:
                self._show_now([view])
            except Exception:  # a view that cannot be filled is not added: it would fail every later pass
                self.remove(view)
                for v, error in others.items():  # the error is about the new view, not the ones shown
                    v.error = error
                with self.prompt_box.hold_sync():
                    self.prompt_box.status, self.prompt_box.error = box
                raise
        return view

    def _register(self, view: View, **binding) -> None:
        chosen = {n: getattr(view, n) for n in SELECTION_TRAITS if n in view._explicit}
        link = self.selection.link(view)
        for name, value in chosen.items():  # a selection given to the view wins (and is shared)
            setattr(view, name, value)
        view.model_info = self.model_info
        view._loop = self._loop  # follow-up fetches (another layer's attention) run off the loop
        self._bindings[view] = _Binding(view, link, **binding)
        view.on_close(self.remove)

    def _show_now(self, views) -> None:
        """Fill freshly added views: from the last pass if it holds what they need, else one pass."""
        if self.last is None and not self._wanted.prompt:
            return
        feeds = [self._bindings[v].feed for v in views]
        if self.last is None or any(s not in self.last.run.cache for f in feeds for s in f.needs()):
            self._recompute(self._wanted)
            return
        with self.lock:
            shown = [view.prepare(**list(f.payloads(self.last))[-1]) for view, f in zip(views, feeds)]
        for view, ready in zip(views, shown):
            view.apply(ready)

    def remove(self, view: View) -> None:
        """Unbind ``view``: it keeps what it shows but is no longer computed, sent or linked (closing
        a view does this too)."""
        b = self._bindings.pop(view, None)
        if b is None:
            return
        b.link.unlink()
        if b.session is not None:
            b.session.close()
        if isinstance(view, FeatureView):
            view.unobserve(self._on_steer_request, names="steer_request")

    @property
    def views(self) -> list[View]:
        """The views bound to this Lab."""
        return list(self._bindings)

    def attention(self, **traits) -> AttentionView:
        """Attention patterns of every layer and head, following this Lab's prompt."""
        return self.add(AttentionView(**traits))

    def logit_lens(self, k: int = 5, target="next", **traits) -> LogitLensView:
        """The logit lens: each layer's residual stream through the model's own final norm and
        unembedding; ``target`` (a token id or text, or ``"next"``: the prompt's own next token)
        can colour the cells by its probability or rank."""
        return self.add(LogitLensView(**traits), k=k, target=target)

    def features(self, n: int = 12, k: int = 8, **traits) -> FeatureView:
        """The SAE's features on the prompt (top ``n`` by max activation), each with the ``k`` output
        tokens it promotes and suppresses most, and steering controls."""
        return self.add(FeatureView(**traits), n=n, k=k)

    def patching(self, clean: str, corrupted: str | None = None, site: str = "resid_pre", by: str = "position", *,
                 answers=None, metric=None, direction: str = "denoise", exact: bool = True,
                 ablate: str | None = None, reference=None, trace: dict | None = None, **traits) -> PatchGridView:
        """An activation-patching grid for ``site`` (``resid_pre``, ``resid_mid``, ``resid_post``,
        ``attn_out``, ``mlp_out`` by ``"position"``; ``z``, ``q``, ``k``, ``v``, ``attn_pattern`` by
        ``"head"`` or ``"head_position"``; a pattern's position is its destination). The
        attribution-patching estimate shows at once; exact values then stream in from a worker thread
        (cancellable from the view). Click a cell to see that patched run's next tokens and logit lens.
        ``answers=(correct, wrong)`` sets the default metric, the logit difference (see
        :func:`mechviz.analysis.patching.activation_patching`).

        ``ablate="zero" | "mean" | "resample"``: an ablation grid of ``clean`` instead (no ``corrupted``;
        ``reference``: the prompts to average over for ``"mean"``, the other prompt for ``"resample"``;
        see :mod:`mechviz.analysis.ablation`), drawn as a noising grid normalised by the full ablation.

        >>> grid = lab.patching("When Mary and John went to the store, John gave a drink to",
        ...                     "When Mary and John went to the store, Mary gave a drink to",
        ...                     answers=(" Mary", " John"))                         # doctest: +SKIP
        >>> zero = lab.patching("The Eiffel Tower is in", site="z", by="head", ablate="zero",
        ...                     answers=(" Paris", " Rome"))                        # doctest: +SKIP

        ``trace=dict(subject=..., kind="resid" | "mlp" | "attn", window=10, samples=10, ...)``: the causal
        trace of ``clean`` instead (ROME; the arguments of :func:`mechviz.analysis.causal_tracing.causal_trace`),
        streamed into the grid; a click shows that restored run's next tokens.
        """
        view = PatchGridView(**traits)
        if trace is not None:
            from .widgets.causal_trace import CausalTraceSession

            if corrupted is not None or ablate is not None:
                raise TypeError("trace= corrupts the subject with noise: give no corrupted prompt and no ablate=")
            session = CausalTraceSession.create(view, self.model, self.lock, self._loop, clean, trace)
        else:
            session = PatchingSession.create(view, self.model, self.lock, self._loop, clean, corrupted, site, by,
                                             answers=answers, metric=metric, direction=direction, ablate=ablate,
                                             reference=reference)
        self._register(view, session=session)
        if exact:
            session.start()
        return view

    def show(self, *views):
        """The prompt box above ``views`` (default: a new attention view), as one displayable
        :class:`~mechviz.widgets.panel.Panel` (one anywidget: it renders in JupyterLab, Notebook 7,
        marimo and a static export, and links the views' selection in the browser).

        >>> import mechviz
        >>> lab = mechviz.Lab.default(prompt="The cat sat")
        >>> lab.show(lab.attention(), lab.logit_lens())
        Panel(PromptBox, AttentionView, LogitLensView)
        """
        from .widgets.panel import Panel

        return Panel(children=[self.prompt_box, *(views or (self.attention(),))], selection=self.selection)

    def dashboard(self):
        """Prompt box, attention, logit lens and (with an SAE) features: one pass, linked."""
        views = [AttentionView(), LogitLensView()] + ([FeatureView()] if self.sae is not None else [])
        for view in views:
            self.add(view, refresh=False)
        self._show_now(views)
        return self.show(*views)

    def __repr__(self) -> str:
        views = ", ".join(type(v).__name__ for v in self._bindings) or "none"
        sae = "" if not len(self.saes) else f", sae={self.sae!r}" if len(self.saes) == 1 else \
            f", saes={list(self.saes)}, shown={self.saes.resolve(self.selection.dictionary)!r}"
        steer = f", steering={self.steering}" if self.steering else ""
        return f"Lab(model={self.model!r}{sae}, prompt={self.prompt!r}, views=[{views}]{steer})"
