"""The bundled model's routes: it carries its own name (so its SAE fits it), a TransformerLens copy of it
equals the HF model site by site and takes the same SAE, and the README's snippets run offline."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mechviz
from mechviz import zoo
from mechviz.analysis.features import feature_activations
from mechviz.models import UnsupportedModelError, wrap
from mechviz.saes import check_sae_fits, load_sae
from mechviz.saes.sae import SAEError

from .conftest import _tokenizer, build_hf

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "In the beginning God created the heaven and the earth. And God said, Let there be light"


@pytest.fixture(scope="module")
def hf():
    return zoo.load_default_model()


@pytest.fixture(scope="module")
def tl():
    pytest.importorskip("transformer_lens")
    return zoo.load_default_model(backend="transformer_lens")


def test_the_model_carries_the_name_its_sae_records(hf):
    model, tok = hf
    cfg = json.loads((zoo.SAE_DIR / "cfg.json").read_text())
    assert cfg["metadata"]["model_name"] == zoo.MODEL_NAME == "mechviz-default"
    assert model.config.name_or_path == model.name_or_path == zoo.MODEL_NAME
    assert wrap(model, tok).name == "mechviz-default"
    lab = mechviz.Lab(*zoo.load_default_model(), sae=zoo.SAE_DIR)
    assert lab.model.name == "mechviz-default" and lab.sae.site == zoo.DEFAULT_SAE_SITE
    acts = feature_activations(lab.sae, lab.run(PROMPT, capture=[lab.sae.site]))
    assert acts.shape == (len(lab.model.to_tokens(PROMPT)), 1024)
    assert ((acts > 0).sum(1) == 24).all()  # TopK, k = 24, at every token


def test_the_mismatch_check_still_refuses_other_names():
    from transformers import AutoModelForCausalLM

    sae = load_sae(zoo.SAE_DIR)
    plain = AutoModelForCausalLM.from_pretrained(str(zoo.MODEL_DIR), local_files_only=True)  # named by its folder
    with pytest.raises(SAEError, match="trained on 'mechviz-default' but the model is '.*zoo/default/model'"):
        check_sae_fits(sae, wrap(plain))
    with pytest.raises(SAEError, match="trained on 'mechviz-default' but the model is 'gpt2'"):
        check_sae_fits(sae, wrap(plain, name="gpt2"))
    assert check_sae_fits(sae, wrap(plain, name="mechviz-default")) == "resid_post.1"


def test_loading_draws_no_progress_bar_and_leaves_the_setting_as_it_was(capfd):
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    zoo.load_default_model()
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out, err)
    assert hf_logging.is_progress_bar_enabled() == enabled
    if hasattr(hf_logging, "set_tqdm_hook"):  # the hook is put back: None here, as before the call
        assert hf_logging.set_tqdm_hook(None) is None
    buf = io.StringIO()
    for _ in hf_logging.tqdm(range(3), desc="after", file=buf):  # transformers' bars draw again
        pass
    assert ("after" in buf.getvalue()) == enabled


def test_tl_copy_is_a_hooked_transformer_with_the_tokenizer_and_no_folding(tl):
    from transformer_lens import HookedTransformer

    model, tok = tl
    assert isinstance(model, HookedTransformer) and not model.training
    assert tok is model.tokenizer and tok is not None
    assert model.cfg.model_name == "mechviz-default"
    assert model.cfg.normalization_type == "LN"  # "LNPre" would mean LayerNorm was folded
    assert model.cfg.n_layers == 4 and model.cfg.d_model == 128 and model.cfg.d_vocab == 2048
    for n in ("ln1", "ln2"):  # unfolded: the trained LayerNorm weights are still there
        assert not torch.allclose(getattr(model.blocks[0], n).w, torch.ones(128))


def test_tl_copy_equals_the_hf_model_site_by_site(hf, tl):
    a, b = wrap(*hf), wrap(tl[0])
    assert a.name == b.name == "mechviz-default"
    assert torch.equal(a.to_tokens(PROMPT), b.to_tokens(PROMPT))
    sites = [f"resid_post.{i}" for i in range(4)] + ["attn_pattern.2", "z.1", "mlp_out.3"]
    ra, rb = a.run(PROMPT, capture=sites), b.run(PROMPT, capture=sites)
    torch.testing.assert_close(ra.logits, rb.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(ra["resid_post.1"], rb["resid_post.1"], atol=1e-5, rtol=0)
    for site in sites:
        torch.testing.assert_close(ra[site], rb[site], atol=1e-4, rtol=1e-5, msg=lambda m: f"{site}: {m}")
    assert float(ra.logits.std()) > 1.0  # a trained model, not a degenerate one


def test_the_sae_fits_the_tl_copy_and_reads_the_same_features(hf, tl):
    tl_lab = mechviz.Lab(tl[0], sae=zoo.SAE_DIR)
    hf_lab = mechviz.Lab(*hf, sae=zoo.SAE_DIR)
    assert tl_lab.model.name == "mechviz-default" and type(tl_lab.model).__name__ == "TLAdapter"
    site = tl_lab.sae.site
    fa = feature_activations(hf_lab.sae, hf_lab.run(PROMPT, capture=[site]))
    fb = feature_activations(tl_lab.sae, tl_lab.run(PROMPT, capture=[site]))
    assert (fa > 0).sum() > 0
    assert ((fa > 0) == (fb > 0)).all()
    assert abs(fa - fb).max() < 1e-4


def test_hf_to_tl_leaves_the_model_alone_and_names_the_copy():
    pytest.importorskip("transformer_lens")
    from mechviz.models.tl_convert import hf_to_tl

    model = build_hf("gpt2").eval()  # eval: no dropout in the reference pass
    before = model.config.to_dict()
    copy = hf_to_tl(model)
    assert model.config.to_dict() == before
    assert copy.cfg.model_name == "gpt2" and copy.tokenizer is None  # built from a config: named by its type
    ids = torch.tensor([[0, 5, 17, 42]])
    torch.testing.assert_close(copy(ids), model(ids).logits, atol=1e-4, rtol=0)


def test_hf_to_tl_refuses_what_it_cannot_convert():
    pytest.importorskip("transformer_lens")
    from transformers import MistralConfig, MistralForCausalLM

    from mechviz.models.tl_convert import hf_to_tl

    m = MistralForCausalLM(MistralConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2,
                                         num_key_value_heads=1, intermediate_size=32, vocab_size=50))
    with pytest.raises(UnsupportedModelError, match="model types gpt2, gpt_neox, llama; this model is 'mistral'"):
        hf_to_tl(m)
    with pytest.raises(ValueError, match="this one was built in memory"):
        hf_to_tl(build_hf("gpt2"), _tokenizer())  # TransformerLens would fail on it with a KeyError
    with pytest.raises(ValueError, match="backend must be one of"):
        zoo.load_default_model(backend="tl")
    with pytest.raises(ValueError, match="HF backend only"):
        zoo.load_default_model(backend="transformer_lens", attn_implementation="eager")


def test_without_transformer_lens_the_error_says_what_to_install(monkeypatch):
    from mechviz.models.tl_convert import hf_to_tl

    monkeypatch.setitem(sys.modules, "transformer_lens", None)  # as if it were not installed
    with pytest.raises(ImportError, match="pip install transformer-lens"):
        hf_to_tl(build_hf("gpt2"))
    with pytest.raises(ImportError, match="pip install transformer-lens"):
        zoo.load_default_model(backend="transformer_lens")


def _readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_the_readme_routes_run_offline():
    """The README's code for the bundled model, run as written in a fresh interpreter with the hub off."""
    pytest.importorskip("transformer_lens")
    blocks = re.findall(r"```python\n(.*?)```", _readme_section("The bundled default model"), re.S)
    assert blocks and "backend=\"transformer_lens\"" in blocks[0]
    check = ("\nimport json\nprint(json.dumps([lab.model.name, tl_lab.model.name, type(tl_lab.model).__name__, "
             "lab.sae.site, tl_lab.sae.site]))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", "\n".join(blocks) + check], capture_output=True, text=True,
                          env=env, cwd=str(ROOT), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [
        "mechviz-default", "mechviz-default", "TLAdapter", "resid_post.1", "resid_post.1"]
    assert proc.stderr == ""  # no progress bar, no warning
