"""A static export fits its size budget: the largest views' saved data are trimmed, each saying so."""

from __future__ import annotations

import base64

import nbformat
import numpy as np
from ipywidgets import Widget

from mechviz import AttentionView
from mechviz.export import DEFAULT_BUDGET
from mechviz.export_budget import STATE_MIME, fit_budget


def _pattern(L=2, H=4, T=100, seed=0):
    logits = np.random.default_rng(seed).normal(size=(L, H, T, T)).astype(np.float32)
    logits[..., np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] = -np.inf
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _saved(*views):
    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {STATE_MIME: Widget.get_manager_state(widgets=list(views))}
    return nb, nb.metadata["widgets"][STATE_MIME]["state"]


def _buffer(model, name):
    (b,) = [b for b in model["buffers"] if b["path"] == [name, "data"]]
    return np.frombuffer(base64.b64decode(b["data"]), np.uint8)


def test_attention_is_trimmed_to_the_selected_head_then_to_its_overview():
    pattern = _pattern()
    view = AttentionView(layer=1, head=2)
    view.show(pattern, [f"t{i}" for i in range(100)], prompt="p")
    assert view.detail_heads == [0, 1, 2, 3]
    nb, state = _saved(view)
    (m,) = [m for m in state.values() if m["state"].get("_mv_kind") == "AttentionView"]
    before = len(_buffer(m, "detail"))
    assert before == 4 * 100 * 100

    fits = fit_budget(nb, page_bytes=1_000_000, budget=2_000_000)   # under budget: untouched
    assert fits.notes == [] and fits.fits and len(_buffer(m, "detail")) == before

    report = fit_budget(nb, page_bytes=1_000_000, budget=1_000_000 - 1000)
    assert report.fits and len(report.notes) == 1 and "layer 1 head 2 at full resolution" in report.notes[0]
    assert m["state"]["detail_heads"] == [2] and m["state"]["detail"]["shape"] == [1, 100, 100]
    kept = _buffer(m, "detail").reshape(100, 100)
    np.testing.assert_array_equal(kept, np.rint(pattern[1, 2] * 255).astype(np.uint8))  # the selected head
    assert m["state"]["note"] == report.notes[0]
    assert report.after == 1_000_000 - (len(base64.b64encode(bytes(before))) - len(base64.b64encode(kept.tobytes())))

    tiny = fit_budget(nb, page_bytes=1_000_000, budget=10)  # nothing fits: no detail at all, the overview stays
    assert not tiny.fits and "overview's 64x64" in m["state"]["note"] and m["state"]["detail_layer"] == -1
    assert [b["path"] for b in m["buffers"]] == [["overview", "data"]]
    assert "still over" in str(tiny)


def test_largest_view_is_trimmed_first_and_other_widgets_are_left_alone():
    small, big = AttentionView(), AttentionView()
    small.show(_pattern(T=20), [f"t{i}" for i in range(20)])
    big.show(_pattern(T=120, seed=1), [f"t{i}" for i in range(120)])
    nb, state = _saved(small, big)
    report = fit_budget(nb, page_bytes=500_000, budget=500_000 - 10_000)
    notes = [m["state"].get("note", "") for m in state.values() if m["state"].get("_mv_kind") == "AttentionView"]
    assert len(report.notes) == 1 and sorted(map(bool, notes)) == [False, True]
    big_state = next(m["state"] for m in state.values() if m["state"].get("tokens") == [f"t{i}" for i in range(120)])
    assert big_state["note"] and big_state["detail_heads"] == [0]


def test_default_budget_is_25_mb():
    assert DEFAULT_BUDGET == 25_000_000
