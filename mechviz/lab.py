"""The Lab: what a user holds. A model (and optionally an SAE), a prompt, the views built on them,
one shared selection, and the live loop."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from . import analysis
from .analysis import logit_lens as lens
from .models import ModelAdapter, Run, wrap
from .widgets.attention import AttentionView
from .widgets.features import FeatureView
from .widgets.logit_lens import LogitLensView
from .widgets.patching import PatchGridView
from .widgets.prompt import PromptBox
from .widgets.runner import LatestOnlyRunner, running_loop
from .widgets.selection import Selection
from .widgets.transport import pack

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


@dataclass(frozen=True)
class Steering:
    """Clamp SAE ``feature`` to ``value`` (mode "clamp") or multiply it by ``value`` (mode "scale")."""

    feature: int
    value: float
    mode: str = "clamp"

    def __str__(self) -> str:
        return f"feature {self.feature} {'clamped to' if self.mode == 'clamp' else 'scaled by'} {self.value:g}"


@dataclass
class _Binding:
    needs: Callable[[], list[str]]          # sites the view reads (evaluated per pass)
    payload: Callable[[Run, Run | None], dict]   # (run, unsteered run or None) -> view.show(**kwargs)


class Lab:
    """A model plus a live prompt, shared by every view it builds: one forward pass per prompt edit
    captures the union of what the views need; selection (layer, head, token, feature) is shared.

    Example
    -------
    >>> import mechviz
    >>> lab = mechviz.Lab.default(prompt="The cat sat on the mat. The cat")
    >>> view = lab.attention()          # AttentionView showing lab.prompt
    >>> lab.show(view)                  # doctest: +SKIP   (prompt box + view; edits update live)
    >>> lab.prompt = "Hello world"      # synchronous recompute from Python
    >>> view.prompt
    'Hello world'

    Parameters
    ----------
    model: a HuggingFace causal LM (GPT-2, GPT-NeoX/Pythia, Llama-family) or a TransformerLens
        ``HookedTransformer``, or a :class:`~mechviz.models.ModelAdapter`.
    tokenizer: the HF tokenizer (TransformerLens models bring their own).
    sae: an SAE for the feature view: a SAELens folder, an ``sae_lens`` SAE, ``(state_dict, cfg)``
        or a :class:`mechviz.saes.SAE` (see :func:`mechviz.saes.load_sae`).
    prompt: the first prompt.
    threads: torch intra-op threads (see :func:`pin_threads`).
    """

    def __init__(self, model, tokenizer=None, *, sae=None, prompt: str = "", threads: int | None = None,
                 name: str | None = None):
        self.model: ModelAdapter = wrap(model, tokenizer, name=name)
        self.threads = pin_threads(threads)
        self._views: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.last_run: Run | None = None
        self._runner: LatestOnlyRunner | None = None
        self._loop = running_loop()  # the kernel's loop when built in a cell; live edits run through it
        # one pass at a time on the model: hooks (and patching's shortened block list) are shared state
        self._model_lock = threading.RLock()
        self.sae = None
        self.steering: Steering | None = None
        self._effects: dict[int, object] = {}
        self.selection = Selection()  # shared by every view: linked in the browser (survives export)
        self._links: list = []
        self.prompt_box = PromptBox(value=prompt, max_tokens=self.model.max_len or 0)
        self.prompt_box.observe(self._on_edit, names="value")
        self._prompt = prompt
        if sae is not None:
            self.add_sae(sae)
        if prompt:
            self.prompt = prompt

    @classmethod
    def default(cls, prompt: str = DEFAULT_PROMPT, sae: bool = True, **kwargs) -> "Lab":
        """A Lab on mechviz's bundled model and (``sae=True``) its SAE, offline (see :mod:`mechviz.zoo`)."""
        from .zoo import SAE_DIR, load_default_model

        model, tokenizer = load_default_model()
        return cls(model, tokenizer, prompt=prompt, sae=SAE_DIR if sae else None,
                   name=kwargs.pop("name", "mechviz-default"), **kwargs)

    def add_sae(self, sae, *, site: str | None = None, allow_model_mismatch: bool = False) -> None:
        """Attach an SAE (checked against the model: site, width, and the model it was trained on)."""
        from .saes import check_sae_fits, load_sae

        sae = load_sae(sae, site=site)
        check_sae_fits(sae, self.model, allow_model_mismatch=allow_model_mismatch)
        self.sae, self._effects, self.steering = sae, {}, None
        self._refresh()

    # -- running ------------------------------------------------------------------------------
    def run(self, prompt: str | None = None, capture=()) -> Run:
        """One forward pass on ``prompt`` (default: the current prompt) capturing ``capture``
        (with the current steering applied, if any)."""
        with self._model_lock:
            return self.model.run(self._prompt if prompt is None else prompt, capture=capture, edits=self._edits())

    @property
    def prompt(self) -> str:
        """The prompt the views show. Setting it recomputes synchronously (errors raise here and
        are shown in the widgets, which keep the last good view)."""
        return self._prompt

    @prompt.setter
    def prompt(self, text: str) -> None:
        if self.prompt_box.value != text:
            self._syncing = True  # the box shows the text; the observer must not start a live run
            try:
                self.prompt_box.value = text
            finally:
                self._syncing = False
        self._recompute(text)

    def _recompute(self, text: str) -> None:
        try:
            result = self._compute(text, None)
        except Exception as exc:
            self._show_error(text, exc)
            raise
        self._apply(text, result)

    def _refresh(self) -> None:
        if self.last_run is not None:
            self._recompute(self._prompt)

    def _edits(self) -> dict:
        if self.steering is None or self.sae is None:
            return {}
        s = self.steering
        edit = analysis.steering_edit(self.sae, s.feature, value=s.value if s.mode == "clamp" else None,
                                      scale=s.value if s.mode == "scale" else None)
        return {self.sae.site: edit}

    def _compute(self, prompt: str, is_stale):
        """Worker side: ONE forward pass for every view (plus an unsteered one only while steering),
        then each view's arrays (numpy)."""
        bindings = list(self._views.items())
        needs = sorted({site for _, b in bindings for site in b.needs()})
        edits = self._edits()
        with self._model_lock:
            run = self.model.run(prompt, capture=needs, abort=is_stale, edits=edits)
            base = self.model.run(prompt, abort=is_stale) if edits else None
            return run, {view: b.payload(run, base) for view, b in bindings}

    def _apply(self, prompt: str, result) -> None:
        """Main-thread side: push arrays into the views."""
        run, payloads = result
        self.last_run, self._prompt = run, prompt
        for view, payload in payloads.items():
            view.show(**payload)
        with self.prompt_box.hold_sync():
            self.prompt_box.shown = prompt
            self.prompt_box.n_tokens = len(run.token_strs)
            self.prompt_box.status = "idle"
            self.prompt_box.error = ""

    def _show_error(self, prompt: str, exc: BaseException) -> None:
        message = str(exc) if isinstance(exc, (ValueError, KeyError)) else f"{type(exc).__name__}: {exc}"
        with self.prompt_box.hold_sync():
            self.prompt_box.status = "error"
            self.prompt_box.error = message
        for view in list(self._views):
            view.error = message

    # -- live edits ---------------------------------------------------------------------------
    _syncing = False

    def _on_edit(self, change) -> None:
        # May run on a kernel subshell thread (JupyterLab 4 + ipykernel 7 deliver comm messages
        # there): everything goes through the runner, which hands it to the kernel's loop.
        if not self._syncing:
            self._live(change["new"])

    def _live(self, prompt: str) -> None:
        if self._runner is None:
            self._runner = LatestOnlyRunner(self._compute, self._apply, self._show_error,
                                            on_start=self._on_start, loop=self._loop or running_loop())
        self._runner.request(prompt)

    def _on_start(self, prompt: str) -> None:
        self.prompt_box.status = "running"

    # -- steering -----------------------------------------------------------------------------
    def steer(self, feature: int | None, value: float = 0.0, mode: str = "clamp") -> None:
        """Clamp SAE ``feature`` to ``value`` (``mode="clamp"``) or scale it by ``value``
        (``mode="scale"``) in every view's forward pass; ``steer(None)`` turns steering off."""
        self.steering = self._steering(feature, value, mode)
        self._show_steered()
        self._refresh()

    def _steering(self, feature, value, mode) -> Steering | None:
        if feature is None or feature < 0:
            return None
        if self.sae is None:
            raise ValueError("steering needs an SAE: Lab(..., sae=...) or lab.add_sae(...)")
        if mode not in ("clamp", "scale"):
            raise ValueError(f"mode must be 'clamp' or 'scale', got {mode!r}")
        if not 0 <= int(feature) < self.sae.d_sae:
            raise ValueError(f"feature {feature} out of range: the SAE has {self.sae.d_sae} features")
        return Steering(int(feature), float(value), mode)

    def _show_steered(self) -> None:  # every feature view's controls show the applied steering
        s = self.steering
        steered = None if s is None else {"feature": s.feature, "value": s.value, "mode": s.mode}
        for view in list(self._views):
            if isinstance(view, FeatureView):
                view.steered = steered

    def _on_steer_request(self, change) -> None:  # a FeatureView's steering controls: one request
        request = change["new"] or {}
        try:
            steering = self._steering(request.get("feature"), request.get("value", 0.0), request.get("mode", "clamp"))
        except Exception as exc:  # shown in the widget; the last good view stays
            if self._loop is None:
                self._show_error(self._prompt, exc)
            else:
                self._loop.call_soon_threadsafe(self._show_error, self._prompt, exc)
            return
        self.steering = steering
        self._on_thread(self._show_steered)
        if self._loop is None:  # no kernel loop (a script): recompute now
            self._refresh()
        else:  # from the browser: recompute off the main thread like a prompt edit
            self._live(self._prompt)

    # -- views --------------------------------------------------------------------------------
    def _add(self, view, needs: Callable[[], list[str]], payload):
        self._views[view] = _Binding(needs, payload)
        self._links += self.selection.link(view)
        if self.last_run is not None:
            run = self.last_run
            if not all(site in run.cache for site in needs()):
                self._recompute(self._prompt)
            else:
                base = self.model.run(self._prompt) if self._edits() else None
                view.show(**payload(run, base))
        return view

    def attention(self, **traits) -> AttentionView:
        """Attention patterns of every layer and head, following this Lab's prompt."""
        def payload(run, base):
            return {"pattern": analysis.attention_patterns(run), "tokens": run.token_strs, "prompt": run.prompt}
        sites = [f"attn_pattern.{layer}" for layer in range(self.model.n_layers)]
        return self._add(AttentionView(**traits), lambda: sites, payload)

    def logit_lens(self, k: int = 5, target="next", **traits) -> LogitLensView:
        """The logit lens: each layer's residual stream through the model's own final norm and
        unembedding; ``target`` (a token id or text, or ``"next"``: the prompt's own next token)
        can colour the cells by its probability or rank."""
        label = "next token" if target == "next" else str(target)

        def payload(run, base):
            grid = lens.logit_lens(self.model, run, k=k, target=target)
            return {"lens": grid, "prompt": run.prompt, "target_label": label}
        sites = lens.needs(self.model.n_layers)
        return self._add(LogitLensView(**traits), lambda: sites, payload)

    def features(self, n: int = 12, k: int = 8, **traits) -> FeatureView:
        """The SAE's features on the prompt (top ``n`` by max activation), each with the ``k`` output
        tokens it promotes and suppresses most, and steering controls."""
        if self.sae is None:
            raise ValueError("the feature view needs an SAE: Lab(..., sae=...) or lab.add_sae(...)")
        view = FeatureView(**traits)
        view.observe(self._on_steer_request, names="steer_request")
        self._add(view, lambda: [self.sae.site], lambda run, base: self._feature_payload(run, base, n, k))
        self._show_steered()
        return view

    def _feature_payload(self, run: Run, base: Run | None, n: int, k: int) -> dict:
        sae = self.sae
        acts = analysis.feature_activations(sae, run)
        feats = [int(f) for f in analysis.top_features(acts, n)]
        for extra in (self.selection.feature, self.steering.feature if self.steering else -1):
            if extra >= 0 and extra not in feats:
                feats.append(extra)
        effects = [self._effect(f, k) for f in feats]
        eff_ids = np.array([[e.promoted_ids, e.suppressed_ids] for e in effects]).reshape(len(feats), 2, k)
        eff_strs = np.array([[e.promoted_strs, e.suppressed_strs] for e in effects], dtype=object)
        eff_val = np.array([[e.promoted_values, e.suppressed_values] for e in effects]).reshape(len(feats), 2, k)
        rows = [analysis.next_token_probs(base if base is not None else run), analysis.next_token_probs(run)]
        top = [np.argsort(-p, kind="stable")[:k] for p in rows]
        next_strs = np.array([self.model.to_str_tokens(torch.from_numpy(t)) for t in top], dtype=object)
        next_prob = np.stack([p[t] for p, t in zip(rows, top)])
        return {"tokens": run.token_strs, "features": feats, "acts": acts[:, feats], "effect_ids": eff_ids,
                "effect_strs": eff_strs.reshape(len(feats), 2, k), "effect_val": eff_val,
                "next_strs": next_strs, "next_prob": next_prob, "prompt": run.prompt,
                "sae_label": f"{sae.site} · {sae.architecture} · {sae.d_sae} features",
                "steering": str(self.steering) if self.steering else ""}

    def _effect(self, feature: int, k: int):
        if (feature, k) not in self._effects:
            self._effects[(feature, k)] = analysis.feature_logit_effects(self.sae, self.model, feature, k=k)
        return self._effects[(feature, k)]

    # -- patching -----------------------------------------------------------------------------
    def patching(self, clean: str, corrupted: str, site: str = "resid_pre", by: str = "position", *,
                 answers=None, metric=None, direction: str = "denoise", exact: bool = True,
                 **traits) -> PatchGridView:
        """An activation-patching grid for ``site`` (``resid_pre``, ``resid_mid``, ``resid_post``,
        ``attn_out``, ``mlp_out`` by ``"position"``; ``z``, ``q``, ``k``, ``v`` by ``"head"`` or
        ``"head_position"``). The attribution-patching estimate shows at once; exact values then
        stream in from a worker thread (cancellable from the view). Click a cell to see that patched
        run's next tokens and logit lens. ``answers=(correct, wrong)`` sets the default metric, the
        logit difference (see :func:`mechviz.analysis.patching.activation_patching`).

        >>> grid = lab.patching("When Mary and John went to the store, John gave a drink to",
        ...                     "When Mary and John went to the store, Mary gave a drink to",
        ...                     answers=(" Mary", " John"))                         # doctest: +SKIP
        """
        from .analysis import patching as P

        kwargs = dict(metric=metric, answers=answers, direction=direction)
        with self._model_lock:
            estimate = P.attribution_patching(self.model, clean, corrupted, site, by=by, **kwargs)
        view = PatchGridView(**traits)
        blank = dataclasses.replace(estimate, values=np.full_like(estimate.values, np.nan),
                                    method="activation", complete=False)
        view.show_grid(blank, estimate=estimate, status="estimate")
        view._mechviz_job = dict(clean=clean, corrupted=corrupted, site=site, by=by, **kwargs)
        view.observe(lambda change: self._on_thread(self._patch_detail, change["owner"]), names="cell")
        if exact:
            self._patch_exact(view)
        return view

    def _on_thread(self, fn, *args) -> None:
        """Run ``fn`` on the kernel's loop (observers may fire on a subshell thread), or now."""
        if self._loop is None:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _patch_exact(self, view: PatchGridView) -> None:
        from .analysis import patching as P

        job, first_cancel = view._mechviz_job, view.cancel_requests
        last = [0.0]

        def progress(grid, done, total):  # worker thread: at most ~5 redraws a second
            if time.monotonic() - last[0] > 0.2 or done == total:
                last[0] = time.monotonic()
                self._on_thread(view.show_grid, dataclasses.replace(grid, values=grid.values.copy()), None, "running")

        def work():  # holds the model for the whole job: live edits wait (the prompt box says so)
            try:
                with self._model_lock:
                    grid = P.activation_patching(self.model, job["clean"], job["corrupted"], job["site"], by=job["by"],
                                                 metric=job["metric"], answers=job["answers"],
                                                 direction=job["direction"], on_progress=progress,
                                                 cancel=lambda: view.cancel_requests != first_cancel)
                self._on_thread(view.show_grid, grid, None, "done" if grid.complete else "cancelled")
            except Exception as exc:  # shown in the widget
                self._on_thread(self._patch_failed, view, f"{type(exc).__name__}: {exc}")

        view.status = "running"
        if self._loop is None:
            work()
        else:
            threading.Thread(target=work, name="mechviz-patching", daemon=True).start()

    @staticmethod
    def _patch_failed(view: PatchGridView, message: str) -> None:
        with view.hold_sync():
            view.error, view.status = message, "error"

    def _patch_detail(self, view: PatchGridView) -> None:
        """The patched run of the clicked cell: its metric, top next tokens and logit lens (last position)."""
        from .analysis import patching as P

        r, c = view.cell
        grid = view.grid
        if r < 0 or c < 0 or grid is None:
            return
        job = view._mechviz_job
        name = job["site"].split(".")[0]
        H = len(grid.heads)
        if grid.by == "position":
            layer, pos, head = grid.layers[r], c, None
        elif grid.by == "head":
            layer, pos, head = grid.layers[r], slice(None), grid.heads[c]
        else:
            layer, pos, head = grid.layers[r // H], c, grid.heads[r % H]
        receiver, source = ("corrupted", "clean") if job["direction"] == "denoise" else ("clean", "corrupted")
        site = f"{name}.{layer}"
        try:
            with self._model_lock:
                if "pair" not in job:  # once per view: both runs (every layer of the site) and the grid's metric
                    job["pair"] = P.prompt_pair(self.model, job["clean"], job["corrupted"], job["metric"],
                                                job["answers"], capture=[f"{name}.{lay}" for lay in grid.layers])
                src = job["pair"].runs[source][site]

                def patch(x):
                    if head is None:
                        x[pos] = src[pos].to(x.dtype)
                    else:
                        x[pos, head] = src[pos, head].to(x.dtype)
                    return x
                run = self.model.run(job[receiver], capture=lens.needs(self.model.n_layers), edits={site: patch})
        except Exception as exc:
            view.error = f"cannot show this cell's run: {exc}"
            return
        probs = torch.softmax(run.logits[-1], -1)
        top = torch.topk(probs, 8)
        grid_lens = lens.logit_lens(self.model, run, k=5)
        with view.hold_sync():
            view.detail_cell = [r, c]
            view.detail_strs = self.model.to_str_tokens(top.indices)
            view.detail_probs = pack(top.values.numpy(), "float16")
            view.lens_rows = list(grid_lens.rows)
            view.lens_strs = [[str(s) for s in row] for row in grid_lens.top_strs[:, -1]]
            view.lens_probs = pack(grid_lens.top_probs[:, -1], "float16")
            view.detail_metric = float(job["pair"].metric(run.logits[None]))
            view.error = ""

    def show(self, *views):
        """The prompt box above ``views`` (default: a new attention view), as one displayable box."""
        import ipywidgets

        return ipywidgets.VBox([self.prompt_box, *(views or (self.attention(),))])

    def dashboard(self):
        """Prompt box, attention, logit lens and (with an SAE) features: one pass per edit, linked."""
        views = [self.attention(), self.logit_lens()] + ([self.features()] if self.sae is not None else [])
        return self.show(*views)

    def __repr__(self) -> str:
        views = ", ".join(type(v).__name__ for v in self._views) or "none"
        sae = f", sae={self.sae!r}" if self.sae is not None else ""
        steer = f", steering={self.steering}" if self.steering else ""
        return f"Lab(model={self.model!r}{sae}, prompt={self._prompt!r}, views=[{views}]{steer})"
