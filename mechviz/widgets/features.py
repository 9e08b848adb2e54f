"""SAE feature view: tokens x top features heatmap, per-feature output effects, and steering."""

from __future__ import annotations

import numpy as np
import traitlets as t

from ..analysis.features import FeatureSummary, encode, feature_summary, needs as features_needs
from ..analysis.checks import positive_int
from ._esm import bundle
from .base import Feed, Shown, View
from .selection import Index
from .transport import Array, Packed, string_table


class FeatureView(View):
    """SAE features of the prompt.

    Arrays (binary): ``acts`` float16 ``[T, F]`` activations of the prompt's top ``F`` features
    ``features`` (int32 ids); for each of them ``effect_idx`` int32 ``[F, 2, k]`` (row 0: the output
    tokens its decoder direction promotes most, row 1: suppresses most; indexes ``strings``) and
    ``effect_val`` ``[F, 2, k]``; ``next_idx``/``next_prob`` ``[2, k]``: the next-token distribution at
    the last position without (row 0) and with (row 1) steering.
    ``recon_error`` float16 ``[T]``: the dictionary's relative reconstruction error at each token.
    Selection (linked): ``feature`` (an SAE feature id, -1 none) of ``dictionary`` (a name among the
    Lab's ``dictionaries``, which the view offers as a menu), ``token``.
    Steering is one request: the browser sets ``steer_request`` to ``{"feature": id, "value": v,
    "mode": "clamp" | "scale", "id": n}`` (``"feature": None`` turns it off; ``id`` counts requests).
    The Lab recomputes every view with the steered model and reports what is applied in ``steered``
    (``{"feature", "value", "mode"}`` or None) and ``steering`` (its label); a rejected request
    leaves the applied steering as it was and says why in ``error``.
    ``view.result`` is the :class:`~mechviz.analysis.features.FeatureSummary` shown.
    """

    _esm = bundle("features")
    tokens = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    strings = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    features = Array("int32")
    acts = Array("float16")
    vmax = t.Float(1.0).tag(sync=True)
    effect_idx = Array("int32")
    effect_val = Array("float16")
    next_idx = Array("int32")
    next_prob = Array("float16")
    sae_label = t.Unicode("").tag(sync=True)
    recon_error = Array("float16")
    dictionaries = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    dictionary = t.Unicode("").tag(sync=True)
    steer_request = t.Dict(default_value=None, allow_none=True).tag(sync=True)
    steered = t.Dict(default_value=None, allow_none=True).tag(sync=True)
    steering = t.Unicode("").tag(sync=True)
    feature = Index(-1).tag(sync=True)
    token = Index(-1).tag(sync=True)
    title = t.Unicode("SAE features").tag(sync=True)

    result: FeatureSummary | None = None

    def feed(self, lab, n: int = 12, k: int = 8) -> Feed:
        if lab.sae is None:
            raise ValueError("the feature view needs an SAE: Lab(..., sae=...) or lab.add_sae(...)")
        n, k = positive_int(n, "n"), positive_int(k, "k")
        effects: dict = {}   # logit effects by (feature, k), for the SAE they were computed for

        def payload(p):
            name = lab.saes.resolve(lab.selection.dictionary)   # the dictionary shown now
            sae, steering = lab.saes[name], p.steering
            if effects.get("sae") is not sae:
                effects.clear()
                effects["sae"] = sae
            mine = steering is not None and steering.dictionary in ("", name)
            extra = [lab.selection.feature] + ([steering.feature] if mine else [])
            encoded = p.cached(("encode", id(sae)), lambda: encode(sae, p.run))   # shared with the dashboard
            summary = feature_summary(sae, lab.model, p.run, p.base, n=n, k=k, extra=extra, encoded=encoded,
                                      steering=str(steering) if steering is not None else "", effects=effects)
            return {"summary": summary, "prompt": p.prompt, "dictionaries": list(lab.saes),
                    "steered": None if steering is None else steering.to_json()}
        return Feed(lambda: features_needs(lab.sae), payload)

    def prepare(self, summary: FeatureSummary, prompt: str = "", steered: dict | None = None,
                dictionaries=None) -> Shown:
        """Pack a :class:`~mechviz.analysis.features.FeatureSummary` for display (``dictionaries``: the
        names the menu offers)."""
        s = summary
        n_eff = s.effect_strs.size
        strings, flat = string_table(np.concatenate([s.effect_strs.reshape(-1), s.next_strs.reshape(-1)]))
        top = float(np.nanmax(s.acts)) if s.acts.size else 0.0
        traits = {"tokens": list(s.tokens), "strings": strings, "features": Packed(s.features, "int32"),
                  "acts": Packed(s.acts, "float16"), "vmax": top if top > 0 else 1.0,
                  "effect_idx": Packed(flat[:n_eff].reshape(s.effect_strs.shape), "int32"),
                  "effect_val": Packed(s.effect_val, "float16"),
                  "next_idx": Packed(flat[n_eff:].reshape(s.next_strs.shape), "int32"),
                  "next_prob": Packed(s.next_prob, "float16"),
                  "sae_label": s.sae_label, "steering": s.steering, "steered": steered,
                  "recon_error": Packed(s.recon_error, "float16"),
                  "dictionaries": list(dictionaries) if dictionaries is not None else list(self.dictionaries)}
        return Shown(traits, s, prompt)

    def follows(self, name: str, value) -> bool:
        shown = getattr(self.result, "features", None)
        return name == "feature" and shown is not None and value >= 0 and value not in shown

    def figure(self):
        """A matplotlib Figure: the features x tokens heatmap as the widget draws it (rows in its order, white
        .. dark orange up to its ``vmax``, the selected feature's row outlined, the prompt in the title)."""
        from ..analysis.figures import feature_heatmap_figure

        s = self._need_result()
        rows = np.flatnonzero(np.asarray(s.features) == self.feature)
        return feature_heatmap_figure(s.acts, np.arange(len(s.features)), s.tokens, labels=s.features, vmax=self.vmax,
                                      prompt=self.prompt, selected=int(rows[0]) if rows.size else -1,
                                      what=f"{self.title} ({self.sae_label})" if self.sae_label else self.title)

    def __repr__(self) -> str:
        shape = (0, 0) if self.acts is None else self.acts.shape
        return (f"FeatureView(prompt={self.prompt!r}, tokens={shape[0]}, features={shape[1]}, "
                f"feature={self.feature}, steering={self.steering or 'off'!r})")
