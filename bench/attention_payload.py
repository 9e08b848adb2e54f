"""Bytes and seconds to ship attention patterns to the browser: mechviz binary traits vs CircuitsVis.

Both libraries get the same softmaxed attention (12 heads x T tokens, like one GPT-2-small layer), in
one process. mechviz: the widget state (binary buffer + JSON part) an AttentionView sends and saves.
CircuitsVis: the HTML string `attention_heads(...)` returns (what a notebook saves and sends).

    python bench/attention_payload.py [--tokens 50 200 1000]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from ipywidgets.widgets.widget import _remove_buffers

from mechviz import AttentionView


def attention(heads: int, T: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(heads, T, T)).astype(np.float32)
    logits[:, np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] = -np.inf
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def mechviz_bytes(pattern, tokens):
    t0 = time.perf_counter()
    view = AttentionView()
    view.show(pattern[None], tokens, prompt="bench")
    state, _, buffers = _remove_buffers(view.get_state())
    state.pop("_esm", None)  # the JS module is sent once per widget, not per prompt
    n = len(json.dumps(state)) + sum(len(b) for b in buffers)
    return n, time.perf_counter() - t0


def circuitsvis_bytes(pattern, tokens):
    import circuitsvis as cv
    t0 = time.perf_counter()
    html = str(cv.attention.attention_heads(attention=pattern, tokens=tokens))
    return len(html.encode()), time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, nargs="+", default=[50, 200, 1000])
    ap.add_argument("--heads", type=int, default=12)
    args = ap.parse_args()
    print(f"| tokens | heads | mechviz bytes | mechviz s | CircuitsVis bytes | CircuitsVis s | size ratio |")
    print("|---|---|---|---|---|---|---|")
    for T in args.tokens:
        pattern = attention(args.heads, T)
        tokens = [f" tok{i}" for i in range(T)]
        mb, ms = mechviz_bytes(pattern, tokens)
        cb, cs = circuitsvis_bytes(pattern, tokens)
        print(f"| {T} | {args.heads} | {mb:,} | {ms:.3f} | {cb:,} | {cs:.2f} | {cb / mb:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
