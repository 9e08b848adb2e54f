"""The shared selection: one small widget model per Lab that every view's selection traits are
linked to in the browser (``jslink``), so a click in one view focuses the others, across cells,
and in a static export with no kernel."""

from __future__ import annotations

import ipywidgets
import traitlets as t

#: the selection traits a view may carry; each is linked to the Lab's Selection when present
SELECTION_TRAITS = ("layer", "head", "token", "feature")


class Selection(ipywidgets.Widget):
    """The selected layer, head, token (-1: none) and SAE feature (-1: none)."""

    # a plain @jupyter-widgets/base WidgetModel: no view of its own, understood by every front end
    layer = t.Int(0).tag(sync=True)
    head = t.Int(0).tag(sync=True)
    token = t.Int(-1).tag(sync=True)
    feature = t.Int(-1).tag(sync=True)

    def link(self, view) -> list:
        """Link every selection trait ``view`` has to this selection, in the browser."""
        links = []
        for name in SELECTION_TRAITS:
            if view.has_trait(name):
                setattr(view, name, getattr(self, name))
                links.append(ipywidgets.jslink((self, name), (view, name)))
        return links

    def __repr__(self) -> str:
        return f"Selection(layer={self.layer}, head={self.head}, token={self.token}, feature={self.feature})"
