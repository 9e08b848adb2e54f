"""The tour notebook runs top to bottom on a fresh kernel and saves renderable widget state."""

from __future__ import annotations

import base64
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


def test_tour_executes_and_saves_binary_widget_state(tmp_path):
    nb = nbformat.read(ROOT / "notebooks" / "tour.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", store_widget_state=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    # no stray progress bars ("Loading weights ...") or warnings in what a reader of the notebook sees
    stderr = [o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.output_type == "stream" and o.get("name") == "stderr"]
    assert not stderr, stderr
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    views = [m for m in state.values() if m["state"].get("_anywidget_id") == "mechviz.widgets.attention.AttentionView"]
    assert views, "no AttentionView in the saved widget state"
    for m in views:
        s = m["state"]
        (buf,) = [b for b in m.get("buffers", []) if b["path"] == ["detail", "data"]]
        n_heads, T, T2 = s["detail"]["shape"]
        assert T == T2 == len(s["tokens"]) and len(base64.b64decode(buf["data"])) == n_heads * T * T
        assert s["detail_layer"] == s["layer"] and s["overview"]["shape"][:2] == [len(s["windows"]), n_heads]
        assert s["prompt"]
    grids = [m["state"] for m in state.values()
             if m["state"].get("_anywidget_id") == "mechviz.widgets.patching.PatchGridView"]
    assert len(grids) == 2 and all(g["status"] == "done" and g["done"] == g["total"] > 0 for g in grids)
    # every widget output cell refers to a model whose state was saved
    shown = [o["data"]["application/vnd.jupyter.widget-view+json"]["model_id"] for c in nb.cells
             if c.cell_type == "code" for o in c.get("outputs", []) if "data" in o
             and "application/vnd.jupyter.widget-view+json" in o["data"]]
    assert shown and all(mid in state for mid in shown)
    # the selection the tour sets from Python (the induction head it finds) is what the saved state shows
    sel = [m["state"] for m in state.values() if {"layer", "head", "token", "feature"} <= set(m["state"])
           and "_anywidget_id" not in m["state"]]
    assert len(sel) == 3 and all((s["layer"], s["head"]) == (2, 0) for s in sel)   # the tour's, compare's, graph's
    # Run All leaves each view on the prompt its cell describes: the main Lab's views stay on the repeated text
    fox = "The quick brown fox jumps over the lazy dog near the river bank."
    lab_views = [m["state"] for m in state.values() if m["state"].get("_anywidget_id", "").rsplit(".", 1)[-1]
                 in ("LogitLensView", "FeatureView", "HeadGridView") and m["state"].get("prompt", "").startswith(fox)]
    assert len(lab_views) >= 3
    at = sorted(((m["state"]["layer"], m["state"]["head"]), m["state"]["prompt"]) for m in views)
    # every attention view follows the selection (2, 0), but the snapshot of cell 4: layer 1 head 0, its prompt
    assert [a for a in at if a[0] != (2, 0)] == [((1, 0), "The cat sat on the mat. The cat sat on the")], at
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "best induction head: layer 2 head 0" in printed
    # many dictionaries, the dashboard, steered text and a difference of two prompts, as saved
    assert "['resid_post.1', 'resid_post.0', 'resid_post.2', 'resid_post.3']" in printed
    kind = lambda name: [m["state"] for m in state.values() if m["state"].get("_anywidget_id") == name]  # noqa: E731
    (dash,) = kind("mechviz.widgets.dashboard.DashboardView")
    assert dash["status"] == "ready" and dash["feature"] >= 0 and dash["dictionary"] == "resid_post.1"
    assert dash["features"]["shape"][0] >= 1 and "FeatureDashboard(feature" in printed and "Hits(activation on ' the'" in printed
    (steer,) = kind("mechviz.widgets.generation.SteeringView")
    assert not steer["busy"] and len(steer["steered_strs"]) == len(steer["base_strs"]) == 12
    assert sum(m["signed"] for m in (v["state"] for v in views)) == 1     # the A - B attention view
    # the attribution graph: computed, pruned within its budget, saved as binary tables; the ablation printed
    (graph,) = kind("mechviz.widgets.graph.GraphView")
    n_nodes = graph["node_kind"]["shape"][0]
    assert graph["status"] == "ready" and 0 < n_nodes <= 400 and graph["edge_weight"]["dtype"] == "float16"
    assert graph["edge_src"]["shape"] == graph["edge_weight"]["shape"] and graph["tokens"][-1] == " world"
    assert "ablated, frozen:" in printed and "Graph(11 tokens" in printed
