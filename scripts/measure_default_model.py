#!/usr/bin/env python
"""Measure the bundled default model + SAE and write ``mechviz/zoo/default/metrics.json``.

Prints a markdown table.  Everything is evaluated on the held-out split of the training
corpora (every 20th Brown file, every 40th KJV chapter, every 20th pydoc topic; see
``scripts/train_default_model.py``), which neither the tokenizer, the LM nor the SAE saw.

* held-out next-token loss vs. the entropy of the held-out unigram distribution (and the
  cross-entropy of the training-split unigram model on the held-out text);
* induction score (Olsson et al.) of every head on ``[BOS] + R + R`` random-token sequences for
  several R; the best head (highest mean over R) is recorded;
* loss on the first vs. the second (repeated) half of those sequences;
* SAE explained variance / mean L0 / dead fraction on held-out activations (BOS excluded);
* a fixed held-out text snippet (``default/heldout_sample.txt``) with its SAE stats, which
  ``tests/test_zoo.py`` recomputes;
* the per-layer SAEs and transcoders (``default/saes``, ``default/transcoders``), measured by
  ``train_default_dictionaries.measure`` (keys ``saes``, ``transcoders``);
* top-activating held-out contexts for SAE features; the hand-picked interpretable ones
  (``FEATURE_NOTES`` below, chosen by inspecting ``--dump-features`` output) are recorded.

Usage: ``python scripts/measure_default_model.py [--dump-features N]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from mechviz import zoo  # noqa: E402
from mechviz.zoo.metrics import (  # noqa: E402
    best_induction_head,
    logit_lens_losses,
    mean_loss,
    repeated_half_losses,
    repeated_random_tokens,
    resid_activations,
    sae_stats,
    unigram_entropy,
)

LENGTHS = (20, 30, 40, 60)
SAMPLE_PATH = zoo.DEFAULT_DIR / "heldout_sample.txt"

# Hand-picked interpretable SAE features (filled in after inspecting --dump-features output).
FEATURE_NOTES: dict[int, str] = {
    158: 'KJV: " Then" opening a verse, right after the chapter:verse number ("14:17 Then thine hand")',
    767: 'KJV: the ":" of the FIRST verse number right after a chapter heading ("Genesis 1\\n\\n1:1")',
    495: 'KJV: the ":" of a chapter:verse number, anywhere ("4:30", "42:18", "42:1")',
    926: 'KJV: the leading digit of a verse number that follows the end of the previous verse',
    1017: 'Python docs: an operator/identifier inside double quotes in grammar or prose ("!=", ">=", "x")',
    872: 'Python docs: layout whitespace/newlines in grammar productions and after ==== heading rules',
    692: '" four" (the number word, also "fourth")',
    111: '" years" after a number or time expression ("seven years", "all these years")',
    264: '" because" (causal conjunction)',
}


def windows(ids: np.ndarray, T: int, bos: int) -> torch.Tensor:
    w = T - 1
    n = len(ids) // w
    x = np.empty((n, T), dtype=np.int64)
    x[:, 0] = bos
    x[:, 1:] = ids[: n * w].reshape(n, w)
    return torch.from_numpy(x)


def encode_docs(tok, texts):
    eot = tok.bos_token_id
    out = []
    for e in tok.backend_tokenizer.encode_batch(texts):
        out.extend(e.ids)
        out.append(eot)
    return np.asarray(out, dtype=np.int64)


def top_contexts(tok, x: torch.Tensor, feats: torch.Tensor, fid: int, k: int = 8, left: int = 12, right: int = 2):
    """Top-k activating (window, position) pairs of feature ``fid``; feats is (n, T-1, d_sae) for positions 1..T-1."""
    a = feats[:, :, fid]
    flat = a.flatten()
    order = torch.argsort(flat, descending=True)[: k * 4]
    res, seen = [], set()
    for idx in order.tolist():
        if flat[idx] <= 0 or len(res) >= k:
            break
        i, p = divmod(idx, a.shape[1])
        p += 1  # position in the window
        key = (i, p // 4)
        if key in seen:
            continue
        seen.add(key)
        ids = x[i].tolist()
        pre = tok.decode(ids[max(1, p - left) : p])
        cur = tok.decode(ids[p : p + 1])
        post = tok.decode(ids[p + 1 : p + 1 + right])
        res.append({"act": round(float(flat[idx]), 3), "context": f"{pre}[[{cur}]]{post}".replace("\n", "\\n")})
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus-dir", default="/tmp/corpora")
    ap.add_argument("--n-seqs", type=int, default=32, help="random sequences per length")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dump-features", type=int, default=0, help="print top contexts of the N most frequent features")
    ap.add_argument("--dump-file", default="/tmp/zoo_work/features.txt")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()

    from train_default_model import load_corpora

    model, tok = zoo.load_default_model(attn_implementation="eager")
    sae = zoo.load_default_sae()
    cfg = model.config
    T = cfg.n_positions
    bos = tok.bos_token_id
    docs = load_corpora(Path(args.corpus_dir))
    held_texts = [t for _s, t, h in docs if h]
    held_src = [s for s, _t, h in docs if h]
    train_ids = encode_docs(tok, [t for _s, t, h in docs if not h])
    held_ids = encode_docs(tok, held_texts)
    x = windows(held_ids, T, bos)

    # ---- LM quality
    held_loss = mean_loss(model, x)
    lens = logit_lens_losses(model, x)
    H = unigram_entropy(torch.from_numpy(held_ids[held_ids != bos]), cfg.vocab_size)
    cnt = np.bincount(train_ids, minlength=cfg.vocab_size).astype(np.float64) + 1.0
    p_train = cnt / cnt.sum()
    hid = held_ids[held_ids != bos]
    unigram_xent = float(-np.log(p_train[hid]).mean())

    # ---- induction
    ind = best_induction_head(model, LENGTHS, n_seqs=args.n_seqs, seed=args.seed)
    halves = {}
    for i, R in enumerate(LENGTHS):
        toks = repeated_random_tokens(args.n_seqs, R, cfg.vocab_size, bos, seed=args.seed + 1000 * i)
        f, s = repeated_half_losses(model, toks, R)
        halves[R] = {"first_half_loss": f, "second_half_loss": s}

    # ---- SAE on held-out activations (BOS position excluded)
    acts = resid_activations(model, x, zoo.DEFAULT_SAE_SITE)[:, 1:]
    sae_all = sae_stats(sae, acts)

    # ---- fixed held-out snippet for the tests: first 2 windows' worth of text from each source
    pieces = []
    for src in ("brown", "kjv", "pydoc"):
        txt = next(t for s, t in zip(held_src, held_texts) if s == src)
        ids = tok(txt)["input_ids"][: 2 * (T - 1)]
        pieces.append(tok.decode(ids))
    sample = "\n\n".join(pieces)
    if not args.no_write:
        SAMPLE_PATH.write_text(sample, encoding="utf-8")
    sx = windows(np.asarray(tok(sample)["input_ids"]), T, bos)
    sacts = resid_activations(model, sx, zoo.DEFAULT_SAE_SITE)[:, 1:]
    sae_sample = sae_stats(sae, sacts)

    # ---- features
    with torch.no_grad():
        feats = sae.encode(acts.reshape(-1, acts.shape[-1])).reshape(acts.shape[0], acts.shape[1], -1)
    freq = (feats > 0).float().mean((0, 1))
    if args.dump_features:
        lines = []
        order = [int(i) for i in torch.argsort(freq, descending=True) if freq[i] > 0]
        # dump a spread of features over the frequency ranks
        step = max(1, len(order) // args.dump_features)
        cand = order[::step][: args.dump_features]
        for fid in cand:
            ctx = top_contexts(tok, x, feats, fid, k=6)
            lines.append(f"## feature {fid}  freq {float(freq[fid]):.4f}")
            lines += [f"   {c['act']:7.3f}  {c['context']}" for c in ctx]
        Path(args.dump_file).write_text("\n".join(lines))
        print(f"dumped {len(cand)} features to {args.dump_file}")
    features = []
    for fid, note in FEATURE_NOTES.items():
        features.append(
            {
                "feature": fid,
                "description": note,
                "frequency": round(float(freq[fid]), 5),
                "top_contexts": top_contexts(tok, x, feats, fid, k=8),
            }
        )

    n_params = sum(p.numel() for p in model.parameters())
    sizes = {
        "model_dir_bytes": sum(p.stat().st_size for p in zoo.MODEL_DIR.rglob("*") if p.is_file()),
        "sae_dir_bytes": sum(p.stat().st_size for p in zoo.SAE_DIR.rglob("*") if p.is_file()),
        "total_bytes": sum(p.stat().st_size for p in zoo.DEFAULT_DIR.rglob("*") if p.is_file()),
    }
    metrics = {
        "model": {
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
            "d_model": cfg.n_embd,
            "n_positions": cfg.n_positions,
            "vocab_size": cfg.vocab_size,
            "n_params": n_params,
        },
        "heldout": {
            "n_tokens": int(x.shape[0] * (x.shape[1] - 2)),
            "loss": held_loss,
            "unigram_entropy": H,
            "train_unigram_cross_entropy": unigram_xent,
            "logit_lens_loss_per_layer": lens,
        },
        "induction": {
            "lengths": list(LENGTHS),
            "n_seqs": args.n_seqs,
            "seed": args.seed,
            "best_head": ind["best_head"],
            "best_head_name": ind["best_head_name"],
            "best_head_score_per_length": {str(k): v for k, v in ind["per_length"].items()},
            "max_any_head_per_length": {str(k): v for k, v in ind["max_any_head_per_length"].items()},
            "repeated_halves": {str(k): v for k, v in halves.items()},
        },
        "sae": {
            "site": zoo.DEFAULT_SAE_SITE,
            "hook_name": zoo.DEFAULT_SAE_HOOK,
            "d_sae": int(sae.cfg.d_sae),
            "k": int(getattr(sae.cfg, "k", 0)),
            "heldout": sae_all,
            "sample": sae_sample,
            "features": features,
        },
        "sizes": sizes,
    }
    # ---- the per-layer dictionaries (scripts/train_default_dictionaries.py), if shipped
    if zoo.SAES_DIR.exists() or zoo.TRANSCODERS_DIR.exists():
        from train_default_dictionaries import measure as measure_dictionaries, print_table

        dic = measure_dictionaries(model, tok, x, zoo.DEFAULT_DIR, range(cfg.n_layer))
        metrics.update(dic)
        for sub in (zoo.SAES_DIR, zoo.TRANSCODERS_DIR):
            sizes[f"{sub.name}_dir_bytes"] = sum(p.stat().st_size for p in sub.rglob("*") if p.is_file())
        print_table(dic)
    if not args.no_write:
        zoo.METRICS_PATH.write_text(json.dumps(metrics, indent=1))

    # ---- markdown table
    print("| metric | value |\n|---|---|")
    print(f"| params | {n_params/1e6:.2f} M ({cfg.n_layer}L, d={cfg.n_embd}, {cfg.n_head} heads, vocab {cfg.vocab_size}) |")
    print(f"| held-out loss (nats/token) | {held_loss:.3f} |")
    print(f"| held-out unigram entropy | {H:.3f} (train-unigram x-ent {unigram_xent:.3f}) |")
    print("| logit-lens loss by layer (resid_post.0..) | " + " / ".join(f"{v:.3f}" for v in lens) + " |")
    print(f"| best induction head | {ind['best_head_name']} |")
    for R in LENGTHS:
        print(
            f"| induction R={R} (best head / max any head) | {ind['per_length'][R]:.3f} / "
            f"{ind['max_any_head_per_length'][R]:.3f} |"
        )
    for R in LENGTHS:
        h = halves[R]
        print(f"| loss 1st / 2nd copy, R={R} | {h['first_half_loss']:.3f} / {h['second_half_loss']:.3f} |")
    print(f"| SAE {zoo.DEFAULT_SAE_SITE} EV (held-out) | {sae_all['explained_variance']:.3f} |")
    print(f"| SAE L0 | {sae_all['l0']:.1f} |")
    print(f"| SAE dead fraction | {sae_all['dead_fraction']:.3f} |")
    print(f"| SAE EV / L0 on heldout_sample.txt | {sae_sample['explained_variance']:.3f} / {sae_sample['l0']:.1f} |")
    print(f"| artefact size | {sizes['total_bytes']/1e6:.2f} MB |")
    for f in features:
        print(f"\nfeature {f['feature']}: {f['description']} (freq {f['frequency']:.4f})")
        for c in f["top_contexts"][:5]:
            print(f"    {c['act']:.2f}  {c['context']}")
    print(f"\n(measured in {time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()
