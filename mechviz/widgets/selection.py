"""The shared selection: one small widget model per Lab that every view's selection traits follow.

Two halves keep it one truth:

* in the browser, each view trait is ``jslink``-ed to the selection, so a click in one view focuses
  the others across cells, and in a static export with no kernel;
* in the kernel, a value set from Python (``attn.layer = 2`` or ``lab.selection.head = 1``), before
  or after display, is copied to the selection and every linked view, so the saved widget state (and
  with it the export) shows it too. Changes that come from the browser are left to the jslinks,
  which also send each model's new value back to the kernel.
"""

from __future__ import annotations

import ipywidgets
import numpy as np
import traitlets as t

#: the selection traits a view may carry; each is linked to the Lab's Selection when present
SELECTION_TRAITS = ("layer", "head", "token", "feature", "dictionary")


class Index(t.Int):
    """An int trait that refuses bools and floats (traitlets' Int takes ``True`` as 1 and ``2.0`` as 2):
    a selection is a whole-number index, never rounded.

    >>> class V(t.HasTraits):
    ...     head = Index(0)
    >>> V(head=True)
    Traceback (most recent call last):
    ...
    traitlets.traitlets.TraitError: head must be a whole number (an int), got True: pass an int, e.g. head=1
    """

    def validate(self, obj, value):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise t.TraitError(f"{self.name} must be a whole number (an int), got {value!r}: pass an int, "
                               f"e.g. {self.name}=1")
        return super().validate(obj, int(value))


class Selection(ipywidgets.Widget):
    """The selected layer, head, token (-1: none), and SAE feature (-1: none) of dictionary ``dictionary``
    (a name in the Lab's ``saes``; "": the first)."""

    # a plain @jupyter-widgets/base WidgetModel: no view of its own, understood by every front end
    layer = Index(0).tag(sync=True)
    head = Index(0).tag(sync=True)
    token = Index(-1).tag(sync=True)
    feature = Index(-1).tag(sync=True)
    dictionary = t.Unicode("").tag(sync=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._views: list = []
        self.observe(self._from_python, names=list(SELECTION_TRAITS))

    def link(self, view) -> "Link":
        """Make ``view``'s selection traits follow this selection (it starts at the current values)."""
        names = [n for n in SELECTION_TRAITS if view.has_trait(n)]
        for name in names:
            setattr(view, name, getattr(self, name))
        links = [ipywidgets.jslink((self, name), (view, name)) for name in names]
        if names:  # (observe with no names would observe every trait)
            view.observe(self._from_python, names=names)
        self._views.append(view)
        return Link(self, view, names, links)

    def _unlink(self, view, names) -> None:
        if names:
            view.unobserve(self._from_python, names=names)
        self._views = [v for v in self._views if v is not view]

    def _from_python(self, change) -> None:
        owner, name, value = change["owner"], change["name"], change["new"]
        if name in getattr(owner, "_property_lock", {}):  # from the browser: its jslinks do the rest
            return
        for w in [self, *self._views]:
            if w.has_trait(name) and getattr(w, name) != value:
                setattr(w, name, value)

    def __repr__(self) -> str:
        d = f", dictionary={self.dictionary!r}" if self.dictionary else ""
        return f"Selection(layer={self.layer}, head={self.head}, token={self.token}, feature={self.feature}{d})"


class Link:
    """One view's link to a :class:`Selection` (its browser-side ``jslink`` models and its kernel-side
    observers); :meth:`unlink` ends both."""

    def __init__(self, selection: Selection, view, names: list[str], links: list):
        self.selection, self.view, self.names, self.links = selection, view, names, links

    def unlink(self) -> None:
        for link in self.links:
            link.close()
        self.links = []
        self.selection._unlink(self.view, self.names)

    def __repr__(self) -> str:
        return f"Link({type(self.view).__name__}: {', '.join(self.names)})"
