"""Activation patching: mechviz's batched engine vs TransformerLens' ``patching.get_act_patch_*``.

Both run in this process on the same random weights: a GPT-2-shaped HuggingFace model built from a
config (nothing downloaded) and the same weights loaded into a TransformerLens HookedTransformer.
Every grid is checked against TransformerLens' values (to 1e-4) as it goes. With ``--tl-sample N``
TransformerLens is timed on at most N random cells of each grid and its full time extrapolated (the full
GPT-2-small head x position reference alone takes about 19 minutes on one CPU core).

    python bench/patching_vs_tl.py                                  # GPT-2 small shape, 20 tokens (~35 min)
    python bench/patching_vs_tl.py --tl-sample 240   # full TL for resid_pre and head_all_pos, 240 head x pos cells
    python bench/patching_vs_tl.py --layers 4 --d-model 256 --heads 8 --vocab 5000 --tokens 12   # quick
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # TransformerLens' patching loop draws a progress bar

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mechviz.analysis.patching import activation_patching, attribution_patching, logit_diff  # noqa: E402
from mechviz.models import wrap  # noqa: E402

# name -> (mechviz site, by, TransformerLens function name, TL activation name, TL setter name, TL axes)
GRIDS = {
    "resid_pre": ("resid_pre", "position", "get_act_patch_resid_pre", "resid_pre", "layer_pos_patch_setter"),
    "attn_out": ("attn_out", "position", "get_act_patch_attn_out", "attn_out", "layer_pos_patch_setter"),
    "mlp_out": ("mlp_out", "position", "get_act_patch_mlp_out", "mlp_out", "layer_pos_patch_setter"),
    "head_all_pos": ("z", "head", "get_act_patch_attn_head_out_all_pos", "z", "layer_head_vector_patch_setter"),
    "head_by_pos": ("z", "head_position", "get_act_patch_attn_head_out_by_pos", "z",
                    "layer_pos_head_vector_patch_setter"),
}


def build_models(layers, d_model, heads, vocab, n_ctx, seed=0):
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens import loading_from_pretrained as loading
    from transformer_lens.pretrained import weight_conversions as wc
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=layers, n_embd=d_model, n_head=heads, vocab_size=vocab,
                                    n_positions=n_ctx)).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.config.architectures = ["GPT2LMHeadModel"]
        hf.config.n_ctx = hf.config.n_positions
        hf.config.save_pretrained(d)
        cfg_dict = loading.convert_hf_model_config(d)
    cfg_dict.pop("original_architecture", None)
    cfg_dict.pop("tokenizer_name", None)
    cfg = HookedTransformerConfig(**cfg_dict, original_architecture="GPT2LMHeadModel", device="cpu")
    tl = HookedTransformer(cfg, move_to_device=False)
    tl.load_and_process_state_dict(wc.convert_gpt2_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                   center_unembed=False, fold_value_biases=False,
                                   refactor_factored_attn_matrices=False)
    return hf, tl.eval()


def tl_grid(tl, name, clean, corrupted, metric, sample, rng):
    """TransformerLens' grid (denoising), all cells or ``sample`` random ones: (values, cells or None, seconds)."""
    import pandas as pd
    from transformer_lens import patching

    _, _, fn_name, act_name, setter_name = GRIDS[name]
    _, clean_cache = tl.run_with_cache(clean[None])
    fn = getattr(patching, fn_name)
    L, T, H = tl.cfg.n_layers, corrupted.numel(), tl.cfg.n_heads
    axes = {"position": ("layer", "pos"), "head": ("layer", "head"),
            "head_position": ("layer", "pos", "head")}[GRIDS[name][1]]
    sizes = {"layer": L, "pos": T, "head": H}
    all_cells = np.stack(np.meshgrid(*[np.arange(sizes[a]) for a in axes], indexing="ij"), -1).reshape(-1, len(axes))
    t0 = time.perf_counter()
    if not sample or sample >= len(all_cells):
        values = fn(tl, corrupted[None], clean_cache, metric)
        return values.numpy(), None, time.perf_counter() - t0
    cells = all_cells[rng.choice(len(all_cells), size=min(sample, len(all_cells)), replace=False)]
    t0 = time.perf_counter()
    values = patching.generic_activation_patch(tl, corrupted[None], clean_cache, metric,
                                               getattr(patching, setter_name), act_name,
                                               index_df=pd.DataFrame(cells, columns=list(axes)))
    seconds = (time.perf_counter() - t0) * len(all_cells) / len(cells)
    return values.numpy(), cells, seconds


def add_shape_args(ap) -> None:
    """The model shape (default GPT-2 small) and the prompts' token length, shared by the TL benchmarks."""
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--tokens", type=int, default=20)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_args(ap)
    ap.add_argument("--grids", default="resid_pre,head_all_pos,head_by_pos", help=f"any of {','.join(GRIDS)}")
    ap.add_argument("--tl-sample", type=int, default=0,
                    help="time TransformerLens on at most this many random cells per grid and extrapolate "
                         "(0: every cell)")
    ap.add_argument("--backend", choices=["hf", "tl"], default="hf",
                    help="run mechviz on the HuggingFace model (default) or on the TransformerLens model")
    ap.add_argument("--budget-mb", type=float, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--corrupt", default="mid,first,all",
                    help="how the corrupted prompt differs from the clean one, one or more of: mid (one token, at "
                         "T//2), first (one token, right after the first), all (every token resampled). mechviz skips "
                         "cells whose clean and corrupted values are equal (e.g. before the first differing token), "
                         "so its time depends on this; TransformerLens' does not (timed on the first mode)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    hf, tl = build_models(args.layers, args.d_model, args.heads, args.vocab, max(64, args.tokens))
    ours = wrap(hf) if args.backend == "hf" else wrap(tl)
    g = torch.Generator().manual_seed(1)
    T = args.tokens
    clean = torch.randint(1, args.vocab, (T,), generator=g)
    pairs = {}
    for mode in args.corrupt.split(","):
        corrupted = clean.clone()
        if mode == "all":
            corrupted = torch.randint(1, args.vocab, (T,), generator=g)
        else:
            at = {"mid": T // 2, "first": 1}[mode]
            corrupted[at] = (clean[at] + 1) % args.vocab
        with torch.inference_mode():
            top = [int(tl(x[None])[0, -1].argmax()) for x in (clean, corrupted)]
        pairs[mode] = (corrupted, logit_diff(top[0], top[1] if top[1] != top[0] else (top[0] + 1) % args.vocab))
    rng = np.random.default_rng(0)
    print(f"model: GPT-2 shape, {args.layers} layers, d_model {args.d_model}, {args.heads} heads, vocab {args.vocab}, "
          f"random weights; {T}-token prompt pairs; mechviz on the {args.backend.upper()} model; "
          f"torch threads {args.threads}; budget {args.budget_mb:g} MB; metric: logit difference at the last token")

    rows = []
    for name in args.grids.split(","):
        site, by = GRIDS[name][:2]
        for i, (mode, (corrupted, metric)) in enumerate(pairs.items()):
            # TL's time does not depend on the prompts: timed on the first pair; later pairs checked on a few cells
            sample = args.tl_sample if i == 0 else 12
            ref, cells, tl_s = tl_grid(tl, name, clean, corrupted, metric, sample, rng)
            if i == 0:
                tl_time = tl_s
                n_tl = None if cells is None else len(cells)
            t0 = time.perf_counter()
            grid = activation_patching(ours, clean, corrupted, site, by=by, metric=metric,
                                       batch_budget_mb=args.budget_mb)
            mv_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            attr = attribution_patching(ours, clean, corrupted, site, by=by, metric=metric)
            at_s = time.perf_counter() - t0
            got = grid.values if cells is None else grid.values[tuple(cells.T)]
            dev = float(np.abs(got - ref).max())
            assert dev < 1e-4, f"{name}/{mode}: mechviz differs from TransformerLens by {dev:.2e}"
            r = float(np.corrcoef(attr.values.ravel(), grid.values.ravel())[0, 1])
            tl_note = f"{tl_time:.1f}" + ("" if n_tl is None else f" (extrapolated from {n_tl} cells)")
            rows.append((name, mode, grid.values.size, tl_note, mv_s, tl_time / mv_s, at_s, tl_time / at_s, dev, r))
            print(f"  {name} [{mode}]: TL {tl_note} s, mechviz {mv_s:.2f} s ({tl_time / mv_s:.1f}x), "
                  f"attribution {at_s:.2f} s, max |diff| {dev:.1e}", flush=True)

    print("\n| grid | prompts differ | cells | TransformerLens s | mechviz s | speed-up | attribution s | speed-up | "
          "max abs diff vs TL | r(attribution, exact) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, mode, n, tl_note, mv_s, ratio, at_s, at_ratio, dev, r in rows:
        print(f"| {name} | {mode} | {n} | {tl_note} | {mv_s:.2f} | {ratio:.1f}x | {at_s:.2f} | {at_ratio:.0f}x | "
              f"{dev:.1e} | {r:.3f} |")
    print("\nprompts differ: mid = one token at position T//2, first = one token at position 1, all = every token.")
    if args.tl_sample:
        print(f"TransformerLens times marked 'extrapolated' were measured on {args.tl_sample} random cells of the grid "
              "(every cell costs TL one full forward pass, whatever the prompts) and scaled to the full grid. "
              "The diff is over the cells TL computed (12 random cells for the 2nd and later prompt pairs).")


if __name__ == "__main__":
    main()
