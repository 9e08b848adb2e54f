"""A Lab's dictionaries: its SAEs (and transcoders), by name.

A Lab holds any number of dictionaries, one per site in the usual case (an SAE per layer). Each has a name
(by default its site, e.g. ``"resid_post.1"``); the shared selection carries which one is shown
(``lab.selection.dictionary``) together with the feature (``lab.selection.feature``), so a feature picked
anywhere means (dictionary, feature). The feature view's menu switches dictionary; steering records the
dictionary it steers.

>>> import torch
>>> from mechviz.saes import SAE
>>> d = Dictionaries()
>>> sae = SAE(W_enc=torch.zeros(4, 8), b_enc=torch.zeros(8), W_dec=torch.zeros(8, 4), b_dec=torch.zeros(4),
...           site="resid_post.0")
>>> d.add(sae)
'resid_post.0'
>>> d["resid_post.0"] is sae, list(d)
(True, ['resid_post.0'])
>>> d["resid_post.9"]
Traceback (most recent call last):
...
KeyError: "no dictionary named 'resid_post.9' (did you mean 'resid_post.0'?): this Lab has 'resid_post.0' (lab.add_sae(..., name=...) adds one)"
"""

from __future__ import annotations

import difflib
from typing import Iterator

from .saes.sae import SAE


def default_name(sae: SAE) -> str:
    """A dictionary's default name: its site (a transcoder's: ``"<input site> -> <output site>"``)."""
    out = getattr(sae, "site_out", None)
    return f"{sae.site} -> {out}" if out and out != sae.site else sae.site


class Dictionaries:
    """Named dictionaries, in the order added (the first is the default one shown)."""

    def __init__(self):
        self._by_name: dict[str, SAE] = {}

    def add(self, sae: SAE, name: str | None = None) -> str:
        """Add (or, under a name already used, replace) ``sae``; returns its name."""
        name = default_name(sae) if name is None else str(name)
        if not name:
            raise ValueError("a dictionary's name must not be empty")
        self._by_name[name] = sae
        return name

    def __getitem__(self, name: str) -> SAE:
        try:
            return self._by_name[name]
        except KeyError:
            names = list(self._by_name)
            close = difflib.get_close_matches(str(name), names, n=1)
            have = ", ".join(map(repr, names)) or "none"
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise KeyError(f"no dictionary named {name!r}{hint}: this Lab has {have} "
                           "(lab.add_sae(..., name=...) adds one)") from None

    def resolve(self, name: str) -> str:
        """``name``, or the first dictionary's name when ``name`` is "" (none chosen yet); "" when empty."""
        if name:
            self[name]   # a clear KeyError for a name the Lab does not have
            return name
        return next(iter(self._by_name), "")

    def get(self, name: str, default=None):
        return self._by_name.get(name, default)

    def __contains__(self, name) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def items(self):
        return self._by_name.items()

    def __repr__(self) -> str:
        return "Dictionaries(" + ", ".join(f"{n!r}: {s!r}" for n, s in self._by_name.items()) + ")"
