"""SAEs: loading (SAELens folders saved by sae_lens itself, sae_lens objects, state dicts) and
encoding equal to sae_lens' own encode; clear errors when an SAE does not fit the model."""

from __future__ import annotations

import json

import pytest
import torch

from mechviz.models import HFAdapter
from mechviz.saes import SAE, SAEError, check_sae_fits, hook_to_site, load_sae

from .conftest import build_hf

sae_lens = pytest.importorskip("sae_lens")

D_IN, D_SAE = 48, 96


def make_sae_lens(arch: str, d_in: int = D_IN, d_sae: int = D_SAE, seed: int = 0, model_name="gpt2",
                  hook_name="blocks.1.hook_resid_post", **kw):
    """A real sae_lens SAE of ``arch`` with random weights (biases and thresholds non-zero)."""
    from sae_lens.saes.sae import SAEMetadata

    cls, cfg_cls = {"standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig),
                    "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig),
                    "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig)}[arch]
    torch.manual_seed(seed)
    sae = cls(cfg_cls(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(model_name=model_name, hook_name=hook_name),
                      **kw))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae) / d_in ** 0.5)
        sae.W_dec.copy_(torch.randn(d_sae, d_in) / d_in ** 0.5)
        sae.b_enc.copy_(torch.randn(d_sae) * 0.3)
        sae.b_dec.copy_(torch.randn(d_in) * 0.3)
        if arch == "jumprelu":
            sae.threshold.copy_(torch.rand(d_sae) * 0.5)
    return sae


VARIANTS = {
    "relu": ("standard", {}),
    "relu_no_bdec_in": ("standard", {"apply_b_dec_to_input": False}),
    "topk": ("topk", {"k": 7}),
    "topk_rescaled": ("topk", {"k": 7, "rescale_acts_by_decoder_norm": True}),
    "jumprelu": ("jumprelu", {}),
    "relu_layer_norm": ("standard", {"normalize_activations": "layer_norm"}),
    "topk_constant_norm": ("topk", {"k": 7, "normalize_activations": "constant_norm_rescale"}),
}


@pytest.fixture(scope="module")
def resid():
    """Real activations: resid_post.1 of a tiny GPT-2 on 40 tokens, plus random ones."""
    adapter = HFAdapter(build_hf("gpt2"))
    run = adapter.run(torch.arange(1, 41) * 7 % 300, capture=["resid_post.1"])
    return torch.cat([run["resid_post.1"], torch.randn(40, D_IN) * 2])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_folder_saved_by_sae_lens_encodes_like_sae_lens(variant, tmp_path, resid):
    arch, kw = VARIANTS[variant]
    ref = make_sae_lens(arch, **kw)
    ref.save_model(tmp_path)
    sae = load_sae(tmp_path)
    assert sae.architecture == {"standard": "relu"}.get(arch, arch)
    assert (sae.site, sae.hook_name, sae.model_name) == ("resid_post.1", "blocks.1.hook_resid_post", "gpt2")
    reloaded = type(ref).load_from_disk(tmp_path)   # sae_lens' own loader, same folder
    with torch.no_grad():
        want, want_disk = ref.encode(resid), reloaded.encode(resid)
        recon_want = ref.decode(want)
    got = sae.encode(resid)
    assert (want > 0).float().mean() > 0.02 and (want == 0).any()   # a real sparse code, not all-on / all-off
    err = float((got - want).abs().max())
    assert err <= 1e-5, err
    assert float((got - want_disk).abs().max()) <= 1e-5
    assert float((sae.decode(got, resid) - recon_want).abs().max()) <= 1e-5
    if arch == "topk":
        assert int((got != 0).sum(-1).max()) <= 7
    print(variant, f"max |mechviz - sae_lens| encode = {err:.1e}")


@pytest.mark.parametrize("variant", ["relu", "topk_rescaled", "jumprelu"])
def test_sae_lens_object_directly(variant, resid):
    arch, kw = VARIANTS[variant]
    ref = make_sae_lens(arch, **kw)
    sae = load_sae(ref, site="resid_post.2")
    assert sae.site == "resid_post.2"   # an explicit site overrides the hook name
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(resid), ref.encode(resid), atol=1e-5, rtol=0)


def test_training_saes_load_like_inference_saes(resid):
    torch.manual_seed(1)
    ref = sae_lens.JumpReLUTrainingSAE(sae_lens.JumpReLUTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE))
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        ref.threshold.abs_()   # training keeps thresholds >= 0 (below 0 its gate differs from JumpReLUSAE's)
        want = ref.encode(resid)
    torch.testing.assert_close(load_sae(ref, site="resid_pre.0").encode(resid), want, atol=1e-5, rtol=0)


def test_plain_state_dict_and_legacy_keys(resid):
    ref = make_sae_lens("jumprelu")
    state = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    with torch.no_grad():
        want = ref.encode(resid)
    sae = load_sae((state, {"architecture": "jumprelu", "site": "resid_post.1", "model_name": "gpt2"}))
    torch.testing.assert_close(sae.encode(resid), want, atol=1e-5, rtol=0)
    # older checkpoints store log_threshold
    old = dict(state, log_threshold=state["threshold"].log())
    del old["threshold"]
    torch.testing.assert_close(load_sae((old, {"architecture": "jumprelu"}), site="resid_post.1").encode(resid),
                               want, atol=1e-5, rtol=0)
    # a pre-6.0 SAELens config: flat keys, hook_point, topk through activation_fn_kwargs
    ref = make_sae_lens("topk", k=5)
    state = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    sae = load_sae((state, {"d_in": D_IN, "d_sae": D_SAE, "hook_point": "blocks.0.hook_mlp_out",
                            "activation_fn": "topk", "activation_fn_kwargs": {"k": 5}, "model_name": "gpt2"}))
    assert (sae.architecture, sae.k, sae.site) == ("topk", 5, "mlp_out.0")
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(resid), ref.encode(resid), atol=1e-5, rtol=0)


def test_hook_names_map_to_sites():
    assert hook_to_site("blocks.11.hook_resid_pre") == "resid_pre.11"
    assert hook_to_site("blocks.3.attn.hook_z") == "z.3"
    assert hook_to_site("blocks.0.hook_mlp_out") == "mlp_out.0"
    assert hook_to_site("model.layers.3") is None


def test_z_site_sae_flattens_heads():
    adapter = HFAdapter(build_hf("gpt2"))
    ref = make_sae_lens("standard", hook_name="blocks.0.attn.hook_z", reshape_activations="hook_z")
    sae = load_sae(ref)
    assert check_sae_fits(sae, adapter) == "z.0"
    z = adapter.run([0, 5, 9, 13], capture=["z.0"])["z.0"]          # [T, H, d_head]
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(z), ref.encode(z), atol=1e-5, rtol=0)


def test_fit_errors():
    adapter = HFAdapter(build_hf("gpt2"), name="gpt2")   # 3 layers, d_model 48
    good = load_sae(make_sae_lens("standard"))
    assert check_sae_fits(good, adapter) == "resid_post.1"
    with pytest.raises(SAEError, match=r"d_in=32 does not match site resid_post.1 .* 48 wide"):
        check_sae_fits(load_sae(make_sae_lens("standard", d_in=32)), adapter)
    with pytest.raises(SAEError, match=r"'resid_post.7' does not exist .*layers 0..2"):
        check_sae_fits(good.at("resid_post.7"), adapter)
    with pytest.raises(SAEError, match="unknown site 'resid_postt'"):
        check_sae_fits(good.at("resid_postt.1"), adapter)
    other = load_sae(make_sae_lens("standard", model_name="pythia-70m"))
    with pytest.raises(SAEError, match="trained on 'pythia-70m' but the model is 'gpt2'.*allow_model_mismatch"):
        check_sae_fits(other, adapter)
    assert check_sae_fits(other, adapter, allow_model_mismatch=True) == "resid_post.1"
    for same in ("openai-community/gpt2", "gpt2-small", "GPT2"):
        assert check_sae_fits(load_sae(make_sae_lens("standard", model_name=same)), adapter)
    from mechviz.saes.load import _same_model
    assert _same_model("EleutherAI/pythia-70m", "pythia-70m") and not _same_model("pythia-70m-deduped", "pythia-70m")
    with pytest.raises(SAEError, match="not attached to a site.*pass site="):
        check_sae_fits(load_sae(make_sae_lens("standard", hook_name="model.layers.1")), adapter)


def test_load_errors(tmp_path):
    with pytest.raises(SAEError, match="unsupported SAE architecture 'temporal'"):
        load_sae((dict(make_sae_lens("standard").state_dict()), {"architecture": "temporal"}))
    (tmp_path / "sae.pt").write_bytes(b"not read")
    with pytest.raises(SAEError, match="safetensors only"):
        load_sae(tmp_path / "sae.pt")
    with pytest.raises(FileNotFoundError, match="not a SAELens SAE folder: cfg.json, sae_weights.safetensors missing"):
        load_sae(tmp_path)
    ref = make_sae_lens("standard")
    ref.save_model(tmp_path / "norm")
    cfg = json.loads((tmp_path / "norm" / "cfg.json").read_text())
    cfg["normalize_activations"] = "expected_average_only_in"
    (tmp_path / "norm" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEError, match="expected_average_only_in.*pass load_sae\\(..., norm_scaling_factor=F\\)"):
        load_sae(tmp_path / "norm")
    state = {k: v.detach() for k, v in ref.state_dict().items()}
    with pytest.raises(SAEError, match="needs 0 < k <= d_sae"):
        load_sae((state, {"architecture": "topk"}))
    with pytest.raises(SAEError, match="W_dec has shape"):
        SAE(W_enc=state["W_enc"], b_enc=state["b_enc"], W_dec=state["W_dec"].T, b_dec=state["b_dec"])
    with pytest.raises(SAEError, match=r"unexpected SAE weights \['b_gates'\]"):
        load_sae((dict(state, b_gates=torch.zeros(D_SAE)), {}))
    with pytest.raises(SAEError, match="b_gate is a gated weight, but this SAE is relu"):
        load_sae((dict(state, b_gate=torch.zeros(D_SAE)), {}))


def test_repr_and_to():
    sae = load_sae(make_sae_lens("topk", k=7))
    assert repr(sae) == "SAE(topk, k=7, d_in=48, d_sae=96, site='resid_post.1', model='gpt2')"
    half = sae.to(dtype=torch.float64)
    assert half.W_enc.dtype == torch.float64 and sae.W_enc.dtype == torch.float32


def test_a_pickle_renamed_safetensors_is_refused_saying_what_it_is(tmp_path):
    """safetensors' own error ("header too large") did not say the file is a pickle; nothing is unpickled."""
    ref = make_sae_lens("standard")
    ref.save_model(tmp_path / "sae")
    torch.save({k: v.detach() for k, v in ref.state_dict().items()}, tmp_path / "sae" / "sae_weights.safetensors")
    for path in (tmp_path / "sae", tmp_path / "sae" / "sae_weights.safetensors"):
        with pytest.raises(SAEError, match=r"is a zip archive \(torch.save's format\), not safetensors.*never unpickles"):
            load_sae(path)
    import pickle

    (tmp_path / "sae" / "sae_weights.safetensors").write_bytes(pickle.dumps({"W_enc": [1.0]}, protocol=4))
    with pytest.raises(SAEError, match="is a pickle, not safetensors"):
        load_sae(tmp_path / "sae")
