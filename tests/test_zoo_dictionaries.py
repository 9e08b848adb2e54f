"""The bundled model's per-layer dictionaries (``mechviz/zoo/default/saes/resid_post.L`` and
``transcoders/mlp.L``, trained by ``scripts/train_default_dictionaries.py``) load with sae_lens and
mechviz, read the activations their configs name, and reproduce the numbers in metrics.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mechviz import zoo
from mechviz.zoo.metrics import resid_activations

sae_lens = pytest.importorskip("sae_lens")

LAYERS = range(4)
SAE_DIRS = {L: zoo.DEFAULT_DIR / "saes" / f"resid_post.{L}" for L in LAYERS}
TC_DIRS = {L: zoo.DEFAULT_DIR / "transcoders" / f"mlp.{L}" for L in LAYERS}
# metrics.json was measured with a batched forward pass; here one window at a time through mechviz's
# adapter: float32 round-off only, and at most a rare JumpReLU threshold crossing in L0
EV_TOL, L0_TOL = 2e-3, 0.1


@pytest.fixture(scope="module")
def metrics():
    return zoo.load_metrics()


@pytest.fixture(scope="module")
def model_tok():
    return zoo.load_default_model(attn_implementation="eager")


@pytest.fixture(scope="module")
def sample(model_tok):
    """heldout_sample.txt as [BOS] + 255-token windows (as scripts/train_default_dictionaries.py)."""
    model, tok = model_tok
    ids = np.asarray(tok((zoo.DEFAULT_DIR / "heldout_sample.txt").read_text(encoding="utf-8"))["input_ids"])
    T = model.config.n_positions
    n = len(ids) // (T - 1)
    x = torch.full((n, T), tok.bos_token_id)
    x[:, 1:] = torch.from_numpy(ids[: n * (T - 1)].reshape(n, T - 1))
    return x


@pytest.fixture(scope="module")
def acts(model_tok, sample):
    """Sample activations (BOS excluded), flattened: mechviz sites resid_post.L / mlp_out.L, and the
    MLP's input mlp_in.L = ln_2(resid_mid.L), checked against what the HF MLP module receives."""
    model, _ = model_tok
    out = {}
    for L in LAYERS:
        for site in (f"resid_post.{L}", f"mlp_out.{L}", f"resid_mid.{L}"):
            out[site] = resid_activations(model, sample, site)[:, 1:].reshape(-1, model.config.n_embd)
        with torch.no_grad():
            out[f"mlp_in.{L}"] = model.transformer.h[L].ln_2(out[f"resid_mid.{L}"])
    seen = []
    h = model.transformer.h[2].mlp.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        model(sample[:1])
    h.remove()
    torch.testing.assert_close(seen[0][0, 1:], out["mlp_in.2"][: sample.shape[1] - 1], atol=1e-4, rtol=1e-4)
    return out


def _load(folder):
    from sae_lens import SAE

    return SAE.load_from_disk(str(folder), device="cpu")


def test_folders_and_bundle_size():
    for d in [*SAE_DIRS.values(), *TC_DIRS.values()]:
        assert (d / "cfg.json").is_file() and (d / "sae_weights.safetensors").is_file(), d
    total = sum(p.stat().st_size for p in zoo.DEFAULT_DIR.rglob("*") if p.is_file())
    assert total < 15_000_000, total
    # layer 1's SAE is the bundled sae/, byte for byte
    for f in ("cfg.json", "sae_weights.safetensors"):
        assert (SAE_DIRS[1] / f).read_bytes() == (zoo.SAE_DIR / f).read_bytes()


@pytest.mark.parametrize("L", LAYERS)
def test_sae_loads_with_sae_lens_and_mechviz(L, acts):
    from mechviz.saes import load_sae

    s = _load(SAE_DIRS[L])
    assert isinstance(s, sae_lens.TopKSAE) and s.cfg.architecture() == "topk"
    assert (s.cfg.d_in, s.cfg.d_sae, s.cfg.k) == (128, 1024, 24)
    md = s.cfg.metadata
    assert (md.model_name, md.hook_name, md.mechviz_site) == (zoo.MODEL_NAME, f"blocks.{L}.hook_resid_post",
                                                              f"resid_post.{L}")
    m = load_sae(SAE_DIRS[L])
    assert m.site == f"resid_post.{L}" and m.model_name == zoo.MODEL_NAME
    x = acts[f"resid_post.{L}"][:200]
    with torch.no_grad():
        torch.testing.assert_close(m.encode(x), s.encode(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(m.decode(m.encode(x)), s.decode(s.encode(x)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("L", LAYERS)
def test_transcoder_loads_with_sae_lens(L):
    t = _load(TC_DIRS[L])
    assert isinstance(t, sae_lens.JumpReLUTranscoder) and t.cfg.architecture() == "jumprelu_transcoder"
    assert (t.cfg.d_in, t.cfg.d_sae, t.cfg.d_out) == (128, 1024, 128)
    assert not t.cfg.apply_b_dec_to_input and (t.threshold >= 0).all()
    md = t.cfg.metadata
    assert (md.model_name, md.hook_name, md.hook_name_out) == (zoo.MODEL_NAME, f"blocks.{L}.mlp.hook_in",
                                                               f"blocks.{L}.hook_mlp_out")
    assert (md.mechviz_site, md.mechviz_site_out) == (f"mlp_in.{L}", f"mlp_out.{L}")
    cfg = json.loads((TC_DIRS[L] / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu_transcoder" and cfg["d_out"] == 128


@pytest.mark.parametrize("L", LAYERS)
def test_transcoder_with_mechviz(L, acts):
    """mechviz.saes.load_sae reads transcoders once mechviz supports them (being added separately):
    until then this is skipped, and the folders are checked with sae_lens only (above)."""
    from mechviz.saes import SAEError, load_sae

    try:
        m = load_sae(TC_DIRS[L])
    except SAEError as exc:
        if "architecture" in str(exc):
            pytest.skip(f"this mechviz cannot load transcoders yet: {exc}")
        raise
    assert m.site == f"mlp_in.{L}" and getattr(m, "site_out", None) == f"mlp_out.{L}"
    t = _load(TC_DIRS[L])
    x = acts[f"mlp_in.{L}"][:200]
    with torch.no_grad():
        torch.testing.assert_close(m.encode(x), t.encode(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(m.decode(m.encode(x)), t.decode(t.encode(x)), atol=1e-5, rtol=0)


def _stats(dic, x, y):
    with torch.no_grad():
        f = dic.encode(x)
        yh = dic.decode(f)
    ev = 1 - ((y - yh) ** 2).sum().item() / ((y - y.mean(0)) ** 2).sum().item()
    return ev, (f > 0).sum(-1).float().mean().item()


@pytest.mark.parametrize("L", LAYERS)
def test_recorded_metrics_reproduce(L, acts, metrics):
    rec_s = metrics["saes"][f"resid_post.{L}"]
    rec_t = metrics["transcoders"][f"mlp.{L}"]
    x = acts[f"resid_post.{L}"]
    ev, l0 = _stats(_load(SAE_DIRS[L]), x, x)
    assert abs(ev - rec_s["sample"]["explained_variance"]) < EV_TOL, (ev, rec_s["sample"])
    assert abs(l0 - rec_s["sample"]["l0"]) < L0_TOL, (l0, rec_s["sample"])
    ev, l0 = _stats(_load(TC_DIRS[L]), acts[f"mlp_in.{L}"], acts[f"mlp_out.{L}"])
    assert abs(ev - rec_t["sample"]["explained_variance"]) < EV_TOL, (ev, rec_t["sample"])
    assert abs(l0 - rec_t["sample"]["l0"]) < L0_TOL, (l0, rec_t["sample"])
    # and the held-out numbers are sane: useful dictionaries, few dead features, splicing costs little
    for rec in (rec_s, rec_t):
        h = rec["heldout"]
        assert h["explained_variance"] > 0.6 and 10 < h["l0"] < 40 and h["dead_fraction"] < 0.25, h
        assert h["ce_loss_spliced"] >= h["ce_loss_clean"] - 0.01
    assert rec_t["heldout"]["ce_loss_spliced"] < rec_t["heldout"]["ce_loss_mlp_zero_ablated"]
