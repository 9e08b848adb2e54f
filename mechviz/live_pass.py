"""The engine behind a :class:`~mechviz.Lab`: ONE forward pass per prompt edit for every view it holds.

A request is a :class:`_State` (a prompt under a steering). From Python it is computed now
(:meth:`LivePasses._recompute`, errors raise); from the browser it goes to a latest-only runner off the
kernel's loop (:meth:`LivePasses._live`: a newer edit supersedes an older one, streams show their first
stage at once). Either way the pass captures the union of the views' needs, each view's payload is
prepared in the worker and applied on the loop. The Lab is the facade; this is its one pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .models.base import Aborted
from .steering import Steering
from .widgets.base import Pass
from .widgets.runner import LatestOnlyRunner, live


@dataclass(frozen=True)
class _State:
    """What one pass computes: a prompt under a steering (None: unsteered). ``reuse``: the views'
    payloads may come from the last pass when it is of this prompt and steering (a request that changes
    only what a view reads, such as the selected feature, costs no forward pass)."""

    prompt: str
    steering: Steering | None = None
    reuse: bool = field(default=False, compare=False)


class LivePasses:
    """Mixin of :class:`~mechviz.Lab`: computing, applying and failing one request for every bound view.
    Uses the Lab's ``model``, ``lock``, ``_bindings``, ``prompt_box``, ``last``, ``steering``, ``_wanted``,
    ``_runner``, ``_loop`` and ``_edits``."""

    # -- one pass for every view --------------------------------------------------------------------
    def _compute(self, state: _State, ticket=None):
        """Worker side: ONE forward pass for every view (plus an unsteered one only while steering),
        then each view's payload, prepared (numpy, packed). Views that stream (the logit lens) give a
        first payload at once: with a live ``ticket`` those are shown first (``ticket.publish``) and
        the rest follow, a stage at a time, until a newer request makes the ticket stale; from
        Python (no ticket) every stream runs to its end."""
        feeds = [(b.view, b.feed) for b in list(self._bindings.values()) if b.feed is not None]
        needs = sorted({site for _, feed in feeds for site in feed.needs()})
        edits = self._edits(state.steering)
        last = self.last
        with self.lock:
            if state.reuse and last is not None and (last.prompt, last.steering) == (state.prompt, state.steering) \
                    and all(site in last.run.cache for site in needs):
                p = last
            else:
                try:
                    run = self.model.run(state.prompt, capture=needs, abort=ticket, edits=edits)
                except FloatingPointError:
                    if edits:  # not the steering's fault when the model overflows without it: say so
                        self.model.run(state.prompt, capture=needs, abort=ticket)
                    raise
                base = self.model.run(state.prompt, abort=ticket) if edits else None
                p = Pass(state.prompt, run, base, state.steering)
            streams = {view: feed.payloads(p) for view, feed in feeds}
            shown = {view: view.prepare(**next(it)) for view, it in streams.items()}
        if ticket is None:  # from Python: each stream to its end, only its last stage prepared
            for view, it in streams.items():
                with self.lock:
                    final = None
                    for final in it:
                        pass
                    if final is not None:
                        shown[view] = view.prepare(**final)
            return p, shown
        stage = shown
        while stage:  # each stage is shown as it comes; the result itself then only marks the end
            ticket.publish((p, stage))
            stage = {}
            for view, it in streams.items():
                if ticket():
                    raise Aborted("a newer request arrived")
                with self.lock:
                    payload = next(it, None)
                    if payload is not None:
                        stage[view] = view.prepare(**payload)
        return p, {}

    def _apply(self, state: _State, result, partial: bool = False) -> None:
        """Loop side: push the prepared payloads into the views (``partial``: more stages follow)."""
        p, shown = result
        self.last, self.steering = p, state.steering
        for view, ready in shown.items():
            if view in self._bindings:
                view.apply(ready)
        with self.prompt_box.hold_sync():
            self.prompt_box.shown, self.prompt_box.n_tokens = p.prompt, len(p.run.token_strs)
            self.prompt_box.status, self.prompt_box.error = ("running" if partial else "idle"), ""

    def _failed(self, state: _State, exc: BaseException) -> None:
        message = str(exc) if isinstance(exc, (ValueError, KeyError)) else f"{type(exc).__name__}: {exc}"
        if state.steering != self.steering:  # a new steering was part of it: the old one stays
            message = f"steering ({state.steering or 'off'}) failed, {self.steering or 'no steering'} kept: {message}"
            if self._wanted == state:
                self._wanted = replace(state, steering=self.steering)
        with self.prompt_box.hold_sync():
            self.prompt_box.status, self.prompt_box.error = "error", message
        for b in list(self._bindings.values()):  # the views that follow the prompt (a patching grid does not)
            if b.feed is not None:
                b.view.error = message

    def _recompute(self, state: _State) -> None:
        """Compute ``state`` now (from Python); without views only the prompt is checked."""
        self._wanted = replace(state, reuse=False)
        if self._runner is not None:
            self._runner.supersede()  # a live result still in flight must not replace this one
        try:
            if not any(b.feed for b in self._bindings.values()):  # nothing to show: check the prompt only
                if state.prompt:
                    self.model.to_tokens(state.prompt)
                self.steering = state.steering
                return
            result = self._compute(state)
        except Exception as exc:
            self._failed(state, exc)
            if state.steering != self.steering and hasattr(exc, "add_note"):
                exc.add_note(f"mechviz: while steering {state.steering}; {self.steering or 'no steering'} kept")
            raise
        self._apply(state, result)

    def _refresh(self) -> None:
        if self.last is not None:
            self._recompute(self._wanted)

    # -- live requests (from the browser; may arrive on a kernel subshell thread) ------------------
    _syncing = False

    def _on_edit(self, change) -> None:
        if not self._syncing:
            self._live(replace(self._wanted, prompt=change["new"]))

    def _live(self, state: _State) -> None:
        self._wanted = replace(state, reuse=False)
        if not live(self._loop):  # no kernel loop (a script): compute now, errors stay in the views
            try:
                self._recompute(state)
            except Exception:
                pass
            return
        if self._runner is None:
            self._runner = LatestOnlyRunner(self._compute, self._apply, self._failed, on_start=self._on_start,
                                            on_partial=lambda s, r: self._apply(s, r, partial=True),
                                            loop=self._loop)
        self._runner.request(state)

    def _on_start(self, state: _State) -> None:
        self.prompt_box.status = "running"
