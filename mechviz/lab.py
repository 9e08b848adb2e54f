"""The Lab: what a user holds. A model, a prompt, the views built on them, and the live loop."""

from __future__ import annotations

import os
import weakref

import torch

from .models import ModelAdapter, Run, wrap
from .widgets.attention import AttentionView
from .widgets.prompt import PromptBox
from .widgets.runner import LatestOnlyRunner
from .widgets.selection import Selection

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


class Lab:
    """A model plus a live prompt, shared by every view it builds: one forward pass per prompt edit
    captures the union of what the views need.

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
    prompt: the first prompt.
    threads: torch intra-op threads (see :func:`pin_threads`).
    """

    def __init__(self, model, tokenizer=None, *, prompt: str = "", threads: int | None = None,
                 name: str | None = None):
        self.model: ModelAdapter = wrap(model, tokenizer, name=name)
        self.threads = pin_threads(threads)
        self._views: weakref.WeakSet = weakref.WeakSet()
        self.last_run: Run | None = None
        self._runner: LatestOnlyRunner | None = None
        self.selection = Selection()  # shared by every view: linked in the browser (survives export)
        self._links: list = []
        self.prompt_box = PromptBox(value=prompt, max_tokens=self.model.max_len or 0)
        self.prompt_box.observe(self._on_edit, names="value")
        self._prompt = prompt
        if prompt:
            self.prompt = prompt

    @classmethod
    def default(cls, prompt: str = DEFAULT_PROMPT, **kwargs) -> "Lab":
        """A Lab on mechviz's bundled model (offline; see :mod:`mechviz.zoo`)."""
        from .zoo import load_default_model

        model, tokenizer = load_default_model()
        return cls(model, tokenizer, prompt=prompt, name=kwargs.pop("name", "mechviz-default"), **kwargs)

    # -- running ------------------------------------------------------------------------------
    def run(self, prompt: str | None = None, capture=()) -> Run:
        """One forward pass on ``prompt`` (default: the current prompt) capturing ``capture``."""
        return self.model.run(self._prompt if prompt is None else prompt, capture=capture)

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
        try:
            result = self._compute(text, None)
        except Exception as exc:
            self._show_error(text, exc)
            raise
        self._apply(text, result)

    def _needs(self) -> list[str]:
        return sorted({site for view in self._views for site in view.needs})

    def _compute(self, prompt: str, is_stale):
        """Worker side: one forward pass for every view, then each view's arrays (numpy)."""
        run = self.model.run(prompt, capture=self._needs(), abort=is_stale)
        return run, {view: view.payload(run) for view in list(self._views)}

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
        message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)
        with self.prompt_box.hold_sync():
            self.prompt_box.status = "error"
            self.prompt_box.error = message
        for view in list(self._views):
            view.error = message

    # -- live edits ---------------------------------------------------------------------------
    _syncing = False

    def _on_edit(self, change) -> None:
        if self._syncing:
            return
        if self._runner is None:
            self._runner = LatestOnlyRunner(self._compute, self._apply, self._show_error,
                                            on_start=self._on_start)
        self._runner.request(change["new"])

    def _on_start(self, prompt: str) -> None:
        self.prompt_box.status = "running"

    # -- views --------------------------------------------------------------------------------
    def _add(self, view):
        self._views.add(view)
        self._links += self.selection.link(view)
        run = self.last_run
        if run is not None:
            if not all(any(k.startswith(f"{site}.") for k in run.cache) for site in view.needs):
                run = self.last_run = self.model.run(self._prompt, capture=self._needs())
            view.show(**view.payload(run))
        return view

    def attention(self, **traits) -> AttentionView:
        """An attention-pattern view of every layer and head, following this Lab's prompt."""
        return self._add(AttentionView(**traits))

    def show(self, *views):
        """The prompt box above ``views`` (default: a new attention view), as one displayable box."""
        import ipywidgets

        return ipywidgets.VBox([self.prompt_box, *(views or (self.attention(),))])

    def __repr__(self) -> str:
        views = ", ".join(type(v).__name__ for v in self._views) or "none"
        return f"Lab(model={self.model!r}, prompt={self._prompt!r}, views=[{views}])"
