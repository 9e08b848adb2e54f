"""Bytes a GraphView sends (the pruned subgraph within its node / edge budget, default thresholds) against the
dense adjacency of the same attribution graph, on the bundled model and its transcoders, at several prompt
lengths. Also the widget state as saved (binary buffers + JSON, less the JS bundle), from the widget itself.

    python bench/graph_view_bytes.py [--tokens 16 64 128] [--max-features N]

Without ``--max-features`` every active feature is a node: 128 tokens take ~20 minutes on 2 cores and
several GB (the dense graph is held in float64).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from ipywidgets.widgets.widget import _remove_buffers

import mechviz
from mechviz.widgets import GraphView

TEXT = ("When Mary and John went to the store, John gave a drink to Mary. The cat sat on the mat and looked at "
        "the birds outside the window while the rain kept falling on the old roof of the house by the river. ") * 8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[16, 64, 128])
    ap.add_argument("--max-features", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    lab = mechviz.Lab.default(sae="all", prompt="hi")
    tok = lab.model.tokenizer
    ids = tok(TEXT)["input_ids"]
    print("tokens  graph nodes  sent nodes  sent edges   sent bytes  saved state   dense float32   seconds")
    for T in args.tokens:
        prompt = tok.decode(ids[:T - 1])        # the start token makes T
        view = lab.add(GraphView(), max_features=args.max_features)
        t0 = time.perf_counter()
        lab.prompt = prompt
        secs = time.perf_counter() - t0
        g = view.result
        state = {k: v for k, v in view.get_state().items() if k not in ("_esm", "_css")}   # less the JS bundle
        state, _, buffers = _remove_buffers(state)
        saved = len(json.dumps(state)) + sum(len(bytes(b)) for b in buffers)
        n = len(g.nodes)
        print(f"{len(g.tokens):6d} {n:12,d} {len(view.node_kind):11d} {len(view.edge_src):11d} {view.sent_bytes:12,d}"
              f" {saved:12,d} {n * n * 4:15,d} {secs:9.1f}" + (f"   ({view.notice})" if view.notice else ""))
        view.close()


if __name__ == "__main__":
    main()
