"""Fit a static export into a size budget: trim the largest views' saved state, and say so in the page.

An executed notebook keeps every widget's state (binary arrays as base64) in its metadata; that is
what a static page renders from. When the page would exceed its budget, the views whose saved data
can be made smaller are trimmed, largest first, one step at a time, and each trimmed view gets a
visible ``note`` saying what the page holds. An attention view is trimmed in two steps: its detail
keeps only the selected head (it may hold the selected layer's every head), then no detail at all
(the page then draws every head from the 64x64 overview). Views mechviz cannot trim are left as
they are; if the page still does not fit, :func:`fit_budget` says so (the page is written anyway).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import numpy as np

STATE_MIME = "application/vnd.jupyter.widget-state+json"


@dataclass
class _Model:
    """One saved widget model: its JSON ``state`` and binary ``buffers`` (decoded), by trait path."""

    raw: dict

    @property
    def state(self) -> dict:
        return self.raw["state"]

    def buffer(self, name: str) -> bytes | None:
        for b in self.raw.get("buffers", []):
            if b["path"] == [name, "data"]:
                return base64.b64decode(b["data"])
        return None

    def set_array(self, name: str, arr: np.ndarray | None) -> None:
        """Replace the saved array ``name`` (uint8; None removes it)."""
        self.raw["buffers"] = [b for b in self.raw.get("buffers", []) if b["path"] != [name, "data"]]
        if arr is None:
            self.state[name] = None
            return
        arr = np.ascontiguousarray(arr, np.uint8)
        self.state[name] = {**self.state[name], "shape": [int(s) for s in arr.shape]}
        self.raw["buffers"].append({"path": [name, "data"], "encoding": "base64",
                                    "data": base64.b64encode(arr.tobytes()).decode("ascii")})

    @property
    def saved_bytes(self) -> int:
        """Characters this model's buffers take in the page (base64)."""
        return sum(len(b["data"]) for b in self.raw.get("buffers", []))


def _trim_attention(m: _Model) -> str | None:
    """One step smaller, or None when nothing is left to trim. Returns the note for the page."""
    s = m.state
    heads, layer, head = list(s.get("detail_heads") or []), s.get("detail_layer", -1), s.get("head", 0)
    detail = m.buffer("detail")
    if detail is None or layer < 0:
        return None
    n, T = len(heads), len(s.get("tokens") or [])
    overview = (s.get("overview") or {}).get("shape", [0, 0, 0, 0])[-1]
    if n > 1 and head in heads:
        one = np.frombuffer(detail, np.uint8).reshape(n, T, T)[heads.index(head)]
        m.set_array("detail", one[None])
        s["detail_heads"] = [head]
        return (f"This page holds layer {layer} head {head} at full resolution; every other head at the "
                f"overview's {overview}x{overview} (the export's size budget).")
    m.set_array("detail", None)
    s["detail_heads"], s["detail_layer"] = [], -1
    return (f"This page holds every head at the overview's {overview}x{overview} resolution, not the full "
            f"{T}x{T} (the export's size budget).")


#: how each view class is trimmed (by the ``_mv_kind`` trait every mechviz view saves)
TRIMMERS = {"AttentionView": _trim_attention}


@dataclass
class BudgetReport:
    """What :func:`fit_budget` did: the page's size before and after (bytes, estimated from the
    base64 it removed), the budget, and the notes it added (one per trimmed view)."""

    before: int
    after: int
    budget: int
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.after <= self.budget

    def __str__(self) -> str:
        mb = 1e6
        head = f"page {self.before / mb:.1f} MB, budget {self.budget / mb:.0f} MB"
        if not self.notes:
            return head + (": fits" if self.fits else ": over, and no view can be trimmed")
        return (f"{head}: trimmed {len(self.notes)} view(s) to {self.after / mb:.1f} MB"
                + ("" if self.fits else " (still over: the other views' data cannot be trimmed)"))


def fit_budget(nb, page_bytes: int, budget: int) -> BudgetReport:
    """Trim the widget state saved in ``nb`` (in place) until a page of ``page_bytes`` fits
    ``budget`` bytes, or nothing is left to trim. Largest views first."""
    report = BudgetReport(page_bytes, page_bytes, budget)
    saved = nb.metadata.get("widgets", {}).get(STATE_MIME, {}).get("state", {})
    models = [_Model(raw) for raw in saved.values() if raw.get("state", {}).get("_mv_kind") in TRIMMERS]
    done: set[int] = set()
    while report.after > budget:
        left = [m for m in models if id(m) not in done]
        if not left:
            break
        m = max(left, key=lambda x: x.saved_bytes)
        size = m.saved_bytes
        note = TRIMMERS[m.state["_mv_kind"]](m)
        if note is None:
            done.add(id(m))
            continue
        m.state["note"] = note
        report.after -= size - m.saved_bytes
        report.notes.append(note)
    return report
