"""Attention-pattern view: every layer and head, thumbnails + a zoomed head + a token view."""

from __future__ import annotations

import numpy as np
import traitlets as t

from ..analysis.attention import attention_patterns
from ..models.describe import attention_windows
from ._esm import bundle
from .base import Feed, Shown, View, ab_prompt, ab_tokens, received as received_traits
from .selection import Index
from .runner import offload
from .transport import Array, Packed, maxpool


#: each head of every layer goes to the browser max-pooled to at most THUMB x THUMB (the overview)
THUMB = 64
#: the selected layer goes at full resolution when all its heads fit in this many bytes, else only the
#: selected head (at 1,024 tokens a 12-head layer is 12.6 MB; one head 1 MB, 4 MB at 2,048)
DETAIL_BYTES = 8 << 20


class AttentionView(View):
    """Attention patterns of one prompt, drawn on ``<canvas>`` in the browser.

    Data (set by :meth:`show`, normally by a :class:`~mechviz.Lab`):
      ``pattern``: ``[n_layers, n_heads, T_dst, T_src]`` attention weights, held in Python at full
      precision (``view.data["pattern"]``);
      ``tokens``: the token strings (untrusted text, rendered with ``textContent``).
    What the browser gets is sized to what is on screen, whatever the prompt's length: ``overview``
    (uint8 ``[n_layers, n_heads, S, S]``, every head max-pooled to ``S = min(T, THUMB)``: the
    thumbnails, and what a layer shows until its detail arrives) and ``detail`` (uint8 ``[n, T, T]``,
    one byte per weight: the heads ``detail_heads`` of layer ``detail_layer`` at full resolution, the
    whole selected layer when it fits :data:`DETAIL_BYTES`, else the selected head). Picking another
    layer or head sends its detail, packed off the kernel's loop.
    Selection (linked with other views): ``layer``, ``head``, ``token`` (destination token, -1 none).
    Architecture, drawn so it is visible: ``windows`` (per layer, its sliding-window length, 0 = full
    attention; the view draws the window's edge) and ``kv_heads`` (key/value heads: with grouped-query
    attention, each group of ``heads / kv_heads`` query heads shares one).
    ``signed``: the pattern is a difference of two prompts' patterns, in [-1, 1] (see
    :class:`mechviz.Compare`), drawn on a diverging scale from ``-m`` to ``+m`` (``m``: the shown layer's largest
    ``|v|``); its bytes hold ``128 + round(127 v)`` and its thumbnails keep each bin's value furthest from 0.

    Example
    -------
    >>> import numpy as np
    >>> v = AttentionView()
    >>> v.show(np.full((1, 2, 3, 3), 1 / 3), ["a", "b", "c"], prompt="abc")
    >>> v
    AttentionView(prompt='abc', layers=1, heads=2, tokens=3, layer=0, head=0)
    >>> v.data["pattern"].shape, v.detail_layer, v.detail_heads
    ((1, 2, 3, 3), 0, [0, 1])
    """

    _esm = bundle("attention")
    pattern = Array("uint8", send=False)
    overview = Array("uint8", derived=True)
    detail = Array("uint8", derived=True)
    detail_layer = t.Int(-1).tag(sync=True)
    detail_heads = t.List(t.Int(), default_value=[]).tag(sync=True)
    tokens = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    layer = Index(0).tag(sync=True)
    head = Index(0).tag(sync=True)
    token = Index(-1).tag(sync=True)
    windows = t.List(t.Int(), default_value=[]).tag(sync=True)
    kv_heads = t.Int(0).tag(sync=True)
    signed = t.Bool(False).tag(sync=True)
    title = t.Unicode("Attention").tag(sync=True)

    @t.validate("head")
    def _valid_head(self, proposal):
        head, n = proposal["value"], None if self.pattern is None else self.pattern.shape[1]
        if head < 0 or (n is not None and head >= n):
            raise t.TraitError(f"head {head} is out of range: this view shows {n or 'no'} heads"
                               + (f" (0..{n - 1})" if n else ""))
        return head

    @t.validate("layer")
    def _valid_layer(self, proposal):  # n_layers itself is allowed: a logit-lens row selects the final residual
        layer, n = proposal["value"], None if self.pattern is None else self.pattern.shape[0]
        if layer < 0 or (n is not None and layer > n):
            raise t.TraitError(f"layer {layer} is out of range: the model has {n} layers (0..{n - 1})")
        return layer

    def feed(self, lab) -> Feed:
        sites = [f"attn_pattern.{layer}" for layer in range(lab.model.n_layers)]
        arch = {"windows": attention_windows(lab.model), "kv_heads": lab.model.n_kv_heads}
        if getattr(lab.model, "reduce_views", False):  # nnsight: uint8 patterns made inside the trace
            from ..analysis.reduced import reduced_attention

            def payload(p):
                pattern, tokens, n = reduced_attention(lab.model, p.run.tokens, edits=lab._edits(p.steering))
                return {"pattern": pattern, "tokens": tokens, "prompt": p.prompt, "received": n, **arch}
            return Feed(lambda: [], payload)
        return Feed(lambda: sites, lambda p: {"pattern": attention_patterns(p.run), "tokens": p.run.token_strs,
                                              "prompt": p.prompt, **arch})

    def prepare(self, pattern: np.ndarray, tokens: list[str], prompt: str = "", windows=None,
                kv_heads: int = 0, signed: bool = False, received: int | None = None) -> Shown:
        """Check ``pattern`` (``[layers, heads, T, T]``, values in [0, 1]) over ``tokens`` and pack what
        the browser gets; ``windows`` and ``kv_heads`` as in the class docstring (default: full
        attention, one key/value head per head)."""
        pattern = np.asarray(pattern, np.float32)
        if pattern.ndim != 4 or pattern.shape[2] != pattern.shape[3] or pattern.shape[3] != len(tokens):
            raise ValueError(
                f"pattern must be [layers, heads, T, T] with T = len(tokens) = {len(tokens)}, "
                f"got shape {pattern.shape}"
            )
        pool = _signed_pool if signed else maxpool
        overview = np.stack([pool(layer, THUMB) for layer in pattern])  # layer by layer: small temporaries
        traits = {"pattern": pattern, "overview": _packed(overview, signed), "tokens": list(tokens), "signed": bool(signed),
                  "windows": [int(w) for w in windows] if windows is not None else [0] * pattern.shape[0],
                  "kv_heads": int(kv_heads) or pattern.shape[1],
                  **_detail(pattern, self.layer, self.head, signed), **received_traits(received)}
        return Shown(traits, pattern, prompt)

    def difference(self, a: dict, b: dict) -> dict:
        """A's pattern minus B's (prompts of the same number of tokens), drawn signed."""
        (pa, ta), (pb, tb) = (a["pattern"], a["tokens"]), (b["pattern"], b["tokens"])
        if pa.shape != pb.shape:
            raise ValueError(f"the attention difference needs prompts of the same length: A has {len(ta)} tokens, "
                             f"B {len(tb)}; make them the same length (e.g. swap one word for another of one "
                             "token) or use side_by_side")
        return {**a, "pattern": np.subtract(pa, pb, dtype=np.float32), "tokens": ab_tokens(ta, tb),
                "prompt": ab_prompt(a["prompt"], b["prompt"]), "signed": True}

    def _applied(self, shown: Shown) -> None:
        # the selection is shared: a logit-lens row may select layer n_layers (the final
        # residual); the browser shows the nearest layer and the shared value stays as it is
        if self.token >= self.pattern.shape[2]:
            self.token = -1

    def apply(self, shown: Shown) -> None:
        super().apply(shown)
        self._fetch()  # the selection may have moved while the payload was prepared

    @t.observe("layer", "head")
    def _on_pick(self, change) -> None:
        # a pick in the browser is packed off the kernel's loop; one set from Python (a cell) now, so
        # that what the cell chose is in the saved state (and a static export) when the cell ends
        self._fetch(offloaded=change["name"] in getattr(self, "_property_lock", {}))

    _fetches = 0

    def _fetch(self, offloaded: bool = False) -> None:
        """Send the detail of the selected layer and head unless the browser has it."""
        pattern = self.pattern
        if pattern is None:
            return
        layer, head = _clamp(pattern, self.layer, self.head)
        if self.detail_layer == layer and head in self.detail_heads:
            return
        self._fetches += 1
        n = self._fetches

        def done(traits):
            if n == self._fetches and self.pattern is pattern:  # newest pick, same data
                with self.hold_sync():
                    for name, value in traits.items():
                        setattr(self, name, value)
        signed = self.signed
        offload(self._loop if offloaded else None, lambda: _detail(pattern, layer, head, signed), done)

    def figure(self, layer: int | None = None, head: int | None = None):
        """A matplotlib Figure of one head (default: the selected layer and head), the widget's colour scale
        (a difference: +-the layer's largest ``|A - B|``), titled with the prompt."""
        from ..analysis.figures import attention_figure

        pattern = self._need_result()
        n_layers, n_heads = pattern.shape[:2]
        layer = min(self.layer, n_layers - 1) if layer is None else layer
        head = min(self.head, n_heads - 1) if head is None else head
        scale = float(np.max(np.abs(pattern[layer]))) if self.signed else None   # the widget's: the layer's largest
        return attention_figure(pattern[layer, head], self.tokens, title=f"{self.title} L{layer} H{head}",
                                signed=self.signed, scale=scale, prompt=self.prompt)

    def __repr__(self) -> str:
        shape = (0, 0, 0, 0) if self.pattern is None else self.pattern.shape
        return (f"AttentionView(prompt={self.prompt!r}, layers={shape[0]}, heads={shape[1]}, "
                f"tokens={len(self.tokens)}, layer={self.layer}, head={self.head})")


def _clamp(pattern: np.ndarray, layer: int, head: int) -> tuple[int, int]:
    n_layers, n_heads = pattern.shape[:2]
    return max(0, min(n_layers - 1, layer)), max(0, min(n_heads - 1, head))


def _packed(x: np.ndarray, signed: bool) -> Packed:
    """uint8 on the wire: a weight as ``round(255 v)``, a difference in [-1, 1] as ``128 + round(127 v)``
    (0 exactly representable)."""
    return Packed((x * 127 + 128) / 255 if signed else x, "uint8")


def _signed_pool(a: np.ndarray, size: int) -> np.ndarray:
    """:func:`maxpool` of differences: each bin's value furthest from 0, of either sign."""
    hi, lo = maxpool(a, size), -maxpool(-a, size)
    return np.where(hi >= -lo, hi, lo)


def _detail(pattern: np.ndarray, layer: int, head: int, signed: bool = False) -> dict:
    """The ``detail`` traits for a selection: the whole layer if it fits :data:`DETAIL_BYTES`, else the head."""
    layer, head = _clamp(pattern, layer, head)
    n_heads, T = pattern.shape[1], pattern.shape[2]
    heads = list(range(n_heads)) if n_heads * T * T <= DETAIL_BYTES else [head]
    return {"detail": _packed(pattern[layer, heads], signed), "detail_layer": layer, "detail_heads": heads}
