"""Steering: clamp or scale one SAE feature in every forward pass a Lab runs.

A :class:`Steering` is a small immutable value, checked against the SAE when it is made (a bad
feature id or a non-finite value is an error, never coerced), that turns into the edit the model
adapter applies at the SAE's site (:func:`mechviz.analysis.steering_edit`).

>>> import torch
>>> from mechviz.saes import SAE
>>> sae = SAE(W_enc=torch.zeros(4, 8), b_enc=torch.zeros(8), W_dec=torch.zeros(8, 4), b_dec=torch.zeros(4),
...           site="resid_post.0")
>>> str(Steering.checked(3, 20.0, "clamp", sae))
'feature 3 clamped to 20'
>>> Steering.checked(3.7, 20.0, "clamp", sae)
Traceback (most recent call last):
...
ValueError: the feature to steer must be a whole-number id, got 3.7
>>> Steering.checked(3, 1e308, "clamp", sae)       # finite, but inf in float32: refused, not cast
Traceback (most recent call last):
...
ValueError: the steering value 1e+308 is too large: the model's numbers hold at most 3.4e+38 (float32); use a value of the size of the feature's activations
>>> Steering.from_request({"feature": None, "id": 4}, sae) is None        # the browser's "off"
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MODES = ("clamp", "scale")
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Steering:
    """Clamp SAE ``feature`` to ``value`` (mode "clamp") or multiply it by ``value`` (mode "scale")."""

    feature: int
    value: float
    mode: str = "clamp"
    dictionary: str = ""   # the name of the Lab's dictionary the feature belongs to ("": the only one)

    @classmethod
    def checked(cls, feature, value, mode: str, sae, dictionary: str = "") -> "Steering":
        """A Steering of ``sae`` (named ``dictionary`` in its Lab) after checking every argument (clear
        ValueErrors)."""
        if sae is None:
            raise ValueError("steering needs an SAE: Lab(..., sae=...) or lab.add_sae(...)")
        if sae.is_transcoder:
            raise ValueError(f"{dictionary or 'this dictionary'} is a {sae.kind}: steering clamps an SAE feature at one "
                             "site; pick an SAE in the feature view's menu (or steer(..., dictionary=...))")
        if isinstance(feature, bool) or not isinstance(feature, (int, np.integer)):
            if isinstance(feature, (float, np.floating)) and float(feature).is_integer():
                feature = int(feature)
            else:
                raise ValueError(f"the feature to steer must be a whole-number id, got {feature!r}")
        if not 0 <= int(feature) < sae.d_sae:
            raise ValueError(f"feature {feature} out of range: the SAE has {sae.d_sae} features (0..{sae.d_sae - 1}); "
                             "steer(None) turns steering off")
        if mode not in MODES:
            raise ValueError(f"mode must be 'clamp' or 'scale', got {mode!r}")
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"the steering value must be a number, got {value!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"the steering value must be finite, got {value!r}")
        if abs(value) > _FLOAT32_MAX:  # it would become inf in the model's numbers (with a RuntimeWarning)
            raise ValueError(f"the steering value {value:g} is too large: the model's numbers hold at most "
                             f"{_FLOAT32_MAX:.3g} (float32); use a value of the size of the feature's activations")
        return cls(int(feature), value, mode, dictionary)

    @classmethod
    def from_request(cls, request: dict | None, sae, dictionary: str = "") -> "Steering | None":
        """The steering a browser request asks for: ``{"feature": id, "value": v, "mode": m}``;
        ``{"feature": None}`` (or no request) means off."""
        if not request or request.get("feature") is None:
            return None
        return cls.checked(request["feature"], request.get("value"), request.get("mode", "clamp"), sae, dictionary)

    def edits(self, sae) -> dict:
        """``{site: edit}`` for :meth:`mechviz.models.ModelAdapter.run`."""
        from .analysis.features import steering_edit

        clamp = self.mode == "clamp"
        edit = steering_edit(sae, self.feature, value=self.value if clamp else None,
                             scale=None if clamp else self.value)
        return {sae.site: edit}

    def to_json(self) -> dict:
        return {"feature": self.feature, "value": self.value, "mode": self.mode, "dictionary": self.dictionary}

    def __str__(self) -> str:
        of = f" of {self.dictionary}" if self.dictionary else ""
        return f"feature {self.feature}{of} {'clamped to' if self.mode == 'clamp' else 'scaled by'} {self.value:g}"
