"""Replacement and completeness scores of typical attribution graphs of the bundled model and its
per-layer transcoders, written to ``mechviz/zoo/default/metrics.json`` under ``"transcoders"`` ->
``"graphs"`` (other keys kept).

Prompts: ``--n`` windows of ``--min-len``..``--max-len`` tokens cut at evenly spaced offsets from the
bundled held-out sample (``default/heldout_sample.txt``), each with BOS prepended (the model's own
convention), default targets (top tokens to 0.95 probability, at most 10), every active feature
(``max_features=None``). Seeded: the same run gives the same numbers.

    PYTHONPATH=. python scripts/graph_metrics.py [--n 20] [--min-len 16] [--max-len 32] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch


def windows(tokenizer, n: int, lo: int, hi: int, seed: int = 0) -> list[list[int]]:
    """``n`` token windows of ``lo..hi`` tokens (BOS first) from evenly spaced offsets of the held-out sample."""
    from mechviz import zoo

    text = (zoo.DEFAULT_DIR / "heldout_sample.txt").read_text()
    ids = list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    rng = np.random.default_rng(seed)
    lens = rng.integers(lo, hi + 1, size=n)
    starts = np.linspace(0, len(ids) - hi, n).astype(int)
    return [[tokenizer.bos_token_id] + ids[s:s + k - 1] for s, k in zip(starts, lens)]


def summary(xs: list[float]) -> dict:
    return {"mean": statistics.fmean(xs), "median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--min-len", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true", help="print only, do not write metrics.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    import mechviz
    from mechviz import zoo
    from mechviz.analysis.graph import attribution_graph
    from mechviz.saes import load_sae

    adapter = mechviz.wrap(*zoo.load_default_model())
    tcs = [load_sae(d) for d in zoo.dictionary_dirs("transcoders")]
    rows = []
    for i, ids in enumerate(windows(adapter.tokenizer, a.n, a.min_len, a.max_len)):
        t0 = time.perf_counter()
        g = attribution_graph(adapter, tcs, torch.tensor(ids))
        rows.append({"tokens": len(ids), "features": g.n_features, "logits": g.n_logits,
                     "replacement": g.replacement_score, "completeness": g.completeness_score})
        print(f"{i:2d} {len(ids):3d} tokens {g.n_features:5d} features  replacement {g.replacement_score:.3f}  "
              f"completeness {g.completeness_score:.3f}  ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    out = {
        "command": " ".join(["PYTHONPATH=. python scripts/graph_metrics.py", *(argv if argv is not None else sys.argv[1:])]),
        "params": {"n_prompts": a.n, "min_len": a.min_len, "max_len": a.max_len, "source": "heldout_sample.txt",
                   "bos": True, "torch_threads": a.threads, "targets": "default (prob_mass 0.95, max_logits 10)", "max_features": None},
        "replacement_score": summary([r["replacement"] for r in rows]),
        "completeness_score": summary([r["completeness"] for r in rows]),
        "active_features": summary([r["features"] for r in rows]),
        "tokens": summary([r["tokens"] for r in rows]),
        "note": "circuit-tracer's scores (mechviz.analysis.graph.graph_scores) of attribution graphs over the "
                "local replacement model built from the bundled per-layer transcoders",
    }
    print("| score | mean | median | min | max |\n|---|---|---|---|---|")
    for k in ("replacement_score", "completeness_score", "active_features", "tokens"):
        s = out[k]
        print(f"| {k} | {s['mean']:.3f} | {s['median']:.3f} | {s['min']:.3f} | {s['max']:.3f} |")
    if not a.no_write:
        metrics = json.loads(zoo.METRICS_PATH.read_text())
        metrics.setdefault("transcoders", {})["graphs"] = out
        zoo.METRICS_PATH.write_text(json.dumps(metrics, indent=1))
        print(f"wrote {zoo.METRICS_PATH}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
