"""Circuit views: mechviz's DLA, head detection and path patching vs the same done with TransformerLens.

Both run in this process on the same random weights (as ``bench/patching_vs_tl.py``): a GPT-2-shaped
HuggingFace model built from a config (nothing downloaded) and the same weights in a TransformerLens
HookedTransformer. TransformerLens is used through its own functions where it has them and through its
hooks where it does not, and every mechviz number is checked against TransformerLens' as it goes:

* DLA: ``adapter.run(capture=dla.needs(L))`` + ``direct_logit_attribution`` vs ``run_with_cache`` +
  ``stack_head_results(layer=-1, pos_slice=-1)`` / ``decompose_resid`` + ``logit_attrs`` (on a
  ``fold_ln=True`` copy: like with like, see tests/test_dla.py); per head and per component, to 1e-4.
* head detection: ``head_scores`` vs ``transformer_lens.head_detector.detect_head`` for previous_token,
  duplicate_token and induction on the same token ids (a repeated random sequence), to 1e-5.
* path patching: ``path_patching`` vs the standard algorithm written with TransformerLens hooks (ARENA
  1.4.1: per sender, one run with every head's ``z`` frozen at the receiving run's and the sender's taken
  from the source run, caching the receivers' ``hook_q/k/v``; then one run per receiver patching those in;
  for the final residual the first run alone), for (a) every head -> the final residual and (b) every head
  below a mid layer -> that layer's head's q, k and v inputs (three columns); to 1e-4. With ``--tl-sample N``
  TransformerLens runs N random senders of each and its time is scaled to all of them.

Quick times (DLA, head detection) are the best of ``--repeats`` runs. Torch threads are pinned (1).

    python bench/circuits_vs_tl.py                   # GPT-2 small shape, 20 tokens (~3 min on one core)
    python bench/circuits_vs_tl.py --tl-sample 24 --corrupt all   # every token differs; TL on 24 senders
    python bench/circuits_vs_tl.py --quick           # 4 layers, d 256, 8 heads, vocab 5000, 12 tokens
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from patching_vs_tl import add_shape_args, build_models  # noqa: E402

from mechviz.analysis import dla as D  # noqa: E402
from mechviz.analysis.heads import head_scores  # noqa: E402
from mechviz.analysis.patch_grid import logit_diff  # noqa: E402
from mechviz.analysis.path_patching import path_patching  # noqa: E402
from mechviz.models import wrap  # noqa: E402

KINDS = ("previous_token", "duplicate_token", "induction")


def best_of(fn, repeats):
    """(result of the last call, the fastest of ``repeats`` calls in seconds)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, min(times)


# -- DLA ---------------------------------------------------------------------------------------
def tl_dla(tl_folded, prompt, answer, wrong):
    """TransformerLens' DLA at the last position: per head ``[L, H]`` and per component (decompose_resid)."""
    with torch.inference_mode():
        _, cache = tl_folded.run_with_cache(prompt[None])
        heads = cache.stack_head_results(layer=-1, pos_slice=-1)                      # [L*H, 1, d]
        per_head = cache.logit_attrs(heads, answer, wrong, pos_slice=-1)[:, 0]
        comps = cache.decompose_resid(layer=-1, pos_slice=-1)
        per_comp = cache.logit_attrs(comps, answer, wrong, pos_slice=-1)[:, 0]
    L, H = tl_folded.cfg.n_layers, tl_folded.cfg.n_heads
    return per_head.reshape(L, H).numpy(), per_comp.numpy()


def mv_dla(adapter, prompt, answer, wrong):
    run = adapter.run(prompt, capture=D.needs(adapter.n_layers))
    return D.direct_logit_attribution(adapter, run, answer, wrong)


# -- head detection ----------------------------------------------------------------------------
def tl_heads(tl, tokens):
    from transformer_lens.head_detector import detect_head
    return {k: detect_head(tl, tokens[None], f"{k}_head").numpy() for k in KINDS}


def mv_heads(adapter, tokens):
    return {k: head_scores(adapter, k, tokens).scores for k in KINDS}


# -- path patching: the TransformerLens hooks baseline -------------------------------------------
def tl_path_patching(tl, receiving, source, metric, senders, receiver):
    """ARENA 1.4.1-style path patching with TransformerLens hooks, noising (the receiving prompt is the clean
    one, senders take the corrupted one's ``z``). ``receiver``: ``"final"`` or ``(layer, head)`` (its q, k and
    v inputs, one column each). Returns ``[len(senders), 1 or 3]``."""
    z_filter = lambda name: name.endswith("attn.hook_z")  # noqa: E731
    with torch.inference_mode():
        _, recv_cache = tl.run_with_cache(receiving[None], names_filter=z_filter)
        _, src_cache = tl.run_with_cache(source[None], names_filter=z_filter)
    out = []
    for ls, hs in senders:
        def freeze(z, hook, ls=ls, hs=hs):
            z[...] = recv_cache[hook.name]
            if hook.layer() == ls:
                z[:, :, hs] = src_cache[hook.name][:, :, hs]
            return z

        with torch.inference_mode():
            if receiver == "final":
                logits = tl.run_with_hooks(receiving[None], fwd_hooks=[(z_filter, freeze)])
                out.append([float(metric(logits))])
                continue
            lr, hr = receiver
            got = {}

            def keep(x, hook, hr=hr):
                got[hook.name] = x[:, :, hr].clone()

            names = [f"blocks.{lr}.attn.hook_{k}" for k in "qkv"]
            tl.run_with_hooks(receiving[None], fwd_hooks=[(z_filter, freeze)] + [(n, keep) for n in names])
            row = []
            for n in names:
                def put(x, hook, n=n, hr=hr):
                    x[:, :, hr] = got[n]
                    return x
                row.append(float(metric(tl.run_with_hooks(receiving[None], fwd_hooks=[(n, put)]))))
            out.append(row)
    return np.array(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_args(ap)
    ap.add_argument("--quick", action="store_true", help="4 layers, d_model 256, 8 heads, vocab 5000, 12 tokens")
    ap.add_argument("--receiver-layer", type=int, default=None, help="the mid-layer receiving head's layer (L // 2)")
    ap.add_argument("--tl-sample", type=int, default=0,
                    help="run TransformerLens' path patching on at most this many random senders per receiver and "
                         "scale its time to all of them (0: every sender)")
    ap.add_argument("--corrupt", choices=["mid", "first", "all"], default="mid",
                    help="how the corrupted prompt differs from the clean one: one token at T//2 (mid), at 1 (first), "
                         "or every token resampled (all); mechviz's path patching starts at the first differing "
                         "position, TransformerLens' does not")
    ap.add_argument("--repeats", type=int, default=3, help="DLA and head detection: best of this many runs")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.quick:
        args.layers, args.d_model, args.heads, args.vocab, args.tokens = 4, 256, 8, 5000, 12
    torch.set_num_threads(args.threads)
    L, H, T = args.layers, args.heads, args.tokens

    hf, tl = build_models(L, args.d_model, H, args.vocab, max(64, 2 * T + 2))
    tl_folded = copy.deepcopy(tl)
    tl_folded.load_and_process_state_dict(tl.state_dict(), fold_ln=True, center_writing_weights=False,
                                          center_unembed=False, fold_value_biases=False)
    ours = wrap(hf)
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(1, args.vocab, (T,), generator=g)
    corrupted = clean.clone()
    if args.corrupt == "all":
        corrupted = torch.randint(1, args.vocab, (T,), generator=g)
    else:
        at = {"mid": T // 2, "first": 1}[args.corrupt]
        corrupted[at] = (clean[at] + 1) % args.vocab
    with torch.inference_mode():
        top = [int(tl(x[None])[0, -1].argmax()) for x in (clean, corrupted)]
    answer, wrong = top[0], top[1] if top[1] != top[0] else (top[0] + 1) % args.vocab
    metric = logit_diff(answer, wrong)
    half = (T - 1) // 2
    rep = torch.cat([clean[:1], clean[1:1 + half], clean[1:1 + half]])  # a repeated sequence: inducible
    print(f"model: GPT-2 shape, {L} layers, d_model {args.d_model}, {H} heads, vocab {args.vocab}, random weights; "
          f"{T}-token prompt pair (differing: {args.corrupt}); mechviz on the HF model; torch threads {args.threads}")

    rows = []
    # 1. DLA
    (ref_heads, ref_comps), tl_s = best_of(lambda: tl_dla(tl_folded, clean, answer, wrong), args.repeats)
    dla, mv_s = best_of(lambda: mv_dla(ours, clean, answer, wrong), args.repeats)
    dev = max(float(np.abs(dla.heads - ref_heads).max()), float(np.abs(dla.components - ref_comps).max()))
    tol = 1e-4 * max(1.0, float(np.abs(ref_comps).max()))
    assert dev < tol, f"DLA: mechviz differs from TransformerLens by {dev:.2e}"
    rows.append(("DLA (every head + components, last position)", mv_s, f"{tl_s:.3f}", tl_s, dev))
    print(f"  DLA: mechviz {mv_s:.3f} s, TL {tl_s:.3f} s, max |diff| {dev:.1e} "
          f"(largest |head attribution| {np.abs(ref_heads).max():.2e})", flush=True)

    # 2. head detection
    tl.to_tokens = lambda seq, *a, **k: seq  # detect_head takes text; the random model has no tokenizer: ids as is
    ref, tl_s = best_of(lambda: tl_heads(tl, rep), args.repeats)
    got, mv_s = best_of(lambda: mv_heads(ours, rep), args.repeats)
    dev = max(float(np.abs(got[k] - ref[k]).max()) for k in KINDS)
    assert dev < 1e-5, f"head detection: mechviz differs from TransformerLens by {dev:.2e}"
    assert ref["induction"].std() > 0, "degenerate induction scores"
    rows.append((f"head detection ({', '.join(KINDS)}; {len(rep)} tokens)", mv_s, f"{tl_s:.3f}", tl_s, dev))
    print(f"  head detection: mechviz {mv_s:.3f} s, TL {tl_s:.3f} s, max |diff| {dev:.1e}", flush=True)

    # 3. path patching
    lr = L // 2 if args.receiver_layer is None else args.receiver_layer
    hr = H // 2
    rng = np.random.default_rng(0)
    for label, receiver, mv_receivers, n_layers_send in [
            ("every head -> final resid", "final", ["final"], L),
            (f"every head below {lr} -> q, k, v of {lr}.{hr}", (lr, hr), [("q", lr, hr), ("k", lr, hr), ("v", lr, hr)],
             lr)]:
        senders = [(la, h) for la in range(n_layers_send) for h in range(H)]
        t0 = time.perf_counter()
        grid = path_patching(ours, clean, corrupted, senders=senders, receivers=mv_receivers, metric=metric)
        mv_s = time.perf_counter() - t0
        idx = np.arange(len(senders))
        if args.tl_sample and args.tl_sample < len(senders):
            idx = np.sort(rng.choice(len(senders), size=args.tl_sample, replace=False))
        t0 = time.perf_counter()
        ref = tl_path_patching(tl, clean, corrupted, metric, [senders[i] for i in idx], receiver)
        tl_s = (time.perf_counter() - t0) * len(senders) / len(idx)
        dev = float(np.abs(grid.values[idx] - ref).max())
        assert dev < 1e-4, f"path patching {label}: mechviz differs from TransformerLens hooks by {dev:.2e}"
        assert np.ptp(ref) > 1e-3, "degenerate path-patching reference"
        note = f"{tl_s:.1f}" + ("" if len(idx) == len(senders) else f" (extrapolated from {len(idx)} senders)")
        rows.append((f"path patching: {label} ({len(senders)} senders)", mv_s, note, tl_s, dev))
        print(f"  path patching {label}: mechviz {mv_s:.2f} s, TL {note} s ({tl_s / mv_s:.1f}x), "
              f"max |diff| {dev:.1e}", flush=True)

    print("\n| tool | mechviz s | TransformerLens s | ratio | max abs diff vs TL |")
    print("|---|---|---|---|---|")
    for name, mv_s, note, tl_s, dev in rows:
        print(f"| {name} | {mv_s:.3f} | {note} | {tl_s / mv_s:.1f}x | {dev:.1e} |")
    print("\nratio: TransformerLens s / mechviz s. DLA and head detection: best of "
          f"{args.repeats} runs, each including its forward pass(es). Path patching: noising (the clean run "
          "receives corrupted sender outputs), metric the logit difference at the last token; TransformerLens "
          "baseline = ARENA 1.4.1's algorithm with hooks (1 run per sender for the final residual, 1 + 3 for "
          "q, k, v).")
    if args.tl_sample:
        print(f"Path-patching TransformerLens times marked 'extrapolated' ran {args.tl_sample} random senders and "
              "were scaled to all senders (every sender costs it the same runs); the diff is over those senders.")


if __name__ == "__main__":
    main()
