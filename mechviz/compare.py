"""Compare mode: any Lab view over two prompts, side by side or as their difference.

A :class:`Compare` holds a Lab (prompt A) and a second prompt B with its own prompt box. B is a second
:class:`~mechviz.Lab` on the same model that shares A's selection and model lock, so:

- :meth:`Compare.side_by_side` builds the same view twice, one per prompt (each follows its own prompt
  box and forward pass), with one selection (pick a head, token or feature in either, both show it) and
  one colour scale (``vmin``/``vmax`` are the union of both views' ranges);
- :meth:`Compare.difference` builds one view of A - B, for views whose numbers subtract
  (:meth:`~mechviz.widgets.base.View.difference`: attention patterns, direct logit attribution and head
  scores). It follows both prompts: it has a Lab of its own on prompt A (so an error, e.g. prompts of
  different lengths, shows in the difference view alone), and B's run is kept while B is unchanged.
  Differences are of unsteered runs; side by side, A's view is steered when the Lab is.

A Compare shares the Lab's dictionaries (``lab.saes``), those added later too.

Example
-------
>>> import mechviz
>>> lab = mechviz.Lab.default(prompt="The cat sat on the mat. The cat")
>>> cmp = mechviz.Compare(lab, "The dog sat on the mat. The dog")
>>> box = cmp.side_by_side(mechviz.AttentionView)       # display it: two prompt boxes, two views
>>> a, b = cmp.pairs[0]
>>> a.prompt, b.prompt
('The cat sat on the mat. The cat', 'The dog sat on the mat. The dog')
>>> a.layer = 2                                        # one selection: B follows
>>> b.layer
2
>>> diff = cmp.difference(mechviz.AttentionView)       # one view of A - B (same number of tokens)
>>> diff.signed, bool(diff.data["pattern"].min() < 0)
(True, True)
"""

from __future__ import annotations

import threading
from dataclasses import replace

from .lab import Lab
from .widgets.base import Feed, Pass, View

SCALE_TRAITS = ("vmin", "vmax")


class Compare:
    """Prompt A (``lab``'s) against prompt B: views side by side or their difference, on one model.

    Parameters
    ----------
    lab: the Lab whose prompt is A (its model, SAE, selection and lock are shared).
    prompt: prompt B.
    """

    def __init__(self, lab: Lab, prompt: str):
        self.a = lab
        self.b = _twin(lab, prompt)
        self.pairs: list[tuple[View, View]] = []     # side_by_side's views, (A, B)
        self.differences: list[View] = []
        self._d = _twin(lab, lab.prompt)             # the differences' Lab: prompt A, its errors its own
        self._b_run = None                            # (prompt, sites, Run) of B for the differences
        self._b_lock = threading.Lock()
        lab.prompt_box.observe(self._on_a_edit, names="value")
        self.b.prompt_box.observe(self._on_b_edit, names="value")

    # -- side by side ---------------------------------------------------------------------------------
    def side_by_side(self, view_cls: type[View], **options):
        """``view_cls`` on A and on B (``options`` go to :meth:`Lab.add`, e.g. ``answer=" cat"``), one
        selection and one colour scale; returns the two prompt boxes above their views, to display.
        The views are ``compare.pairs[-1]``."""
        _check_view_class(view_cls)
        va = self.a.add(view_cls(title=f"A · {_title(view_cls)}"), **options)
        try:
            vb = self.b.add(view_cls(title=f"B · {_title(view_cls)}"), **options)
        except Exception:
            self.a.remove(va)
            raise
        _share_scale(va, vb)
        self.pairs.append((va, vb))
        return self.layout(va, vb)

    def layout(self, va: View, vb: View):
        """A's prompt box over ``va`` beside B's over ``vb``, as one displayable box."""
        import ipywidgets

        column = ipywidgets.Layout(flex="1 1 0", min_width="0")
        return ipywidgets.HBox([ipywidgets.VBox([self.a.prompt_box, va], layout=column),
                                ipywidgets.VBox([self.b.prompt_box, vb], layout=column)])

    # -- difference -------------------------------------------------------------------------------------
    def difference(self, view_cls: type[View], **options) -> View:
        """One ``view_cls`` showing A - B (``options`` go to :meth:`Lab.add`). It follows both prompts;
        prompts whose numbers do not line up (e.g. attention over different token counts) show an
        error in the view and raise here, with what to do."""
        _check_view_class(view_cls)
        if view_cls.difference is View.difference:
            raise TypeError(f"{view_cls.__name__} has no difference mode (its numbers do not subtract); "
                            f"use side_by_side({view_cls.__name__})")
        view = view_cls(title=f"A − B · {_title(view_cls)}")
        own = view.feed(self._d, **options)

        def payload(p: Pass) -> dict:
            *_, a = own.payloads(p)
            *_, b = own.payloads(self._b_pass(own.needs()))
            return view.difference(a, b)

        view.feed = lambda lab, **_: Feed(own.needs, payload)  # this instance is fed A - B
        self.differences.append(view)
        view.on_close(lambda v: v in self.differences and self.differences.remove(v))
        try:
            self._d._wanted = replace(self._d._wanted, prompt=self.a._wanted.prompt)
            self._d.add(view)
        except Exception:
            self.differences.remove(view)
            raise
        return view

    def _b_pass(self, needs) -> Pass:
        """B's pass capturing ``needs`` (kept while B's prompt and the sites are the same)."""
        prompt, sites = self.b._wanted.prompt, frozenset(needs)
        with self._b_lock:
            kept = self._b_run
            if kept is None or kept[0] != prompt or not sites <= kept[1]:
                with self.a.lock:
                    run = self.a.model.run(prompt, capture=sorted(sites))
                kept = self._b_run = (prompt, sites, run)
        return Pass(prompt, kept[2])

    def _on_a_edit(self, change) -> None:
        if not self.differences:
            return
        state = replace(self._d._wanted, prompt=change["new"])
        if self.a._syncing:  # set from Python: now (an error shows in the difference views)
            try:
                self._d._recompute(state)
            except Exception:
                pass
        else:
            self._d._live(state)

    def _on_b_edit(self, change) -> None:
        if self.differences and not self.b._syncing:
            self._d._live(replace(self._d._wanted, reuse=True))  # A's pass is kept; B's runs

    @property
    def prompt(self) -> str:
        """Prompt B. Setting it recomputes B's views and the differences (from Python: now)."""
        return self.b.prompt

    @prompt.setter
    def prompt(self, text: str) -> None:
        self.b.prompt = text
        if self.differences:
            self._d._recompute(replace(self._d._wanted, reuse=True))

    def __repr__(self) -> str:
        return (f"Compare(A={self.a.prompt!r}, B={self.b.prompt!r}, side_by_side="
                f"{[type(a).__name__ for a, _ in self.pairs]}, difference={[type(v).__name__ for v in self.differences]})")


def _title(view_cls) -> str:
    return view_cls.class_traits()["title"].default_value


def _twin(lab: Lab, prompt: str) -> Lab:
    """A Lab for prompt B on ``lab``'s model: the same adapter, lock (one pass at a time), dictionaries and
    selection (a pick in any view of either shows in both)."""
    b = Lab(lab.model, prompt=prompt, threads=lab.threads, selection=lab.selection)
    b.lock = lab.lock
    b.saes = lab.saes          # the same dictionaries (one registry)
    b._loop = lab._loop
    return b


def _check_view_class(view_cls) -> None:
    if not (isinstance(view_cls, type) and issubclass(view_cls, View)):
        raise TypeError(f"pass a view class such as mechviz.AttentionView, not {view_cls!r}")


def _share_scale(*views: View) -> None:
    """One colour scale for ``views``: each shows the union of the ranges their own data asks for."""
    names = [n for n in SCALE_TRAITS if all(v.has_trait(n) for v in views)]
    if not names:
        return
    own = {v: {n: getattr(v, n) for n in names} for v in views}

    def share() -> None:
        for v in views:
            with v.hold_sync():
                for n in names:
                    setattr(v, n, (min if n == "vmin" else max)(o[n] for o in own.values()))

    def union(change) -> None:  # new data (seq bumped): its own range, before sharing
        own[change["owner"]] = {n: getattr(change["owner"], n) for n in names}
        share()
    for v in views:
        v.observe(union, names="seq")
    share()
