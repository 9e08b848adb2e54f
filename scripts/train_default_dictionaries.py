#!/usr/bin/env python
"""Train a dictionary for every layer of mechviz's bundled default model, and measure them.

The model (``mechviz/zoo/default/model``) and its SAE (``default/sae``) are used as they are; this
script only adds, under ``--out`` (default ``mechviz/zoo/default``):

* ``saes/resid_post.{L}/``: a TopK SAE (``d_sae`` 1024, ``k`` 24) on the residual stream after block L
  (raw HF GPT-2 block output; TransformerLens ``blocks.L.hook_resid_post`` on an unfolded model), saved
  with sae_lens' ``TopKSAE(TopKSAEConfig(...)).save_model``. ``resid_post.1`` is a byte copy of the
  bundled ``sae/`` (trained by ``scripts/train_default_model.py`` with the same recipe and windows).
* ``transcoders/mlp.{L}/``: a per-layer transcoder (``d_sae`` 1024) from block L's MLP input (the
  output of ``ln_2``, affine included: exactly what the MLP reads; TransformerLens 4 / sae_lens name
  ``blocks.L.mlp.hook_in``; mechviz site name ``mlp_in.L``) to the MLP's output (``mlp_out.L``,
  ``blocks.L.hook_mlp_out``). Trained TopK (k 24) and saved as sae_lens' ``JumpReLUTranscoder``
  (sae_lens 6 has no TopK transcoder): see ``dictionary_training.topk_to_jumprelu``.
* ``metrics.json``: keys ``"saes"`` and ``"transcoders"`` (other keys kept): explained variance,
  mean L0, dead fraction on the held-out split and on ``heldout_sample.txt``, and the LM's loss /
  KL with the reconstruction spliced in (BOS position left clean).

Training data: windows ``[BOS] + 255`` tokens of the training split of the corpora of
``scripts/train_default_model.py`` (tokenised with the bundled tokenizer), at the offsets the bundled
SAE was trained on (``--tokens`` tokens, BOS excluded); all sites are collected in one pass.
Held out: the held-out split (every 20th Brown file, 40th KJV chapter, 20th pydoc topic), as in
``scripts/measure_default_model.py``.

Usage: ``python scripts/train_default_dictionaries.py --threads 1`` (``--measure-only`` re-measures the
saved folders; ``--layers 0,2`` / ``--kinds sae`` train a subset).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from dictionary_training import (  # noqa: E402
    TopKTrainer,
    collect_activations,
    dictionary_stats,
    log,
    sample_windows,
    spliced_losses,
    topk_to_jumprelu,
    train_topk,
)
from mechviz import zoo  # noqa: E402
from mechviz.zoo.metrics import site_to_hook_name  # noqa: E402

DATASET = "mechviz default corpus (Brown + KJV + pydoc topics, training split)"
MLP_IN_HOOK = "blocks.{L}.mlp.hook_in"
MLP_OUT_HOOK = "blocks.{L}.hook_mlp_out"
TC_NOTE = ("input: the output of block {L}'s ln_2 (LayerNorm of resid_mid.{L}, its affine weight and bias "
           "included), exactly what the MLP reads (HF transformer.h.{L}.mlp's input; TransformerLens 4 "
           "blocks.{L}.mlp.hook_in; on a TransformerLens 3 model without LN folding it is "
           "blocks.{L}.ln2.hook_normalized * ln2.w + ln2.b, not hook_normalized itself); output: the MLP's "
           "output added to the residual stream (mlp_out.{L}, blocks.{L}.hook_mlp_out). Trained TopK k={k}, "
           "saved as JumpReLU with per-feature thresholds keeping each feature's TopK firing rate; BOS position excluded")
SAE_NOTE = "raw HF GPT2 residual stream (no LN folding/centering), BOS position excluded"


def sae_dir(out: Path, L: int) -> Path:
    return out / "saes" / f"resid_post.{L}"


def tc_dir(out: Path, L: int) -> Path:
    return out / "transcoders" / f"mlp.{L}"


def save_sae(dic: TopKTrainer, k: int, L: int, T: int, path: Path):
    from sae_lens import TopKSAE, TopKSAEConfig

    d_in, d_sae = dic.W_enc.shape
    cfg = TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, dtype="float32", device="cpu")
    site = f"resid_post.{L}"
    md = cfg.metadata
    md.model_name, md.hook_name, md.hook_head_index = zoo.MODEL_NAME, site_to_hook_name(site), None
    md.prepend_bos, md.context_size, md.dataset_path = True, T, DATASET
    md.mechviz_site, md.mechviz_note = site, SAE_NOTE
    real = TopKSAE(cfg)
    with torch.no_grad():
        for n in ("W_enc", "W_dec", "b_enc", "b_dec"):
            getattr(real, n).copy_(getattr(dic, n).detach().cpu())
    if path.exists():
        shutil.rmtree(path)
    real.save_model(path)
    return real


def save_transcoder(weights: dict, k: int, L: int, T: int, path: Path):
    from sae_lens import JumpReLUTranscoder, JumpReLUTranscoderConfig

    d_in, d_sae = weights["W_enc"].shape
    cfg = JumpReLUTranscoderConfig(d_in=d_in, d_sae=d_sae, d_out=weights["W_dec"].shape[1], dtype="float32",
                                   device="cpu", apply_b_dec_to_input=False)
    md = cfg.metadata
    md.model_name, md.hook_name, md.hook_head_index = zoo.MODEL_NAME, MLP_IN_HOOK.format(L=L), None
    md.hook_name_out, md.hook_head_index_out = MLP_OUT_HOOK.format(L=L), None
    md.prepend_bos, md.context_size, md.dataset_path = True, T, DATASET
    md.mechviz_site, md.mechviz_site_out = f"mlp_in.{L}", f"mlp_out.{L}"
    md.mechviz_note = TC_NOTE.format(L=L, k=k)
    md.mechviz_trained_k = k
    real = JumpReLUTranscoder(cfg)
    with torch.no_grad():
        for n, v in weights.items():
            getattr(real, n).copy_(v.detach().cpu())
    if path.exists():
        shutil.rmtree(path)
    real.save_model(path)
    return real


def encode_docs(tok, texts) -> np.ndarray:
    out = []
    for e in tok.backend_tokenizer.encode_batch(texts):
        out.extend(e.ids)
        out.append(tok.bos_token_id)
    return np.asarray(out, dtype=np.int64)


def windows(ids: np.ndarray, T: int, bos: int) -> torch.Tensor:
    """Non-overlapping ``[BOS] + (T-1)`` windows (as ``measure_default_model.windows``)."""
    w = T - 1
    n = len(ids) // w
    x = np.empty((n, T), dtype=np.int64)
    x[:, 0] = bos
    x[:, 1:] = ids[: n * w].reshape(n, w)
    return torch.from_numpy(x)


def sample_tokens(model, tok) -> torch.Tensor:
    """``heldout_sample.txt`` as windows (what tests/test_zoo*.py recompute on)."""
    text = (zoo.DEFAULT_DIR / "heldout_sample.txt").read_text(encoding="utf-8")
    return windows(np.asarray(tok(text)["input_ids"]), model.config.n_positions, tok.bos_token_id)


def _r(d: dict) -> dict:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in d.items()}


def measure(model, tok, held_x: torch.Tensor, out: Path, layers) -> dict:
    """The ``"saes"`` / ``"transcoders"`` entries of metrics.json for the folders under ``out``."""
    from sae_lens import SAE

    sx = sample_tokens(model, tok)
    sites = [f"{n}.{L}" for L in layers for n in ("resid_post", "mlp_in", "mlp_out")]
    held = collect_activations(model, held_x, sites)
    samp = collect_activations(model, sx, sites)
    saes = {L: SAE.load_from_disk(str(sae_dir(out, L))) for L in layers if sae_dir(out, L).exists()}
    tcs = {L: SAE.load_from_disk(str(tc_dir(out, L))) for L in layers if tc_dir(out, L).exists()}
    variants = {}
    for L, s in saes.items():
        variants[f"sae{L}"] = (f"resid_post.{L}", lambda h, s=s: s.decode(s.encode(h)))
    for L, t in tcs.items():
        variants[f"tc{L}"] = ("mlp.{}".format(L), lambda h, t=t: t.decode(t.encode(h)))
        variants[f"zero{L}"] = ("mlp.{}".format(L), lambda h: torch.zeros_like(h))
    log(f"spliced losses for {len(variants)} variants on {held_x.shape[0]} held-out windows ...")
    sp = spliced_losses(model, held_x, variants)
    clean = sp["ce"]["clean"]
    res = {"saes": {}, "transcoders": {}}
    for L, s in saes.items():
        site = f"resid_post.{L}"
        st = dictionary_stats(s, held[site])
        ce = sp["ce"][f"sae{L}"]
        res["saes"][site] = {
            "folder": f"saes/{site}", "site": site, "hook_name": s.cfg.metadata.hook_name,
            "architecture": s.cfg.architecture(), "d_sae": int(s.cfg.d_sae), "k": int(s.cfg.k),
            "heldout": _r({**st, "ce_loss_clean": clean, "ce_loss_spliced": ce, "ce_loss_increase": ce - clean,
                           "kl_div": sp["kl"][f"sae{L}"]}),
            "sample": _r(dictionary_stats(s, samp[site])),
        }
    for L, t in tcs.items():
        st = dictionary_stats(t, held[f"mlp_in.{L}"], held[f"mlp_out.{L}"])
        ce, ce0 = sp["ce"][f"tc{L}"], sp["ce"][f"zero{L}"]
        res["transcoders"][f"mlp.{L}"] = {
            "folder": f"transcoders/mlp.{L}", "site_in": f"mlp_in.{L}", "site_out": f"mlp_out.{L}",
            "hook_name": t.cfg.metadata.hook_name, "hook_name_out": t.cfg.metadata.hook_name_out,
            "architecture": t.cfg.architecture(), "d_sae": int(t.cfg.d_sae),
            "trained_k": t.cfg.metadata.mechviz_trained_k,
            "heldout": _r({**st, "ce_loss_clean": clean, "ce_loss_spliced": ce, "ce_loss_increase": ce - clean,
                           "kl_div": sp["kl"][f"tc{L}"], "ce_loss_mlp_zero_ablated": ce0,
                           "ce_loss_recovered": (ce0 - ce) / (ce0 - clean) if ce0 != clean else None}),
            "sample": _r(dictionary_stats(t, samp[f"mlp_in.{L}"], samp[f"mlp_out.{L}"])),
        }
    res["dictionaries_note"] = (
        "held-out split of the corpora (BOS excluded); explained_variance = 1 - SSE/SST of the target (the input "
        "for SAEs, mlp_out for transcoders); dead_fraction: never > 0 on these tokens; ce_loss_*: mean next-token "
        "loss (nats) with the reconstruction spliced in at every non-BOS position (transcoders: the MLP's output "
        "replaced by the transcoder's), kl_div: mean KL(clean || spliced); ce_loss_recovered = (zero-ablated - "
        "spliced) / (zero-ablated - clean); sample: heldout_sample.txt. scripts/train_default_dictionaries.py")
    return res


def print_table(res: dict):
    print("| dictionary | reads -> writes | EV | L0 | dead | CE +Δ (nats) | KL |")
    print("|---|---|---|---|---|---|---|")
    for site, m in res["saes"].items():
        h = m["heldout"]
        print(f"| SAE {site} | {m['hook_name']} | {h['explained_variance']:.3f} | {h['l0']:.1f} | "
              f"{h['dead_fraction']:.3f} | {h['ce_loss_increase']:+.3f} | {h['kl_div']:.3f} |")
    for name, m in res["transcoders"].items():
        h = m["heldout"]
        print(f"| transcoder {name} | {m['site_in']} -> {m['site_out']} | {h['explained_variance']:.3f} | "
              f"{h['l0']:.1f} | {h['dead_fraction']:.3f} | {h['ce_loss_increase']:+.3f} "
              f"(MLP zeroed {h['ce_loss_mlp_zero_ablated'] - h['ce_loss_clean']:+.3f}) | {h['kl_div']:.3f} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(zoo.DEFAULT_DIR))
    ap.add_argument("--corpus-dir", default="/tmp/corpora")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--layers", default="", help="comma-separated layers (default: all)")
    ap.add_argument("--kinds", default="sae,transcoder")
    ap.add_argument("--sae-layers", default="", help="comma-separated layers to train SAEs for (default: --layers)")
    ap.add_argument("--retrain-layer1-sae", action="store_true",
                    help="train saes/resid_post.1 instead of copying the bundled sae/")
    ap.add_argument("--d-sae", type=int, default=1024)
    ap.add_argument("--k", type=int, default=24)
    ap.add_argument("--tokens", type=int, default=800_000)
    ap.add_argument("--sae-epochs", type=int, default=3)
    ap.add_argument("--tc-epochs", type=int, default=6)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--aux", type=float, default=1 / 32)
    ap.add_argument("--dead-steps", type=int, default=300)
    ap.add_argument("--measure-only", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="do not write metrics.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()

    from train_default_model import load_corpora

    out = Path(args.out)
    model, tok = zoo.load_default_model(attn_implementation="eager")
    T, bos = model.config.n_positions, tok.bos_token_id
    layers = [int(v) for v in args.layers.split(",")] if args.layers else list(range(model.config.n_layer))
    kinds = set(args.kinds.split(","))
    sae_layers = [int(v) for v in args.sae_layers.split(",")] if args.sae_layers else layers
    docs = load_corpora(Path(args.corpus_dir))
    held_x = windows(encode_docs(tok, [t for _s, t, h in docs if h]), T, bos)

    if not args.measure_only:
        stream = encode_docs(tok, [t for _s, t, h in docs if not h])
        x = sample_windows(stream, args.tokens, T, bos, args.seed)
        sites = [f"{n}.{L}" for L in layers for n in ("resid_post", "mlp_in", "mlp_out")]
        log(f"collecting {len(sites)} sites for {x.shape[0] * (T - 1)} tokens ...")
        acts = collect_activations(model, x, sites)
        perm = torch.randperm(x.shape[0] * (T - 1), generator=torch.Generator().manual_seed(args.seed))
        acts = {s: a[perm] for s, a in acts.items()}
        log(f"collected in {time.time() - t0:.0f}s")
        for L in layers:
            if "sae" in kinds and L in sae_layers:
                if L == 1 and not args.retrain_layer1_sae:
                    dst = sae_dir(out, 1)
                    if dst.exists():
                        shutil.rmtree(dst)
                    shutil.copytree(zoo.SAE_DIR, dst)
                    log(f"copied {zoo.SAE_DIR} -> {dst}")
                else:
                    t1 = time.time()
                    torch.manual_seed(args.seed + 1 + 10 * L)
                    a = acts[f"resid_post.{L}"]
                    dic = TopKTrainer(a.shape[1], args.d_sae, args.k, a.median(0).values)
                    train_topk(dic, a, None, lr=args.lr, epochs=args.sae_epochs, batch=args.batch, aux=args.aux,
                               dead_steps=args.dead_steps, name=f"sae resid_post.{L}")
                    save_sae(dic, args.k, L, T, sae_dir(out, L))
                    log(f"saved {sae_dir(out, L)} ({time.time() - t1:.0f}s)")
            if "transcoder" in kinds:
                t1 = time.time()
                torch.manual_seed(args.seed + 2 + 10 * L)
                xi, yo = acts[f"mlp_in.{L}"], acts[f"mlp_out.{L}"]
                dic = TopKTrainer(xi.shape[1], args.d_sae, args.k, yo.median(0).values, d_out=yo.shape[1])
                train_topk(dic, xi, yo, lr=args.lr, epochs=args.tc_epochs, batch=args.batch, aux=args.aux,
                           dead_steps=args.dead_steps, name=f"transcoder mlp.{L}")
                st = dictionary_stats(dic, xi[:50_000], yo[:50_000])
                log(f"transcoder mlp.{L} TopK (train acts) EV {st['explained_variance']:.3f} L0 {st['l0']:.1f}")
                w = topk_to_jumprelu(dic, xi, yo, name=f"transcoder mlp.{L}")
                save_transcoder(w, args.k, L, T, tc_dir(out, L))
                log(f"saved {tc_dir(out, L)} ({time.time() - t1:.0f}s)")
        del acts

    res = measure(model, tok, held_x, out, layers)
    print_table(res)
    if not args.no_write:
        metrics = json.loads(zoo.METRICS_PATH.read_text()) if zoo.METRICS_PATH.exists() else {}
        for key in ("saes", "transcoders"):
            metrics.setdefault(key, {}).update(res[key])
        metrics["dictionaries_note"] = res["dictionaries_note"]
        files = [p for p in zoo.DEFAULT_DIR.rglob("*") if p.is_file()]
        sizes = metrics.setdefault("sizes", {})
        for sub in ("saes", "transcoders"):
            sizes[f"{sub}_dir_bytes"] = sum(p.stat().st_size for p in (zoo.DEFAULT_DIR / sub).rglob("*") if p.is_file())
        sizes["total_bytes"] = sum(p.stat().st_size for p in files)
        zoo.METRICS_PATH.write_text(json.dumps(metrics, indent=1))
        log(f"wrote {zoo.METRICS_PATH}")
    log(f"done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
