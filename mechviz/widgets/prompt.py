"""The prompt box: a text area whose edits drive a :class:`~mechviz.Lab`."""

from __future__ import annotations

import anywidget
import traitlets as t

from ._esm import bundle


class PromptBox(anywidget.AnyWidget):
    """A prompt editor. The browser debounces typing (``debounce_ms``) before it syncs ``value``;
    the Lab computes off the kernel's main thread and reports back through ``status``/``error``/
    ``shown``. The text the user typed is never replaced by the kernel.

    Traits
    ------
    value: the prompt as typed. status: ``"idle" | "running" | "error"``. error: message of the
    last failed run ("" when the last run succeeded). shown: the prompt whose result the views
    currently show. n_tokens: its token count. max_tokens: the model's context length.
    """

    _esm = bundle("prompt")
    value = t.Unicode("").tag(sync=True)
    placeholder = t.Unicode("Type a prompt…").tag(sync=True)
    debounce_ms = t.Int(150).tag(sync=True)
    status = t.Unicode("idle").tag(sync=True)
    error = t.Unicode("").tag(sync=True)
    shown = t.Unicode("").tag(sync=True)
    n_tokens = t.Int(0).tag(sync=True)
    max_tokens = t.Int(0).tag(sync=True)

    def __repr__(self) -> str:
        return f"PromptBox(value={self.value!r}, status={self.status!r}, shown={self.shown!r})"
