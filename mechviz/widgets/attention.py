"""Attention-pattern view: every layer and head, thumbnails + a zoomed head + a token view."""

from __future__ import annotations

import anywidget
import numpy as np
import traitlets as t

from ._esm import bundle
from .transport import ArrayTrait, pack, unpack


class AttentionView(anywidget.AnyWidget):
    """Attention patterns of one prompt, drawn on ``<canvas>`` in the browser.

    Data (set by :meth:`show`, normally by a :class:`~mechviz.Lab`):
      ``pattern``: uint8-packed ``[n_layers, n_heads, T_dst, T_src]`` attention weights;
      ``tokens``: the token strings (untrusted text, rendered with ``textContent``);
      ``prompt``/``seq``: which prompt (and which request) the data belongs to.
    Selection (linked with other views): ``layer``, ``head``, ``token`` (destination token, -1 none).
    ``error`` is shown as a banner over the last good view.

    Example
    -------
    >>> import numpy as np
    >>> v = AttentionView()
    >>> v.show(np.full((1, 2, 3, 3), 1 / 3), ["a", "b", "c"], prompt="abc")
    >>> v
    AttentionView(prompt='abc', layers=1, heads=2, tokens=3, layer=0, head=0)
    """

    _esm = bundle("attention")
    pattern = ArrayTrait()
    tokens = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    prompt = t.Unicode("").tag(sync=True)
    seq = t.Int(0).tag(sync=True)
    layer = t.Int(0).tag(sync=True)
    head = t.Int(0).tag(sync=True)
    token = t.Int(-1).tag(sync=True)
    error = t.Unicode("").tag(sync=True)
    title = t.Unicode("Attention").tag(sync=True)

    def show(self, pattern: np.ndarray, tokens: list[str], prompt: str = "", seq: int | None = None):
        """Display ``pattern`` (``[layers, heads, T, T]``, values in [0, 1]) over ``tokens``."""
        pattern = np.asarray(pattern)
        if pattern.ndim != 4 or pattern.shape[2] != pattern.shape[3] or pattern.shape[3] != len(tokens):
            raise ValueError(
                f"pattern must be [layers, heads, T, T] with T = len(tokens) = {len(tokens)}, "
                f"got shape {pattern.shape}"
            )
        n_layers, n_heads, n_tok = pattern.shape[:3]
        with self.hold_sync():
            self.pattern = pack(pattern, "uint8")
            self.tokens = list(tokens)
            self.prompt = prompt
            self.seq = self.seq + 1 if seq is None else seq
            # the selection is shared: a logit-lens row may select layer n_layers (the final
            # residual); the browser shows the nearest layer and the shared value stays as it is
            if self.token >= n_tok:
                self.token = -1
            self.error = ""

    def figure(self, layer: int | None = None, head: int | None = None):
        """A matplotlib Figure of one head (default: the selected layer and head)."""
        from ..analysis.figures import attention_figure
        if self.pattern is None:
            raise ValueError("nothing to draw yet: the view has no data")
        n_layers, n_heads = self.pattern["shape"][:2]
        layer = min(self.layer, n_layers - 1) if layer is None else layer
        head = min(self.head, n_heads - 1) if head is None else head
        return attention_figure(self.values[layer, head], self.tokens, title=f"{self.title} L{layer} H{head}")

    @property
    def values(self) -> np.ndarray | None:
        """The displayed attention as a float array ``[layers, heads, T, T]`` (quantised to 1/255)."""
        return unpack(self.pattern)

    def __repr__(self) -> str:
        shape = (self.pattern or {}).get("shape", [0, 0, 0, 0])
        return (f"AttentionView(prompt={self.prompt!r}, layers={shape[0]}, heads={shape[1]}, "
                f"tokens={len(self.tokens)}, layer={self.layer}, head={self.head})")
