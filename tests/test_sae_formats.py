"""Every dictionary SAELens saves for inference, loaded by mechviz and compared with sae_lens itself:
architectures (standard, topk, abstopk, jumprelu, gated; batchtopk and matryoshka as saved) x kinds (SAE,
transcoder, skip transcoder) x input normalisations (none, constant_norm_rescale, layer_norm,
expected_average_only_in). Each sae_lens object gets seeded random weights, is saved with sae_lens' own
method, loaded from the folder and from the object, and encode / decode / forward compared to 1e-5."""

from __future__ import annotations

import copy
import json

import pytest
import numpy as np
import torch

from mechviz.saes import SAE, SAEError, load_sae

sae_lens = pytest.importorskip("sae_lens")
from sae_lens.saes.sae import SAEMetadata  # noqa: E402

D_IN, D_SAE, D_OUT = 48, 96, 40
HOOK, HOOK_OUT = "blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out"

#: name -> (sae_lens class, config class, config kwargs, mechviz architecture, kind)
ARCHS = {
    "standard": ("StandardSAE", "StandardSAEConfig", {}, "relu", "sae"),
    "standard_no_bdec_in": ("StandardSAE", "StandardSAEConfig", {"apply_b_dec_to_input": False}, "relu", "sae"),
    "topk": ("TopKSAE", "TopKSAEConfig", {"k": 7}, "topk", "sae"),
    "topk_rescaled": ("TopKSAE", "TopKSAEConfig", {"k": 7, "rescale_acts_by_decoder_norm": True}, "topk", "sae"),
    "abstopk": ("AbsTopKSAE", "AbsTopKSAEConfig", {"k": 7}, "abstopk", "sae"),
    "abstopk_rescaled": ("AbsTopKSAE", "AbsTopKSAEConfig", {"k": 7, "rescale_acts_by_decoder_norm": True},
                         "abstopk", "sae"),
    "jumprelu": ("JumpReLUSAE", "JumpReLUSAEConfig", {}, "jumprelu", "sae"),
    "gated": ("GatedSAE", "GatedSAEConfig", {}, "gated", "sae"),
    "transcoder": ("Transcoder", "TranscoderConfig", {"d_out": D_OUT, "apply_b_dec_to_input": False},
                   "relu", "transcoder"),
    "skip_transcoder": ("SkipTranscoder", "SkipTranscoderConfig", {"d_out": D_OUT, "apply_b_dec_to_input": False},
                        "relu", "skip_transcoder"),
    # d_out == d_in: a W_skip read the wrong way round would still have the right shape
    "skip_transcoder_square": ("SkipTranscoder", "SkipTranscoderConfig",
                               {"d_out": D_IN, "apply_b_dec_to_input": False}, "relu", "skip_transcoder"),
    "jumprelu_transcoder": ("JumpReLUTranscoder", "JumpReLUTranscoderConfig",
                            {"d_out": D_OUT, "apply_b_dec_to_input": False}, "jumprelu", "transcoder"),
    "jumprelu_skip_transcoder": ("JumpReLUSkipTranscoder", "JumpReLUSkipTranscoderConfig",
                                 {"d_out": D_IN, "apply_b_dec_to_input": False}, "jumprelu", "skip_transcoder"),
}
NORMS = ["none", "constant_norm_rescale", "layer_norm", "expected_average_only_in"]
FACTOR = 0.37   # a dataset-wide norm scaling factor (sqrt(d_in) / mean ||x||)


def randomize(sae, seed: int = 0):
    """Seeded random values for every parameter (thresholds positive, so a real sparse code)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if name == "threshold":
                p.copy_(torch.rand(p.shape, generator=g) * 0.5)
            elif name == "r_mag":
                p.copy_(r * 0.2)
            elif name.startswith("W_"):
                p.copy_(r / D_IN ** 0.5)
            else:
                p.copy_(r * 0.3)
    return sae


def make(name: str, norm: str = "none", seed: int = 0):
    cls, cfg_cls, kw, _, kind = ARCHS[name]
    meta = SAEMetadata(model_name="gpt2", hook_name=HOOK, **({"hook_name_out": HOOK_OUT} if kind != "sae" else {}))
    cfg = getattr(sae_lens, cfg_cls)(d_in=D_IN, d_sae=D_SAE, normalize_activations=norm, metadata=meta, **kw)
    return randomize(getattr(sae_lens, cls)(cfg), seed)


@pytest.fixture(scope="module")
def x():
    g = torch.Generator().manual_seed(123)
    return torch.cat([torch.randn(64, D_IN, generator=g) * 2, torch.randn(16, D_IN, generator=g) * 0.3 + 1.0])


def reference(ref, x):
    """sae_lens' own encode, decode (right after its encode: its normalisation is stateful) and forward."""
    with torch.no_grad():
        f = ref.encode(x)
        return f, ref.decode(f), ref(x)


def assert_same(sae: SAE, ref, x):
    f_ref, dec_ref, fwd_ref = reference(ref, x)
    f = sae.encode(x)
    assert (f_ref != 0).float().mean() > 0.02 and (f_ref == 0).any(), "not a sparse code: a weak test"
    errs = {"encode": float((f - f_ref).abs().max()), "decode": float((sae.decode(f, x) - dec_ref).abs().max()),
            "forward": float((sae.forward(x) - fwd_ref).abs().max())}
    assert max(errs.values()) <= 1e-5, errs
    return errs


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", list(ARCHS))
def test_every_architecture_kind_and_normalisation_matches_sae_lens(name, norm, tmp_path, x):
    _, _, _, arch, kind = ARCHS[name]
    ref = make(name, norm)
    ref.save_model(tmp_path)
    factor = FACTOR if norm == "expected_average_only_in" else None
    if factor is not None:
        with pytest.raises(SAEError, match=r"sae_weights.safetensors.*norm_scaling_factor=F"):
            load_sae(tmp_path)   # the statistic is not in the folder: refused, saying what to pass
        ref = copy.deepcopy(ref)
        ref.fold_activation_norm_scaling_factor(factor)   # what sae_lens does with the factor
    from_folder = load_sae(tmp_path, norm_scaling_factor=factor)
    from_object = load_sae(make(name, norm), norm_scaling_factor=factor)
    for sae in (from_folder, from_object):
        assert (sae.architecture, sae.kind, sae.d_in, sae.d_sae) == (arch, kind, D_IN, D_SAE)
        assert (sae.site, sae.hook_name, sae.model_name) == ("resid_mid.1", HOOK, "gpt2")
        assert sae.d_out == ARCHS[name][2].get("d_out", D_IN)
        assert sae.site_out == ("mlp_out.1" if kind != "sae" else None)
        assert (sae.W_skip is not None) == (kind == "skip_transcoder")
        assert_same(sae, ref, x)
    if kind == "sae":   # the folder is what sae_lens itself reads back
        assert_same(from_folder, type(ref).load_from_disk(tmp_path) if factor is None else ref, x)


def test_expected_average_scaling_factor_saved_in_the_folder(tmp_path, x):
    """A training checkpoint's activation_scaler.json (sae_lens' ActivationScaler.save) gives the factor."""
    ref = make("jumprelu", "expected_average_only_in")
    ref.save_model(tmp_path)
    (tmp_path / "activation_scaler.json").write_text(json.dumps({"scaling_factor": FACTOR, "has_whitening": False}))
    sae = load_sae(tmp_path)
    ref.fold_activation_norm_scaling_factor(FACTOR)
    assert_same(sae, ref, x)
    with pytest.raises(SAEError, match="norm_scaling_factor=2.0 was given, but .*normalize_activations='none'"):
        load_sae(ref, norm_scaling_factor=2.0)   # already folded: a second fold would be wrong


def test_covariance_whitening_is_refused_with_what_to_do(tmp_path):
    ref = make("standard", "covariance_whitening")
    ref.save_model(tmp_path)
    with pytest.raises(SAEError, match="covariance_whitening.*fold_activation_whitening"):
        load_sae(tmp_path)


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka_batchtopk"])
@pytest.mark.parametrize("rescale", [True, False])
def test_batchtopk_and_matryoshka_load_as_saved_for_inference(arch, rescale, tmp_path, x):
    """sae_lens saves BatchTopK / Matryoshka SAEs for inference as JumpReLU (threshold = the learned global
    topk_threshold, decoder norms folded). mechviz reads that folder, the training object and a training
    save_model folder, all equal to the JumpReLUSAE sae_lens loads back."""
    kw = {"matryoshka_widths": [32, D_SAE]} if arch == "matryoshka_batchtopk" else {}
    cls = {"batchtopk": "BatchTopKTraining", "matryoshka_batchtopk": "MatryoshkaBatchTopKTraining"}[arch]
    cfg = getattr(sae_lens, cls + "SAEConfig")(d_in=D_IN, d_sae=D_SAE, k=6.0, rescale_acts_by_decoder_norm=rescale,
                                                metadata=SAEMetadata(model_name="gpt2", hook_name=HOOK), **kw)
    train = randomize(getattr(sae_lens, cls + "SAE")(cfg))
    train.topk_threshold = torch.tensor(0.4, dtype=torch.double)
    train.save_inference_model(tmp_path / "inference")
    assert json.loads((tmp_path / "inference" / "cfg.json").read_text())["architecture"] == "jumprelu"
    ref = sae_lens.JumpReLUSAE.load_from_disk(tmp_path / "inference")
    train.save_model(tmp_path / "training")
    for source in (tmp_path / "inference", train, tmp_path / "training"):
        sae = load_sae(source)
        assert sae.architecture == "jumprelu" and sae.site == "resid_mid.1"
        assert_same(sae, ref, x)


def test_hook_z_transcoder_and_gated_on_sae_lens_objects(x):
    """Sanity beyond the grid: a gated SAE's pre_acts are its magnitude pre-activations (sae_lens'
    hook_sae_acts_pre), and repr names kind and output site."""
    ref = make("gated")
    sae = load_sae(ref)
    cache = {}
    ref.hook_sae_acts_pre.add_hook(lambda t, hook: cache.setdefault("pre", t.detach()))
    with torch.no_grad():
        ref.encode(x)
    torch.testing.assert_close(sae.pre_acts(x), cache["pre"], atol=1e-5, rtol=0)
    tc = load_sae(make("skip_transcoder"))
    assert repr(tc) == ("SAE(skip_transcoder, relu, d_in=48, d_sae=96, site='resid_mid.1', "
                        "site_out='mlp_out.1', d_out=40, model='gpt2')")
    moved = tc.to(dtype=torch.float64)
    assert moved.W_skip.dtype == torch.float64 and tc.W_skip.dtype == torch.float32


def _rewrite(folder, **tensors):
    from safetensors.torch import load_file, save_file

    path = folder / "sae_weights.safetensors"
    state = load_file(str(path))
    state.update(tensors)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def test_width_mismatches_fail_when_loading_naming_file_and_shapes(tmp_path):
    make("standard").save_model(tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "cfg.json").read_text())
    (tmp_path / "a" / "cfg.json").write_text(json.dumps(dict(cfg, d_in=50)))
    with pytest.raises(SAEError, match=r"a/sae_weights.safetensors \(config .*a/cfg.json\): config says d_in=50 "
                                       r"but the weights are d_in=48 \(W_enc \(48, 96\), W_dec \(96, 48\)"):
        load_sae(tmp_path / "a")

    make("standard").save_model(tmp_path / "b")
    _rewrite(tmp_path / "b", W_dec=torch.zeros(D_SAE, 40))
    with pytest.raises(SAEError, match=r"b/sae_weights.safetensors.*W_dec is \(96, 40\) but W_enc \(48, 96\) "
                                       r"needs W_dec \(96, 48\)"):
        load_sae(tmp_path / "b")

    make("transcoder").save_model(tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "cfg.json").read_text())
    (tmp_path / "c" / "cfg.json").write_text(json.dumps(dict(cfg, d_out=48)))
    with pytest.raises(SAEError, match=r"c/sae_weights.safetensors.*config says d_out=48 but the weights are d_out=40"):
        load_sae(tmp_path / "c")

    make("skip_transcoder").save_model(tmp_path / "d")
    _rewrite(tmp_path / "d", W_skip=torch.zeros(D_IN, D_OUT))   # [d_in, d_out]: not SAELens' [d_out, d_in]
    with pytest.raises(SAEError, match=r"d/sae_weights.safetensors.*W_skip has shape \(40, 48\), expected \(48, 40\)"):
        load_sae(tmp_path / "d")

    make("jumprelu").save_model(tmp_path / "e")
    _rewrite(tmp_path / "e", threshold=torch.zeros(D_SAE + 1))
    with pytest.raises(SAEError, match=r"e/sae_weights.safetensors.*threshold has shape \(97,\), expected \(96,\)"):
        load_sae(tmp_path / "e")


def test_sae_object_checks_kinds():
    w = dict(W_enc=torch.zeros(4, 8), b_enc=torch.zeros(8), W_dec=torch.zeros(8, 3), b_dec=torch.zeros(3))
    with pytest.raises(SAEError, match="apply_b_dec_to_input must be False"):
        SAE(**w, kind="transcoder")
    with pytest.raises(SAEError, match=r"W_dec has shape \(8, 3\), expected \(8, 4\)"):
        SAE(**w)
    with pytest.raises(SAEError, match=r"skip transcoder needs W_skip"):
        SAE(**w, kind="skip_transcoder", apply_b_dec_to_input=False)
    with pytest.raises(SAEError, match="gated SAE needs b_gate"):
        SAE(**dict(w, b_enc=None, W_dec=torch.zeros(8, 4), b_dec=torch.zeros(4)), architecture="gated")


def test_transcoder_fits_by_both_sites_and_shows_in_the_feature_view(tokenizer):
    """A transcoder is checked at its input and output sites; it encodes real activations like sae_lens;
    the Lab (which reconstructs and steers at one site) refuses it with a message instead of a wrong view."""
    from mechviz import Lab
    from mechviz.analysis.features import steering_edit
    from mechviz.models import HFAdapter
    from mechviz.saes import check_sae_fits

    from .conftest import build_hf

    hf = build_hf("gpt2")   # 3 layers, d_model 48
    adapter = HFAdapter(hf, name="gpt2")
    ref = make("jumprelu_skip_transcoder")
    tc = load_sae(ref)
    assert check_sae_fits(tc, adapter) == "resid_mid.1"
    run = adapter.run([3, 9, 27, 81], capture=["resid_mid.1", "mlp_out.1"])
    with torch.no_grad():
        torch.testing.assert_close(tc.forward(run["resid_mid.1"]), ref(run["resid_mid.1"]), atol=1e-5, rtol=0)
    with pytest.raises(SAEError, match=r"output width d_out=40 does not match site mlp_out.1 of gpt2, which is 48"):
        check_sae_fits(load_sae(make("transcoder")), adapter)
    with pytest.raises(SAEError, match=r"output site 'mlp_out.9' does not exist"):
        check_sae_fits(SAE(**{n: getattr(tc, n) for n in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "W_skip")},
                           architecture="jumprelu", kind="skip_transcoder", apply_b_dec_to_input=False,
                           site="resid_mid.1", site_out="mlp_out.9"), adapter)
    # a Lab shows a transcoder's features; its reconstruction error is of the output site it predicts
    lab = Lab(hf, tokenizer, sae=tc, prompt="The cat", threads=1)
    assert list(lab.saes) == ["resid_mid.1 -> mlp_out.1"]
    view = lab.features()
    run = lab.run(capture=["resid_mid.1", "mlp_out.1"])
    with torch.no_grad():
        y = run["mlp_out.1"]
        want = ((y - tc.forward(run["resid_mid.1"])).norm(dim=-1) / y.norm(dim=-1)).numpy()
    np.testing.assert_allclose(view.result.recon_error, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="is a skip_transcoder: steering clamps an SAE feature"):
        lab.steer(0, 1.0)
    with pytest.raises(SAEError, match="steering edits one site"):
        steering_edit(tc, 0, value=1.0)


@pytest.mark.parametrize("cls", ["StandardTraining", "TopKTraining", "GatedTraining", "JumpReLUTraining",
                                 "AbsTopKTraining"])
def test_training_objects_load_in_their_inference_form(cls, tmp_path, x):
    """A training SAE object is read as its own save_inference_model writes it (TopK: decoder norms folded);
    equal to the training object's encode and to the inference SAE sae_lens loads from that folder."""
    kw = {"k": 7} if "TopK" in cls else {}
    cfg = getattr(sae_lens, cls + "SAEConfig")(d_in=D_IN, d_sae=D_SAE, metadata=SAEMetadata(hook_name=HOOK), **kw)
    train = randomize(getattr(sae_lens, cls + "SAE")(cfg))
    train.save_inference_model(tmp_path)
    inference = sae_lens.SAE.load_from_disk(tmp_path)
    with torch.no_grad():
        want = train.encode(x)
    for sae in (load_sae(train), load_sae(tmp_path)):
        torch.testing.assert_close(sae.encode(x), want, atol=1e-5, rtol=0)
        assert_same(sae, inference, x)
