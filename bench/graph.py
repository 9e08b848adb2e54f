"""Attribution graphs: time, size and bytes on the wire.

Default mode: the bundled model (GPT-2 shape, 4 layers, d_model 128) with its per-layer transcoders
(1,024 wide), torch threads 1, prompts of 16/64/128 tokens (BOS + text of the bundled held-out sample).
Per prompt: wall time of ``attribution_graph`` (scores included; median of ``--repeats``, fewer above
``--repeat-max-tokens``), nodes and non-zero edges before and after ``prune`` with its defaults (0.8,
0.98), and bytes: the dense adjacency as float32 (``n^2 * 4``) against the pruned subgraph as a widget
would send it (per node uint8 kind + int16 layer + int16 pos + int32 feature + 2 x float32
value/influence + int32 index = 19 bytes; per edge 2 x int32 + float16 = 10 bytes).

``--config gemma2-2b``: a Gemma-2-2B-shaped HF model (26 layers, d_model 2304, vocab 256,000) built
from its config with random seeded weights and random JumpReLU transcoders (``--width`` wide), on the
GPU if there is one. It needs an ``attribution_graph`` that accepts non-GPT-2 models: the script first
tries a tiny Gemma-2 and says so and stops if this tree's does not.

Measured 2026-12-06 (2 shared CPU cores under a load of 4-6 from other jobs, so times are high and noisy;
an unloaded run of a 16-token graph took about 7 s; defaults, threads 1):

| tokens | active features | attribution_graph | prune | nodes -> pruned | edges -> pruned | dense (f32) | pruned | ratio |
|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| 16 | 1,786 | 16.4 s (median of 3) | 0.7 s | 1,876 -> 113 | 666,987 -> 2,485 | 13.4 MiB | 26.6 KiB | 517x |
| 64 | 6,884 | 246.6 s (median of 3) | 8.3 s | 7,214 -> 172 | 9,357,223 -> 3,613 | 198.5 MiB | 38.8 KiB | 5,238x |
| 128 | 12,887 | 776.5 s (1 run) | 19.9 s | 13,537 -> 271 | 33,628,205 -> 6,124 | 699.0 MiB | 65.4 KiB | 10,952x |

Peak RSS 10.2 GiB (the 128-token graph's float64 adjacency and its copies in the scores and pruning).

    python bench/graph.py [--tokens 16 64 128] [--repeats 3] [--max-features N]
    python bench/graph.py --config gemma2-2b [--tokens 16 64] [--width 16384] [--max-features 4096]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np
import torch

NODE_BYTES = 1 + 2 + 2 + 4 + 2 * 4 + 4   # kind, layer, pos, feature, value + influence, index
EDGE_BYTES = 2 * 4 + 2                   # source, target, float16 weight


def heldout_ids(tokenizer, n: int) -> list[int]:
    """BOS + the first ``n - 1`` tokens of the bundled held-out sample."""
    from mechviz import zoo

    text = (zoo.DEFAULT_DIR / "heldout_sample.txt").read_text()
    ids = list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    return [tokenizer.bos_token_id] + ids[:n - 1]


def measure(adapter, tcs, ids, *, repeats: int, max_features, device=None) -> dict:
    """Time ``attribution_graph`` on ``ids`` (median of ``repeats``) and size the graph before and after ``prune``."""
    from mechviz.analysis.graph import attribution_graph, prune

    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        g = attribution_graph(adapter, tcs, torch.tensor(ids), max_features=max_features)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        if _ < repeats - 1:
            del g
    t0 = time.perf_counter()
    node, edge = prune(g)
    t_prune = time.perf_counter() - t0
    n, n_kept = len(g.nodes), int(node.sum())
    edges = int(np.count_nonzero(g.adjacency))
    e_kept = int(edge.sum())
    return {"tokens": len(ids), "features": g.n_features, "seconds": statistics.median(times), "runs": repeats,
            "prune_s": t_prune, "nodes": n, "edges": edges, "nodes_pruned": n_kept, "features_pruned": int(node[:g.n_features].sum()),
            "edges_pruned": e_kept, "dense_bytes": n * n * 4, "pruned_bytes": n_kept * NODE_BYTES + e_kept * EDGE_BYTES,
            "replacement": g.replacement_score, "completeness": g.completeness_score}


def mib(b: int) -> str:
    return f"{b / 2**20:,.2f} MiB" if b >= 2**20 else f"{b / 2**10:,.1f} KiB"


def table(rows: list[dict]) -> str:
    out = ["| tokens | active features | attribution_graph | prune | nodes -> pruned | edges -> pruned | "
           "dense adjacency (f32) | pruned subgraph | ratio | replacement / completeness |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['tokens']} | {r['features']:,} | {r['seconds']:.2f} s (median of {r['runs']}) | {r['prune_s']:.2f} s "
                   f"| {r['nodes']:,} -> {r['nodes_pruned']:,} ({r['features_pruned']:,} features) | {r['edges']:,} -> "
                   f"{r['edges_pruned']:,} | {mib(r['dense_bytes'])} | {mib(r['pruned_bytes'])} | "
                   f"{r['dense_bytes'] / r['pruned_bytes']:,.0f}x | {r['replacement']:.3f} / {r['completeness']:.3f} |")
    return "\n".join(out)


def random_transcoders(n_layers: int, d: int, width: int, device, seed: int = 0, threshold: float = 3.0):
    """Random JumpReLU transcoders ``mlp_in.L -> mlp_out.L`` (pre-activations ~ N(0, |x|^2 / d)); a feature
    fires on about 0.1% of unit-RMS inputs at the default threshold."""
    from mechviz.saes import SAE

    gen = torch.Generator().manual_seed(seed)
    out = []
    for layer in range(n_layers):
        W_enc = (torch.randn(d, width, generator=gen) / d ** 0.5).to(device)
        W_dec = (torch.randn(width, d, generator=gen) / width ** 0.5).to(device)
        out.append(SAE(W_enc=W_enc, b_enc=torch.zeros(width, device=device), W_dec=W_dec,
                       b_dec=torch.zeros(d, device=device), architecture="jumprelu",
                       threshold=torch.full((width,), threshold, device=device), apply_b_dec_to_input=False,
                       kind="transcoder", site=f"mlp_in.{layer}", site_out=f"mlp_out.{layer}"))
    return out


def gemma2(n_layers: int | None = None, tiny: bool = False):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    if tiny:
        cfg = Gemma2Config(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16, vocab_size=100, query_pre_attn_scalar=16,
                           sliding_window=8)
    else:  # google/gemma-2-2b's config.json
        cfg = Gemma2Config(num_hidden_layers=n_layers or 26, hidden_size=2304, intermediate_size=9216,
                           num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=256000,
                           query_pre_attn_scalar=256, sliding_window=4096, attn_logit_softcapping=50.0,
                           final_logit_softcapping=30.0, max_position_embeddings=8192)
    torch.manual_seed(0)
    return Gemma2ForCausalLM(cfg).eval()


def run_gemma(a) -> None:
    import mechviz
    from mechviz.analysis.graph import attribution_graph

    tiny = gemma2(tiny=True)
    try:
        attribution_graph(mechviz.wrap(tiny, None), random_transcoders(2, 64, 32, "cpu", threshold=0.5),
                          torch.arange(1, 9), max_features=20)
    except NotImplementedError as exc:
        print(f"--config gemma2-2b: not run: this tree's attribution_graph does not take a Gemma-2 model ({exc}). "
              "It needs the generalised graph (issue 13, helper H1's branch).")
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = gemma2(a.layers).to(device)
    cfg = model.config
    adapter = mechviz.wrap(model, None)
    tcs = random_transcoders(cfg.num_hidden_layers, cfg.hidden_size, a.width, device)
    gen = torch.Generator().manual_seed(1)
    rows = []
    for n in a.tokens:
        ids = [2] + torch.randint(3, cfg.vocab_size, (n - 1,), generator=gen).tolist()
        reps = a.repeats if n <= a.repeat_max_tokens else 1
        rows.append(measure(adapter, tcs, ids, repeats=reps, max_features=a.max_features, device=device))
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"Gemma-2-2B shape ({cfg.num_hidden_layers} layers, d_model {cfg.hidden_size}), random weights, "
          f"random transcoders {a.width} wide, max_features {a.max_features}, {name}\n")
    print(table(rows))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=["bundled", "gemma2-2b"], default="bundled")
    ap.add_argument("--tokens", type=int, nargs="+", default=[16, 64, 128])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--repeat-max-tokens", type=int, default=64, help="longer prompts are timed once")
    ap.add_argument("--max-features", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--width", type=int, default=16384, help="gemma2-2b: transcoder width")
    ap.add_argument("--layers", type=int, default=None, help="gemma2-2b: fewer layers than 26")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.config == "gemma2-2b":
        if a.max_features is None:
            a.max_features = 4096
        return run_gemma(a)

    import mechviz
    from mechviz import zoo
    from mechviz.saes import load_sae

    adapter = mechviz.wrap(*zoo.load_default_model())
    tcs = [load_sae(d) for d in zoo.dictionary_dirs("transcoders")]
    rows = []
    for n in a.tokens:
        reps = a.repeats if n <= a.repeat_max_tokens else 1
        rows.append(measure(adapter, tcs, heldout_ids(adapter.tokenizer, n), repeats=reps, max_features=a.max_features))
    cfg = adapter.model.config
    print(f"bundled model ({cfg.n_layer} layers, d_model {cfg.n_embd}), transcoders {tcs[0].d_sae} wide, torch threads {a.threads}, "
          f"max_features {a.max_features}; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB\n")
    print(table(rows))


if __name__ == "__main__":
    main()
