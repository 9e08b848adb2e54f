"""What every mechviz view shares: the base class of the anywidget views.

A view receives analysis results (numpy) through ``show(...)`` and never runs a model. It carries
the traits every view has (``prompt``, ``seq``, ``error``, ``title``), refuses keyword arguments it
does not know (a typo like ``layr=2`` is an error, not silently ignored), exposes what it shows as
numpy through one accessor (:attr:`View.data`) and the analysis object behind it as
:attr:`View.result`, and tells whoever holds it when it is closed.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import anywidget
import numpy as np
import traitlets as t

from ..models.base import Run
from .transport import Array


@dataclass
class Pass:
    """One forward pass as the Lab hands it to its views: the ``run`` (steered, if steering is on),
    the unsteered ``base`` run (None when not steering) and the ``steering`` applied (or None)."""

    prompt: str
    run: Run
    base: Run | None = None
    steering: Any = None
    memo: dict = field(default_factory=dict, repr=False)

    def cached(self, key, compute: Callable[[], Any]):
        """``compute()`` once per pass under ``key``: what several views read from the same run (an SAE's
        encoding of the prompt) is computed once per edit, and not again for a payload that reuses the pass."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]


@dataclass
class Feed:
    """How a Lab feeds a view on every prompt edit: ``needs()`` the sites its pass must capture,
    ``payload(pass_)`` the keyword arguments of the view's ``show`` (computed in the worker thread,
    applied on the kernel's loop). ``stream(pass_)``, when given, replaces ``payload``: an iterator of
    such keyword arguments, each more complete; a live edit shows the first at once and the others as
    they come (a newer edit cancels the rest), a call from Python shows the last."""

    needs: Callable[[], list[str]]
    payload: Callable[[Pass], dict] | None = None
    stream: Callable[[Pass], Iterator[dict]] | None = None

    def payloads(self, p: Pass) -> Iterator[dict]:
        """The view's payloads for pass ``p``, first to last."""
        if self.stream is not None:
            yield from self.stream(p)
        else:
            yield self.payload(p)


def received(n: int | None) -> dict:
    """The traits that show ``n`` bytes received from the model's machine (None: not counted)."""
    if n is None:
        return {}
    size = f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB" if n >= 1e3 else f"{n} B"
    return {"bytes_received": int(n), "note": f"{size} received from the model (reduced inside the trace)"}


@dataclass
class Difference:
    """Two analysis results of one kind, shown as ``a - b`` (see :meth:`View.difference`)."""

    a: Any
    b: Any


def ab_prompt(a: str, b: str) -> str:
    """How a difference names its prompts."""
    return f"A − B; A: {a!r}; B: {b!r}"


def ab_tokens(a, b) -> list[str]:
    """One token axis for two prompts of the same length: a token, or ``"a | b"`` where they differ."""
    return [x if x == y else f"{x} | {y}" for x, y in zip(a, b)]


@dataclass
class Shown:
    """A payload made ready to show (by :meth:`View.prepare`, in the worker thread): the trait values
    (arrays already packed, see :class:`~mechviz.widgets.transport.Packed`), the analysis object and
    the prompt. :meth:`View.apply` sets them on the kernel's loop, which then only sends."""

    traits: dict
    result: Any
    prompt: str = ""


class View(anywidget.AnyWidget):
    """Base class of mechviz's views.

    ``prompt``: the prompt the data belongs to; ``seq``: bumped on every new payload (the browser
    redraws once per payload); ``error``: shown as a banner over the last good view ("" = none);
    ``title``: the header; ``model_info``: what computed the data (shown in the header, see
    :func:`mechviz.models.describe.describe`); ``bytes_received``: what the model's machine sent for the payload
    where the view's data is reduced inside an nnsight trace (the logit lens and attention views of an nnsight
    model; also shown in ``note``), else -1.

    >>> from mechviz.widgets import AttentionView
    >>> AttentionView(layr=2)
    Traceback (most recent call last):
    ...
    TypeError: AttentionView got an unknown argument 'layr' (did you mean 'layer'?)
    """

    prompt = t.Unicode("").tag(sync=True)
    seq = t.Int(0).tag(sync=True)
    error = t.Unicode("").tag(sync=True)
    title = t.Unicode("").tag(sync=True)
    model_info = t.Unicode("").tag(sync=True)  # what computed the data: name · backend numerics · dtype · device
    note = t.Unicode("").tag(sync=True)  # shown under the header, e.g. what a static export left out
    _mv_kind = t.Unicode("").tag(sync=True)  # the view's class name (how an export knows what it holds)
    # bytes the model's machine sent for the last payload, where the view's data is reduced inside an nnsight
    # trace (mechviz.models.reductions); -1: not counted (the data came from the Lab's shared pass)
    bytes_received = t.Int(-1).tag(sync=True)

    #: the analysis object the view shows (set by ``show``; None before any data)
    result = None

    def __init__(self, **kwargs):
        known = set(self.class_trait_names())
        for key in kwargs:
            if key not in known:
                public = sorted(n for n in known if not n.startswith("_"))
                close = difflib.get_close_matches(key, public, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f"; it takes {', '.join(self._own_traits())}"
                raise TypeError(f"{type(self).__name__} got an unknown argument {key!r}{hint}")
        super().__init__(**kwargs)
        self._mv_kind = type(self).__name__
        self._loop = None  # the kernel's loop, set by a Lab: follow-up work is done off it
        self._explicit = frozenset(kwargs)  # traits the caller chose (a Lab shares a chosen selection)
        self._close_callbacks: list[Callable[[View], None]] = []

    def snapshot(self) -> "View":
        """A copy of the view as it is now, bound to no Lab: it keeps this state when the Lab's prompt or selection
        moves on, so a notebook cell still shows what its text describes after "Run All" (hover and the view's
        own controls work; answers that need the Lab's kernel side do not).

        >>> import mechviz
        >>> lab = mechviz.Lab.default(prompt="The cat sat")
        >>> attn = lab.attention()
        >>> before = attn.snapshot()
        >>> lab.prompt = "A dog ran"
        >>> before.prompt, attn.prompt
        ('The cat sat', 'A dog ran')
        """
        twin = type(self)(**{n: getattr(self, n) for n in self._own_traits()})
        twin.result = self.result
        return twin

    @classmethod
    def _own_traits(cls) -> list[str]:
        base = set(anywidget.AnyWidget.class_trait_names())
        return sorted(n for n in cls.class_trait_names() if n not in base and not n.startswith("_"))

    @property
    def data(self) -> dict[str, np.ndarray]:
        """Every array the view shows, by trait name, as numpy (as held in Python, before the
        transport's quantisation)."""
        return {name: getattr(self, name) for name, trait in self.traits().items()
                if isinstance(trait, Array) and not trait.derived and getattr(self, name) is not None}

    def feed(self, lab, **options) -> Feed:
        """How ``lab`` feeds this view (views that follow a Lab's prompt override this)."""
        raise TypeError(f"a {type(self).__name__} does not follow a Lab's prompt")

    def follows(self, name: str, value) -> bool:
        """Whether the shared selection's new ``name = value`` needs a new payload for this view (one
        computed from the last pass, no forward pass): e.g. a feature its payload does not hold."""
        return False

    def difference(self, a: dict, b: dict) -> dict:
        """The payload showing A - B from two payloads of this view (``feed`` output for prompts A and
        B): how :class:`mechviz.Compare` draws a difference. Views whose numbers subtract override it."""
        raise TypeError(f"{type(self).__name__} has no difference mode")

    def show(self, *args, **payload) -> None:
        """Display data now: ``apply(prepare(...))`` (see the view's :meth:`prepare` for the arguments)."""
        self.apply(self.prepare(*args, **payload))

    def prepare(self, *args, **payload) -> Shown:
        """Check and convert ``payload`` into what :meth:`apply` sets: everything slow (conversions,
        packing, downsampling, string tables) happens here, off the kernel's loop. Views override it."""
        raise NotImplementedError(f"{type(self).__name__} does not implement prepare")

    def apply(self, shown: Shown) -> None:
        """Show a prepared payload: set its traits in one message (on the kernel's loop)."""
        self.result = shown.result
        with self.hold_sync():
            for name, value in shown.traits.items():
                setattr(self, name, value)
            self._applied(shown)
            self._shown(shown.prompt)

    def _applied(self, shown: Shown) -> None:
        """Hook: adjust the selection to new data (inside ``apply``'s ``hold_sync``)."""

    def _shown(self, prompt: str) -> None:
        """Mark a new payload (call inside ``hold_sync``): prompt, ``seq`` bump, error cleared."""
        self.prompt = prompt
        self.seq += 1
        self.error = ""

    def _need_result(self):
        if self.result is None:
            raise ValueError(f"nothing to draw yet: this {type(self).__name__} has no data")
        return self.result

    def figure(self):
        """A matplotlib Figure of the view's current state (views that draw one override this)."""
        raise TypeError(f"{type(self).__name__} has no figure")

    def save_figure(self, path, dpi: float = 150, **savefig_kwargs):
        """Save :meth:`figure` (the view's current state, selection included) to ``path``, in the format its
        suffix names (``.png``, ``.svg``, ``.pdf``); a PNG gets ``dpi`` pixels per inch (SVG and PDF stay vector).
        Returns the path.

        >>> import mechviz, tempfile, pathlib
        >>> lens = mechviz.Lab.default(prompt="The cat sat", sae=False).logit_lens()
        >>> out = lens.save_figure(pathlib.Path(tempfile.mkdtemp()) / "lens.svg")
        >>> out.read_text()[:5] in ("<?xml", "<svg ")
        True
        """
        from pathlib import Path

        path = Path(path)
        fmt = path.suffix.lower().lstrip(".")
        if fmt not in ("png", "svg", "pdf"):
            raise ValueError(f"save_figure writes .png, .svg or .pdf, not {path.name!r}: name the file with one of those")
        self.figure().savefig(path, dpi=dpi, format=fmt, **savefig_kwargs)
        return path

    def on_close(self, callback: Callable[["View"], None]) -> None:
        """Call ``callback(view)`` when the view is closed (a Lab releases the view then)."""
        self._close_callbacks.append(callback)

    def close(self) -> None:
        callbacks, self._close_callbacks = getattr(self, "_close_callbacks", []), []
        for cb in callbacks:
            cb(self)
        super().close()
