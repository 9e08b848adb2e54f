"""Time attribution_graph on the bundled model at 16/64/128 tokens (1 thread), and its scores on 3 prompts.

Run: PYTHONPATH=. python bench/graph_time.py"""
import sys
import time

import torch

import mechviz
from mechviz import zoo
from mechviz.analysis.graph import attribution_graph
from mechviz.saes import load_sae

torch.set_num_threads(1)
adapter = mechviz.wrap(*zoo.load_default_model())
tcs = [load_sae(d) for d in zoo.dictionary_dirs("transcoders")]
text = ("When Mary and John went to the store, John gave a drink to Mary. The weather was nice and the "
        "children played in the park while their parents talked about the news of the day. ") * 4
ids = adapter.to_tokens(text).reshape(-1)
if "scores" in sys.argv[1:] or len(sys.argv) == 1:
    for p in ["When Mary and John went to the store, John gave", "The capital of France is",
              "1, 2, 3, 4, 5,"]:
        for mf in (None, 200):
            g = attribution_graph(adapter, tcs, p, max_features=mf)
            print(f"{p!r} max_features={mf}: n_features={g.n_features} replacement={g.replacement_score:.4f} "
                  f"completeness={g.completeness_score:.4f}", flush=True)
if "time" in sys.argv[1:] or len(sys.argv) == 1:
    for T in (16, 64, 128):
        t0 = time.perf_counter()
        g = attribution_graph(adapter, tcs, ids[:T].tolist(), max_features=None)
        print(f"T={T}: {time.perf_counter() - t0:.2f} s ({g.n_features} features)", flush=True)
