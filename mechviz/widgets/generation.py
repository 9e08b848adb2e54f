"""Steering that shows text: the unsteered and steered continuations of the Lab's prompt side by side.

Bound with ``lab.add(SteeringView(), n=20, specs=[(feature, value, "clamp" | "scale"), ...])`` it follows the
Lab's prompt (every edit regenerates both columns). Its features are its own: the Lab's steering
(``lab.steer``) is not applied here. The browser's controls (add or remove features, values, modes,
positions, n, which feature the sweep shows) send ONE request trait; the view computes it off the kernel's
loop, shows progress, and keeps the last good result when a request fails.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import traitlets as t

from ..analysis.checks import positive_int
from ..analysis.generation import (Generation, Sweep, generate, neuronpedia_url, steered_generation,
                                   steering_specs, strength_sweep, sweep_values)
from ..models.base import Aborted
from ..steering import Steering
from ._esm import bundle
from .base import Feed, Shown, View
from .runner import live, offload
from .transport import Array, Packed

DEFAULT_VALUE = 10.0   # the clamp value of a feature taken from the selection (activations of the bundled SAE reach ~5)
POSITIONS = ("all", "prompt")


@dataclass
class SteeredText:
    """What a :class:`SteeringView` shows: the ``base`` (unsteered) and ``steered`` :class:`Generation`
    (None without features), the ``sweep`` of the ``selected`` feature (None without features), the
    ``specs`` steered, ``positions`` (``"all"``: generated tokens too; ``"prompt"``), the dictionary's name
    and the selected feature's Neuronpedia ``url`` ("" none)."""

    base: Generation
    steered: Generation | None
    sweep: Sweep | None
    specs: list[Steering]
    positions: str
    selected: int
    dictionary: str
    n: int
    url: str = ""


def steered_text(adapter, sae, prompt, specs, n: int = 20, positions: str = "all", selected: int = 0, k: int = 5,
                 temperature: float = 0.0, seed: int = 0, dictionary: str = "", on_step=None, cancel=None) -> SteeredText:
    """Both continuations, and the strength sweep of ``specs[selected]`` (that feature alone, over
    :func:`~mechviz.analysis.generation.sweep_values` of its value)."""
    specs = steering_specs(sae, specs) if specs else []
    args = dict(n=n, temperature=temperature, seed=seed, k=k, on_step=on_step, cancel=cancel)
    if not specs:
        return SteeredText(generate(adapter, prompt, **args), None, None, [], positions, -1, dictionary, n)
    base, steered = steered_generation(adapter, sae, prompt, specs, positions=positions, **args)
    sel = specs[min(max(int(selected), 0), len(specs) - 1)]
    sweep = strength_sweep(adapter, sae, prompt, sel.feature, sweep_values(sel.value, sel.mode), mode=sel.mode,
                           positions=positions, cancel=cancel)
    return SteeredText(base, steered, sweep, specs, positions, specs.index(sel), dictionary, n,
                       neuronpedia_url(sae, sel.feature) or "")


class SteeringView(View):
    """Unsteered and steered continuations of the prompt as token chips (each shaded by its probability,
    the top-k alternatives on hover), a strength sweep of the selected feature, and a Neuronpedia link.

    Traits: ``tokens`` (the prompt's), ``base_strs``/``steered_strs`` the generated tokens (untrusted
    text), ``base_prob``/``steered_prob`` float32 ``[n]`` their probabilities, ``base_alt``/``steered_alt``
    ``[n][k]`` the top-k tokens and ``base_alt_prob``/``steered_alt_prob`` float32 ``[n, k]``; ``stopped``
    why each column ended (``"n"``, ``"eos"``). ``specs``: the features steered, ``[{"feature", "value",
    "mode"}]``; ``positions``: ``"all"`` (generated tokens too) or ``"prompt"``; ``n``; ``selected``: the
    spec the sweep shows; ``sweep_values``/``sweep_metric`` float32 ``[V]``, ``sweep_label``,
    ``sweep_feature``, ``sweep_current`` (its value, marked), ``sweep_top`` the likeliest next token at each value; ``neuronpedia``: the selected feature's page
    ("" none). The browser writes ``request`` = ``{"specs", "positions", "n", "selected", "id"}``; while it
    is computed ``busy`` is true and ``progress`` says how far; a refused or failed request sets ``error``
    and leaves what is shown. ``view.result`` is the :class:`SteeredText`.
    """

    _esm = bundle("generation")
    tokens = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    base_strs = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    steered_strs = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    base_prob = Array("float32")
    steered_prob = Array("float32")
    base_alt = t.List(t.List(t.Unicode()), default_value=[]).tag(sync=True)
    steered_alt = t.List(t.List(t.Unicode()), default_value=[]).tag(sync=True)
    base_alt_prob = Array("float32")
    steered_alt_prob = Array("float32")
    stopped = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    specs = t.List(t.Dict(), default_value=[]).tag(sync=True)
    positions = t.Enum(POSITIONS, default_value="all").tag(sync=True)
    n = t.Int(20).tag(sync=True)
    selected = t.Int(0).tag(sync=True)
    steering = t.Unicode("").tag(sync=True)
    steered_dictionary = t.Unicode("").tag(sync=True)
    sweep_values = Array("float32")
    sweep_metric = Array("float32")
    sweep_label = t.Unicode("").tag(sync=True)
    sweep_top = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    sweep_feature = t.Int(-1).tag(sync=True)
    sweep_current = t.Float(0.0).tag(sync=True)
    neuronpedia = t.Unicode("").tag(sync=True)
    request = t.Dict(default_value=None, allow_none=True).tag(sync=True)
    busy = t.Bool(False).tag(sync=True)
    progress = t.Unicode("").tag(sync=True)
    title = t.Unicode("Steering: generated text").tag(sync=True)

    result: SteeredText | None = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._lab = None
        self._requests = 0
        self._finals = 0
        self.observe(self._on_request, names="request")

    def feed(self, lab, n: int = 20, specs=None, positions: str = "all", k: int = 5, dictionary: str | None = None,
             temperature: float = 0.0, seed: int = 0) -> Feed:
        """``specs``: ``[(feature, value, mode), ...]`` of ``dictionary`` (default: the one shown); None: the
        selected feature (``lab.selection.feature``) clamped to :data:`DEFAULT_VALUE`, or none."""
        if not len(lab.saes):
            raise ValueError("steering needs an SAE: Lab(..., sae=...) or lab.add_sae(...)")
        name = lab.saes.resolve(dictionary or lab.selection.dictionary)
        sae = lab.saes[name]
        if specs is None:
            f = lab.selection.feature
            same = lab.saes.resolve(lab.selection.dictionary) == name
            specs = [(f, DEFAULT_VALUE, "clamp")] if f >= 0 and same and not sae.is_transcoder else []
        checked = steering_specs(sae, specs) if specs else []
        if positions not in POSITIONS:
            raise ValueError(f"positions must be 'all' (generated tokens too) or 'prompt', got {positions!r}")
        n = positive_int(n, "n")
        self._lab, self._name = lab, name
        self._options = dict(k=positive_int(k, "k"), temperature=float(temperature), seed=int(seed))
        self._settings = dict(specs=checked, n=n, positions=positions, selected=0)

        def stream(p):   # at once: the new prompt's tokens, the last text kept (dimmed); then the new text
            yield {"result": None, "prompt": p.prompt, "tokens": list(p.run.token_strs)}
            step, wanted = self._stepper(None, self._settings), lab._wanted   # a newer Lab request cancels this one
            yield {"result": self._compute(p.prompt, **self._settings, on_step=step,
                                           cancel=lambda: lab._wanted is not wanted), "prompt": p.prompt}
        return Feed(lambda: [], stream=stream)

    def _compute(self, prompt, specs, n, positions, selected, on_step=None, cancel=None) -> SteeredText:
        return steered_text(self._lab.model, self._lab.saes[self._name], prompt, specs, n=n, positions=positions,
                            selected=selected, dictionary=self._name, on_step=on_step, cancel=cancel, **self._options)

    def prepare(self, result: SteeredText | None, prompt: str = "", tokens=None) -> Shown:
        """Pack a :class:`SteeredText`; ``None``: being computed for ``prompt`` (of ``tokens``), the last one kept."""
        if result is None:
            return Shown({"tokens": list(tokens or []), "busy": True, "progress": "generating…"}, self.result, prompt)
        b, s, sw = result.base, result.steered, result.sweep

        def column(g: Generation | None, name: str) -> dict:
            if g is None:
                return {f"{name}_strs": [], f"{name}_prob": None, f"{name}_alt": [], f"{name}_alt_prob": None}
            return {f"{name}_strs": list(g.strs), f"{name}_prob": Packed(g.probs, "float32"),
                    f"{name}_alt": [list(x) for x in g.top_strs], f"{name}_alt_prob": Packed(g.top_probs, "float32")}

        sel = result.specs[result.selected] if result.specs else None
        traits = {"tokens": list(b.prompt_strs), **column(b, "base"), **column(s, "steered"),
                  "stopped": [b.stopped] + ([s.stopped] if s is not None else []),
                  "specs": [{k: v for k, v in x.to_json().items() if k != "dictionary"} for x in result.specs],
                  "positions": result.positions, "n": result.n,
                  "selected": max(result.selected, 0), "steering": s.steering if s is not None else "",
                  "steered_dictionary": result.dictionary,
                  "sweep_values": None if sw is None else Packed(sw.values, "float32"),
                  "sweep_metric": None if sw is None else Packed(sw.metric, "float32"),
                  "sweep_label": "" if sw is None else sw.label, "sweep_top": [] if sw is None else list(sw.top_strs), "sweep_feature": -1 if sel is None else sel.feature,
                  "sweep_current": 0.0 if sel is None else sel.value, "neuronpedia": result.url,
                  "busy": False, "progress": ""}
        return Shown(traits, result, prompt)

    def _applied(self, shown: Shown) -> None:
        r = shown.result
        if r is None or "specs" not in shown.traits:   # a pending stage
            return
        self._finals += 1   # progress reported for what is shown now is stale from here on
        self._settings = dict(specs=r.specs, n=r.n, positions=r.positions, selected=max(r.selected, 0))

    # -- browser requests --------------------------------------------------------------------------
    def _on_loop(self, fn) -> None:
        """Run ``fn`` on the kernel's loop (trait changes reach the browser from there), or now."""
        if live(self._loop):
            self._loop.call_soon_threadsafe(fn)
        else:
            fn()

    def _refuse(self, message: str) -> None:
        def show():   # "" first: a second refusal with the same text must still reach the browser
            with self.hold_sync():
                self.busy, self.progress = False, ""
            self.error = ""
            self.error = message
        self._on_loop(show)

    def _on_request(self, change) -> None:
        req = change["new"]
        if not req or self._lab is None:
            return
        try:
            sae = self._lab.saes[self._name]
            specs = steering_specs(sae, req["specs"]) if req.get("specs") else []
            positions = req.get("positions", self._settings["positions"])
            if positions not in POSITIONS:
                raise ValueError(f"positions must be 'all' or 'prompt', got {positions!r}")
            n = positive_int(req.get("n", self._settings["n"]), "n")
            selected = int(req.get("selected", 0))
            if specs and not 0 <= selected < len(specs):
                raise ValueError(f"selected must index the features steered (0..{len(specs) - 1}), got {selected}")
        except (ValueError, TypeError, KeyError) as exc:
            self._refuse(str(exc.args[0]) if isinstance(exc, KeyError) else str(exc))
            return
        self._start(dict(specs=specs, n=n, positions=positions, selected=selected))

    def _start(self, settings: dict) -> None:
        """Compute ``settings`` on the Lab's current prompt off the loop (newest request wins; a result whose
        prompt the Lab has left by then is recomputed on the new one)."""
        self._requests += 1
        mine, lab, prompt = self._requests, self._lab, self._lab.prompt
        total = 2 * settings["n"] if settings["specs"] else settings["n"]
        self._on_loop(lambda: self._progress(mine, f"generating 0/{total}"))

        step = self._stepper(mine, settings)

        def work():
            try:
                with lab.lock:
                    result = self._compute(prompt, **settings, cancel=lambda: mine != self._requests, on_step=step)
                    return "ok", self.prepare(result, prompt)
            except Aborted:
                return "aborted", None
            except Exception as exc:  # noqa: BLE001  (shown in the view; the last good result stays)
                return "error", exc

        def done(out) -> None:
            kind, value = out
            if mine != self._requests or kind == "aborted":
                return
            if kind == "error":
                self._refuse(f"{type(value).__name__}: {value}")
            elif lab.prompt != prompt:   # the prompt was edited meanwhile: these settings, on the new prompt
                self._start(settings)
            else:
                self.apply(value)
        offload(self._loop, work, done)

    def _stepper(self, mine: int | None, settings: dict):
        """``on_step`` that shows progress (``mine``: of that request only; None: of the Lab's pass)."""
        finals = self._finals

        def step(i, m, _tok):
            text = "sweeping" if i == m and settings["specs"] else f"generating {i}/{m}"
            self._on_loop(lambda: self._progress(mine, text, finals))
        return step

    def _progress(self, mine: int | None, text: str, finals: int | None = None) -> None:
        if (mine is None or mine == self._requests) and finals in (None, self._finals):
            with self.hold_sync():
                self.busy, self.progress = True, text

    async def finished(self, poll: float = 0.05, timeout: float = 600.0) -> "SteeringView":
        """Wait (``await view.finished()`` in a cell) until the texts are generated. Only needed before saving
        or exporting a notebook: generation runs off the kernel's loop, which a blocking wait would stall."""
        import asyncio

        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while (self.busy or self.seq == 0) and not self.error and loop.time() < end:
            await asyncio.sleep(poll)
        self.send_state()   # this cell's output holds the whole state (nbclient records per cell)
        return self

    def figure(self):
        """A matplotlib Figure: the strength sweep (the current value marked; none when nothing is steered) above
        the unsteered and the steered text, the prompt and the steering in the title."""
        from ..analysis.view_figures import steering_figure

        r = self._need_result()
        current = r.specs[r.selected].value if r.sweep is not None and r.specs else None
        return steering_figure(r.sweep, current, "".join(self.base_strs), "".join(self.steered_strs),
                               prompt=self.prompt, steering=self.steering, what=self.title)

    def __repr__(self) -> str:
        r = self.result
        return (f"SteeringView(prompt={self.prompt!r}, steering={self.steering or 'off'!r}, "
                f"base={r.base.text if r else ''!r}, steered={r.steered.text if r and r.steered else ''!r})")
