"""The bundled default model / tokenizer / SAE (mechviz/zoo/default) load through the real
HF and SAELens loaders and still have the properties recorded in metrics.json."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechviz import zoo
from mechviz.zoo.metrics import (
    induction_scores,
    logit_lens_losses,
    mean_loss,
    repeated_half_losses,
    repeated_random_tokens,
    resid_activations,
    sae_stats,
    site_to_hook_name,
)

MAX_BYTES = 15 * 1024 * 1024


@pytest.fixture(scope="module")
def metrics():
    m = zoo.load_metrics()
    assert m, "mechviz/zoo/default/metrics.json missing (run scripts/measure_default_model.py)"
    return m


@pytest.fixture(scope="module")
def model_tok():
    from transformers import AutoModelForCausalLM, GPT2LMHeadModel

    model, tok = zoo.load_default_model(attn_implementation="eager")
    assert isinstance(model, GPT2LMHeadModel)
    # and the plain HF entry point works on the folder too
    again = AutoModelForCausalLM.from_pretrained(str(zoo.MODEL_DIR), local_files_only=True)
    sd1, sd2 = model.state_dict(), again.state_dict()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    return model, tok


@pytest.fixture(scope="module")
def sae():
    pytest.importorskip("sae_lens")
    return zoo.load_default_sae()


def test_artefact_files_and_size():
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (zoo.MODEL_DIR / f).is_file(), f
    for f in ("cfg.json", "sae_weights.safetensors"):
        assert (zoo.SAE_DIR / f).is_file(), f
    total = sum(p.stat().st_size for p in zoo.DEFAULT_DIR.rglob("*") if p.is_file())
    assert total <= MAX_BYTES, total
    assert (zoo.DEFAULT_DIR / "LICENSES.md").is_file()


def test_model_config(model_tok, metrics):
    model, tok = model_tok
    cfg = model.config
    assert not model.training
    assert cfg.n_layer >= 4 and cfg.n_layer == metrics["model"]["n_layer"]
    assert cfg.vocab_size == len(tok) == metrics["model"]["vocab_size"]
    assert tok.bos_token == tok.eos_token == "<|endoftext|>"
    assert cfg.bos_token_id == tok.bos_token_id


def test_tokenizer_roundtrip(model_tok):
    _, tok = model_tok
    for s in [
        "In the beginning God created the heaven and the earth.",
        'The jury said "no evidence" was found -- 1961, in Atlanta.',
        "def f(x):\n    return x ** 2  # comment\n",
        "Ünïcödé → ok ✓",
    ]:
        ids = tok(s)["input_ids"]
        assert tok.decode(ids) == s
        assert len(ids) < len(s.encode("utf-8"))  # BPE actually merges
    ids = tok("a<|endoftext|>b")["input_ids"]
    assert tok.bos_token_id in ids


def test_induction_head(model_tok, metrics):
    model, tok = model_tok
    layer, head = metrics["induction"]["best_head"]
    recorded = metrics["induction"]["best_head_score_per_length"]
    for i, R in enumerate((20, 30, 40, 60)):
        toks = repeated_random_tokens(8, R, model.config.vocab_size, tok.bos_token_id, seed=4242 + i)
        score = float(induction_scores(model, toks, R)[layer, head])
        assert score >= min(0.4, recorded[str(R)] - 0.1), (R, score, recorded[str(R)])
        assert abs(score - recorded[str(R)]) < 0.15, (R, score, recorded[str(R)])


def test_repeated_half_is_predicted(model_tok, metrics):
    model, tok = model_tok
    R = 40
    toks = repeated_random_tokens(8, R, model.config.vocab_size, tok.bos_token_id, seed=777)
    first, second = repeated_half_losses(model, toks, R)
    rec = metrics["induction"]["repeated_halves"][str(R)]
    assert first > 6.0  # random tokens are unpredictable (ln 2048 = 7.6)
    gap = rec["first_half_loss"] - rec["second_half_loss"]
    assert gap > 0.5, rec  # the repeated half is predicted much better (recorded)
    assert first - second > 0.5 * gap, (first, second, rec)
    assert abs(second - rec["second_half_loss"]) < 0.5, (second, rec)


def test_heldout_sample_loss(model_tok, metrics):
    model, tok = model_tok
    text = (zoo.DEFAULT_DIR / "heldout_sample.txt").read_text(encoding="utf-8")
    ids = np.asarray(tok(text)["input_ids"])
    T = model.config.n_positions
    n = len(ids) // (T - 1)
    x = torch.full((n, T), tok.bos_token_id)
    x[:, 1:] = torch.from_numpy(ids[: n * (T - 1)].reshape(n, T - 1))
    loss = mean_loss(model, x)
    # far better than a unigram model of the held-out text
    assert loss < metrics["heldout"]["unigram_entropy"] - 1.0, loss
    # logit lens sharpens with depth (recorded on the whole held-out split)
    lens = logit_lens_losses(model, x)
    assert abs(lens[-1] - loss) < 1e-3
    assert all(a > b for a, b in zip(lens, lens[1:])), lens
    rec = metrics["heldout"]["logit_lens_loss_per_layer"]
    assert all(a > b for a, b in zip(rec, rec[1:])), rec


def test_sae_loads_and_matches_site(sae, model_tok):
    model, _ = model_tok
    assert sae.cfg.d_in == model.config.n_embd
    assert sae.cfg.metadata.hook_name == zoo.DEFAULT_SAE_HOOK == site_to_hook_name(zoo.DEFAULT_SAE_SITE)
    assert sae.cfg.architecture() in ("topk", "standard")


def test_sae_quality_on_heldout_sample(sae, model_tok, metrics):
    model, tok = model_tok
    text = (zoo.DEFAULT_DIR / "heldout_sample.txt").read_text(encoding="utf-8")
    ids = np.asarray(tok(text)["input_ids"])
    T = model.config.n_positions
    n = len(ids) // (T - 1)
    x = torch.full((n, T), tok.bos_token_id)
    x[:, 1:] = torch.from_numpy(ids[: n * (T - 1)].reshape(n, T - 1))
    acts = resid_activations(model, x, zoo.DEFAULT_SAE_SITE)[:, 1:]
    st = sae_stats(sae, acts)
    rec = metrics["sae"]["sample"]
    assert st["explained_variance"] >= 0.8
    assert abs(st["explained_variance"] - rec["explained_variance"]) < 0.02
    assert st["l0"] <= 40
    assert abs(st["l0"] - rec["l0"]) < 1.0
    assert metrics["sae"]["heldout"]["dead_fraction"] < 0.2
    assert len(metrics["sae"]["features"]) >= 5
