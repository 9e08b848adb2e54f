"""SAE feature view: tokens x top features heatmap, per-feature output effects, and steering."""

from __future__ import annotations

import anywidget
import numpy as np
import traitlets as t

from ._esm import bundle
from .transport import ArrayTrait, pack, pack_strings, unpack


class FeatureView(anywidget.AnyWidget):
    """SAE features of the prompt.

    Arrays (binary): ``acts`` float16 ``[T, F]`` activations of the prompt's top ``F`` features
    ``features`` (int32 ids); for each of them ``effect_idx`` int32 ``[F, 2, k]`` (row 0: the output
    tokens its decoder direction promotes most, row 1: suppresses most; indexes ``strings``) and
    ``effect_val`` ``[F, 2, k]``; ``next_idx``/``next_prob`` ``[2, k]``: the next-token distribution at
    the last position without (row 0) and with (row 1) steering.
    Selection (linked): ``feature`` (an SAE feature id, -1 none), ``token``.

    Steering is one request: the browser's controls (or Python) set ``steer_request`` to
    ``{"feature": int, "value": float, "mode": "clamp" | "scale", "id": int}`` (clamp the feature to
    ``value``, or scale it by ``value``) or ``{"feature": None, "id": int}`` (steering off); ``id``
    grows with every request, so a repeated request is still a change. The Lab answers with
    ``steered``, the steering actually applied (``{"feature", "value", "mode"}``, or ``None``: off;
    unchanged, with ``error`` set, when it refuses a request), recomputes every view with the
    steered model and labels the data in ``steering``.
    """

    _esm = bundle("features")
    tokens = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    strings = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    features = ArrayTrait()
    acts = ArrayTrait()
    vmax = t.Float(1.0).tag(sync=True)
    effect_idx = ArrayTrait()
    effect_val = ArrayTrait()
    next_idx = ArrayTrait()
    next_prob = ArrayTrait()
    sae_label = t.Unicode("").tag(sync=True)
    steer_request = t.Dict(default_value=None, allow_none=True).tag(sync=True)
    steered = t.Dict(default_value=None, allow_none=True).tag(sync=True)
    steering = t.Unicode("").tag(sync=True)
    prompt = t.Unicode("").tag(sync=True)
    seq = t.Int(0).tag(sync=True)
    feature = t.Int(-1).tag(sync=True)
    token = t.Int(-1).tag(sync=True)
    error = t.Unicode("").tag(sync=True)
    title = t.Unicode("SAE features").tag(sync=True)

    data: dict | None = None

    def show(self, tokens, features, acts, effect_ids, effect_strs, effect_val, next_strs, next_prob,
             prompt: str = "", sae_label: str = "", steering: str = "", seq: int | None = None):
        """Display feature data (arrays as described in the class docstring; ``*_strs`` are the
        token texts of the ids, same shapes)."""
        acts = np.asarray(acts, np.float32)
        strings, idx = pack_strings(np.concatenate([np.asarray(effect_strs, object).reshape(-1),
                                                    np.asarray(next_strs, object).reshape(-1)]))
        flat = unpack(idx)
        n_eff = int(np.prod(np.shape(effect_strs)))
        self.data = {"tokens": list(tokens), "features": np.asarray(features), "acts": acts,
                     "effect_ids": np.asarray(effect_ids), "effect_strs": np.asarray(effect_strs, object),
                     "effect_val": np.asarray(effect_val), "next_strs": np.asarray(next_strs, object),
                     "next_prob": np.asarray(next_prob)}
        with self.hold_sync():
            self.tokens, self.strings = list(tokens), strings
            self.features = pack(np.asarray(features, np.int32), "int32")
            self.acts = pack(acts, "float16")
            self.vmax = float(np.nanmax(acts)) if acts.size and np.nanmax(acts) > 0 else 1.0
            self.effect_idx = pack(flat[:n_eff].reshape(np.shape(effect_strs)), "int32")
            self.effect_val = pack(effect_val, "float16")
            self.next_idx = pack(flat[n_eff:].reshape(np.shape(next_strs)), "int32")
            self.next_prob = pack(next_prob, "float16")
            self.sae_label, self.steering, self.prompt = sae_label, steering, prompt
            self.seq = self.seq + 1 if seq is None else seq
            self.error = ""

    @property
    def values(self) -> dict | None:
        """The displayed data as numpy arrays (``acts`` [T, F], ``features`` [F], effects, next tokens)."""
        return self.data

    def figure(self):
        """A matplotlib Figure: the tokens x features heatmap."""
        from ..analysis.figures import feature_heatmap_figure
        if self.data is None:
            raise ValueError("nothing to draw yet: the view has no data")
        F = len(self.data["features"])
        return feature_heatmap_figure(self.data["acts"], np.arange(F), self.data["tokens"],
                                      labels=self.data["features"])

    def __repr__(self) -> str:
        shape = (self.acts or {}).get("shape", [0, 0])
        return (f"FeatureView(prompt={self.prompt!r}, tokens={shape[0]}, features={shape[1]}, "
                f"feature={self.feature}, steering={self.steering or 'off'!r})")
