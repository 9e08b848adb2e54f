"""A composite layout as one anywidget: the prompt box and views drawn inside one widget.

:meth:`mechviz.Lab.show` and :meth:`mechviz.Lab.dashboard` return a :class:`Panel`. An ipywidgets box
(``VBox``) renders only where the ``@jupyter-widgets/controls`` models exist (JupyterLab, Notebook 7,
the static export); marimo refuses it. A Panel is an anywidget whose children are sent as
``"anywidget:<model_id>"`` references and drawn with anywidget's host API (``host.getWidget(ref).render``),
which JupyterLab, Notebook 7, the html-manager of a static export and marimo all provide. The Panel
also links its views' selection traits (and the Lab's :class:`~mechviz.widgets.selection.Selection`)
in the browser, so a click in one view moves the others where ``jslink`` does not exist (marimo).
"""

from __future__ import annotations

import anywidget
import traitlets as t

from ._esm import bundle

_REF = "anywidget:"


def _ref(widget) -> str | None:
    return None if widget is None else _REF + widget.model_id


def _refs(widgets, _owner=None) -> list[str]:
    return [_ref(w) for w in widgets]


class Panel(anywidget.AnyWidget):
    """The widgets ``children`` drawn one above the other in one output; ``selection``: the Lab's
    Selection, linked in the browser to every child that carries a selection trait.

    >>> import ipywidgets
    >>> from mechviz.widgets.panel import Panel
    >>> Panel(children=[ipywidgets.Widget()]).get_state()["children"][0].startswith("anywidget:")
    True
    >>> Panel(children=["text"])
    Traceback (most recent call last):
    ...
    traitlets.traitlets.TraitError: a Panel holds widgets: children[0] is 'text' (a str); pass views, e.g. lab.show(lab.attention())
    """

    _esm = bundle("panel")
    children = t.List().tag(sync=True, to_json=_refs)
    selection = t.Any(None, allow_none=True).tag(sync=True, to_json=lambda w, _o: _ref(w))

    @t.validate("children")
    def _check_children(self, proposal):
        import ipywidgets

        value = list(proposal["value"])
        for i, w in enumerate(value):
            if not isinstance(w, ipywidgets.Widget):
                raise t.TraitError(f"a Panel holds widgets: children[{i}] is {w!r} (a {type(w).__name__}); "
                                   "pass views, e.g. lab.show(lab.attention())")
        return tuple(value)

    def __repr__(self) -> str:
        return f"Panel({', '.join(type(c).__name__ for c in self.children)})"
