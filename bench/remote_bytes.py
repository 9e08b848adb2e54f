"""Bytes a view downloads from the model's machine (NDIF, or a GPU box) with its reduction computed inside the
nnsight trace vs the naive full tensors, for Llama-3-8B- and Llama-3-70B-shaped configs (computed from shapes:
nothing that size is run), and the nnsight backend's overhead against the HF adapter on the bundled model (both
in one process, interleaved; ratios of medians).

The byte formulas mirror the dtypes the reductions save (mechviz.models.reductions); the script first checks
each formula against the bytes the real reductions save on the bundled model (``adapter.bytes_received``).

    python bench/remote_bytes.py [--tokens 20] [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

# name: (layers, d_model, heads, vocab, SAE width)
CONFIGS = {"Llama-3-8B": (32, 4096, 32, 128256, 131072), "Llama-3-70B": (80, 8192, 64, 128256, 131072)}
K, SAE_N, F32, I64, U8 = 5, 12, 4, 8, 1


def views(L: int, d: int, H: int, V: int, d_sae: int, T: int) -> dict[str, tuple[int, int, str]]:
    """``{view: (reduced bytes, naive bytes, what naive downloads)}`` for one prompt of ``T`` tokens."""
    R = L + 1
    return {
        "logit lens (top-5, target)": (R * T * K * (I64 + F32) + R * T * (F32 + F32 + I64),
                                       R * T * V * F32, "float32 logits of every row"),
        "attention (one layer)": (H * T * T * U8, L * H * T * T * F32, "float32 patterns of every layer"),
        "SAE features (top-12)": (SAE_N * I64 + T * SAE_N * F32, T * d_sae * F32, "float32 feature acts [T, d_sae]"),
        "patching grid (resid_pre x pos)": (L * T * F32, L * T * V * F32, "last-position logits of each cell"),
        "shared pass (logits)": (T * V * F32, T * V * F32, "(not reduced: the Lab's Run)"),
    }


def human(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def check_formulas(T: int):
    """Run the real reductions on the bundled model and compare their saved bytes with :func:`views`."""
    import nnsight

    from mechviz.analysis.reduced import reduced_attention, reduced_logit_lens
    from mechviz.models.nnsight import NNsightAdapter
    from mechviz.models.reductions import SAETop, patch_cells, reduce
    from mechviz.saes import load_sae
    from mechviz.zoo import SAE_DIR, load_default_model

    model, tok = load_default_model()
    adapter = NNsightAdapter(nnsight.LanguageModel(model, tokenizer=tok))
    ids = torch.randint(1, adapter.d_vocab, (T,), generator=torch.Generator().manual_seed(0))
    other = ids.clone()
    other[T // 2] = (other[T // 2] + 1) % adapter.d_vocab
    _, lens_bytes = reduced_logit_lens(adapter, ids, k=K, target="next")
    _, _, att_bytes = reduced_attention(adapter, ids, layers=[0])
    reduce(adapter, ids, {"sae": SAETop(load_sae(SAE_DIR), SAE_N)})
    patch_cells(adapter, other, ids, "resid_pre", metric=lambda lg: lg[:, -1, 1] - lg[:, -1, 2])
    L, d, H, V = adapter.n_layers, adapter.d_model, adapter.n_heads, adapter.d_vocab
    want = views(L, d, H, V, 0, T)
    got = {"logit lens (top-5, target)": lens_bytes, "attention (one layer)": att_bytes,
           "SAE features (top-12)": adapter.bytes_received["sae"],
           "patching grid (resid_pre x pos)": adapter.bytes_received["patching"]}
    for name, n in got.items():
        assert want[name][0] == n, f"{name}: formula {want[name][0]} B, the reduction saved {n} B"
    return model, tok, adapter


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def overhead(model, tok, nn, repeats: int) -> list[tuple[str, float, float]]:
    """(what, HF adapter median s, nnsight median s), interleaved so both see the same machine state."""
    from mechviz.analysis import logit_lens as lens_fns
    from mechviz.analysis.patching import activation_patching
    from mechviz.analysis.reduced import reduced_logit_lens
    from mechviz.models import HFAdapter
    from mechviz.models.reductions import patch_cells

    hf = HFAdapter(model, tok)
    prompt = "The quick brown fox jumps over the lazy dog because it wanted to see the"
    other = "The quick brown cat jumps over the lazy dog because it wanted to see the"
    sites = lens_fns.needs(hf.n_layers) + [f"attn_pattern.{i}" for i in range(hf.n_layers)]
    metric = lambda lg: lg[:, -1, 1] - lg[:, -1, 2]  # noqa: E731
    cases = [
        ("run: lens + attention sites", lambda: hf.run(prompt, capture=sites), lambda: nn.run(prompt, capture=sites)),
        ("logit lens (full vs reduced in trace)",
         lambda: lens_fns.logit_lens(hf, hf.run(prompt, capture=lens_fns.needs(hf.n_layers)), k=K, target="next"),
         lambda: reduced_logit_lens(nn, prompt, k=K, target="next")),
        ("patching grid resid_pre (engine vs one trace)",
         lambda: activation_patching(hf, prompt, other, "resid_pre", metric=metric),
         lambda: patch_cells(nn, other, prompt, "resid_pre", metric=metric)),
    ]
    rows = []
    for what, a, b in cases:
        a(), b()  # warm-up
        ta, tb = [], []
        for _ in range(repeats):
            ta += timed(a, 1)
            tb += timed(b, 1)
        rows.append((what, statistics.median(ta), statistics.median(tb)))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", FutureWarning)
    model, tok, nn = check_formulas(args.tokens)
    print(f"Bytes downloaded per view, one {args.tokens}-token prompt (formulas checked against the reductions' "
          "saved bytes on the bundled model)\n")
    print("| model | view | reduced in trace | naive | naive / reduced | naive downloads |")
    print("|---|---|---:|---:|---:|---|")
    for name, shape in CONFIGS.items():
        for view, (red, naive, what) in views(*shape, args.tokens).items():
            print(f"| {name} | {view} | {human(red)} | {human(naive)} | {naive / red:,.0f}x | {what} |")
    print("\nnnsight backend (local) vs HF adapter, bundled model, 1 thread, median of "
          f"{args.repeats} interleaved runs\n")
    print("| what | HF adapter | nnsight | nnsight / HF |")
    print("|---|---:|---:|---:|")
    for what, a, b in overhead(model, tok, nn, args.repeats):
        print(f"| {what} | {a * 1e3:.1f} ms | {b * 1e3:.1f} ms | {b / a:.2f} |")


if __name__ == "__main__":
    main()
