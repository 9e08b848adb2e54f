"""SAE features of a prompt: activations equal sae_lens, logit effects equal W_dec @ W_U, and steering
edits the site exactly as documented, in one pass, moving the output toward the feature's tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechviz.analysis import logit_lens as ll
from mechviz.analysis.features import (feature_activations, feature_logit_effects, next_token_probs, steer,
                                       top_features)
from mechviz.models import HFAdapter, wrap
from mechviz.saes import load_sae

from .conftest import tl_from_hf
from .test_logit_lens import sharpened
from .test_saes import make_sae_lens

pytest.importorskip("sae_lens")
pytest.importorskip("transformer_lens")

IDS = torch.tensor([0, 5, 17, 42, 8, 99, 5, 17, 42, 3, 250, 7])
LAST = "resid_post.2"


@pytest.fixture(scope="module")
def models():
    hf_model = sharpened("gpt2")
    return HFAdapter(hf_model, name="gpt2"), wrap(tl_from_hf(hf_model), name="gpt2")


@pytest.fixture(scope="module")
def saes():
    """A real sae_lens SAE on the last layer's residual and one on layer 0's, and ours loaded from them."""
    ref_last = make_sae_lens("standard", hook_name="blocks.2.hook_resid_post", seed=3)
    ref_mid = make_sae_lens("topk", hook_name="blocks.0.hook_resid_post", seed=4, k=10)
    return (ref_last, load_sae(ref_last)), (ref_mid, load_sae(ref_mid))


def test_feature_activations_and_top_features(models, saes):
    hf, _ = models
    (ref, sae), _ = saes
    run = hf.run(IDS, capture=[LAST])
    acts = feature_activations(sae, run)
    with torch.no_grad():
        want = ref.encode(run[LAST]).numpy()
    assert acts.shape == (len(IDS), sae.d_sae) and acts.dtype == np.float32
    assert np.abs(acts - want).max() <= 1e-5
    top = top_features(acts, 8)
    assert list(top) == list(np.argsort(-acts.max(0), kind="stable")[:8])
    assert (np.diff(acts.max(0)[top]) <= 0).all()
    assert list(top_features(acts, 3, by="mean")) == list(np.argsort(-acts.mean(0), kind="stable")[:3])
    assert len(top_features(acts, 10_000)) == sae.d_sae


def test_logit_effects_are_decoder_through_unembedding(models, saes):
    hf, tl = models
    (_, sae), _ = saes
    eff = feature_logit_effects(sae, hf, feature=11, k=6)
    want = (sae.W_dec[11] @ hf.model.lm_head.weight.T).detach().numpy()       # W_dec[f] @ W_U, no norm, no bias
    assert np.abs(eff.values - want).max() <= 1e-5
    assert list(eff.promoted_ids) == list(np.argsort(-want)[:6]) and list(eff.suppressed_ids) == list(np.argsort(want)[:6])
    assert (np.diff(eff.promoted_values) <= 0).all() and (np.diff(eff.suppressed_values) >= 0).all()
    for norm in (False, True):   # HF and TL adapters agree on the same weights (TL has b_U = 0 here; it cancels)
        a, b = feature_logit_effects(sae, hf, 11, k=6, norm=norm), feature_logit_effects(sae, tl, 11, k=6, norm=norm)
        assert np.abs(a.values - b.values).max() <= 1e-5
        assert list(a.promoted_ids) == list(b.promoted_ids)
    # norm=True: the final LayerNorm applied to the direction (centred, x gain, positive scale)
    ln = hf.model.transformer.ln_f
    d = sae.W_dec[11]
    with torch.no_grad():
        want_n = (ln.weight * (d - d.mean()) / torch.sqrt(d.var(unbiased=False) + ln.eps)) @ hf.model.lm_head.weight.T
    assert np.abs(feature_logit_effects(sae, hf, 11, norm=True).values - want_n.numpy()).max() <= 1e-4


def test_neutral_steering_leaves_the_model_unchanged(models, saes):
    hf, _ = models
    for ref, sae in saes:
        base = hf.run(IDS, capture=[sae.site])
        f = int(top_features(feature_activations(sae, base), 1)[0])
        same = steer(hf, sae, IDS, f, scale=1.0)
        assert float((same.logits - base.logits).abs().max()) == 0.0
        acts = feature_activations(sae, base)[:, f]
        clamped = steer(hf, sae, IDS, f, value=acts)        # clamp to the current activation, per token
        err = float((clamped.logits - base.logits).abs().max())
        assert err <= 1e-5, err
        print(sae.site, f"clamp to current activation: max |logit change| = {err:.1e}")


def test_ablation_edits_the_site_exactly(models, saes):
    hf, _ = models
    (ref, sae), _ = saes
    base = hf.run(IDS, capture=[LAST])
    acts = feature_activations(sae, base)
    f = int(top_features(acts, 1)[0])
    ablated = steer(hf, sae, IDS, f, scale=0.0, capture=[LAST])
    want = base[LAST] - torch.from_numpy(acts[:, f])[:, None] * sae.W_dec[f]
    assert float((ablated[LAST] - want).abs().max()) <= 1e-5
    # only the last position: every earlier position's output is untouched (causal model)
    last_only = steer(hf, sae, IDS, f, value=0.0, positions=[len(IDS) - 1])
    assert float((last_only.logits[:-1] - base.logits[:-1]).abs().max()) <= 1e-5
    assert float((last_only.logits[-1] - base.logits[-1]).abs().max()) > 1e-3


def test_large_clamp_moves_next_token_toward_promoted_tokens(models, saes):
    """Clamping a last-layer feature high drives the next-token distribution to the feature's own
    logit lens, softmax(feature_logit_effects(norm=True)): its promoted tokens win, suppressed ones vanish."""
    hf, tl = models
    (_, sae), _ = saes
    f = 5
    eff = feature_logit_effects(sae, hf, f, k=5, norm=True)
    limit = torch.softmax(torch.from_numpy(eff.values), -1).numpy()
    up, down = eff.promoted_ids, eff.suppressed_ids
    base = next_token_probs(hf.run(IDS))
    tv = {}
    for value in (0.05, 0.5, 200.0):
        p = next_token_probs(steer(hf, sae, IDS, f, value=value))
        tv[value] = 0.5 * np.abs(p - limit).sum()
    steered_run = steer(hf, sae, IDS, f, value=200.0)
    steered = next_token_probs(steered_run)
    print(f"p(top-5 promoted) {base[up].sum():.4f} -> {steered[up].sum():.4f}; p(top-5 suppressed) "
          f"{base[down].sum():.2e} -> {steered[down].sum():.2e}; TV to the feature's lens by clamp {tv}")
    assert tv[0.05] > tv[0.5] > tv[200.0] and tv[200.0] < 0.01 and 0.5 * np.abs(base - limit).sum() > 0.5
    assert steered[up].sum() > 10 * base[up].sum() and steered[up].sum() > 0.15
    assert int(steered.argmax()) == int(up[0])
    assert steered[down].sum() < base[down].sum() and steered[down].sum() < 1e-3
    # the TL adapter steers identically
    tl_steered = steer(tl, sae, IDS, f, value=200.0)
    assert float((torch.softmax(tl_steered.logits, -1) - torch.softmax(steered_run.logits, -1)).abs().max()) <= 1e-5


def test_steering_changes_the_logit_lens_from_the_site_on(models, saes):
    hf, _ = models
    _, (ref, sae) = saes                       # TopK SAE on resid_post.0 (= resid_pre.1)
    f = 7
    base = ll.logit_lens(hf, hf.run(IDS, capture=ll.needs(3)), k=3)
    run = steer(hf, sae, IDS, f, value=300.0, capture=ll.needs(3))
    lens = ll.logit_lens(hf, run, k=3)
    np.testing.assert_array_equal(lens.top_probs[0], base.top_probs[0])        # resid_pre.0: before the site
    top = feature_logit_effects(sae, hf, f, k=1, norm=True).promoted_ids[0]
    assert (lens.top_ids[1, :, 0] == top).all()                                 # resid_pre.1: the feature dominates
    assert not np.array_equal(lens.top_ids[1], base.top_ids[1])


def test_steering_errors(models, saes):
    hf, _ = models
    (_, sae), _ = saes
    with pytest.raises(ValueError, match="exactly one of value="):
        steer(hf, sae, IDS, 3)
    with pytest.raises(IndexError, match="feature 96 out of range"):
        steer(hf, sae, IDS, 96, value=1.0)
    with pytest.raises(Exception, match="trained on 'pythia-70m'"):
        steer(hf, load_sae(make_sae_lens("standard", model_name="pythia-70m")), IDS, 3, value=1.0)


def test_figures(models, saes, tmp_path, tokenizer):
    import matplotlib
    matplotlib.use("Agg")
    from mechviz.analysis.figures import feature_heatmap_figure, logit_effects_figure, logit_lens_figure

    hf = HFAdapter(models[0].model, tokenizer, name="gpt2")
    (_, sae), _ = saes
    run = hf.run("The cat sat on the mat.", capture=ll.needs(3))
    lens = ll.logit_lens(hf, run, k=3, target="next")
    for by in ("top_prob", "target_prob", "target_rank", "entropy"):
        fig = logit_lens_figure(lens, by=by)
        ax = fig.axes[0]
        want = lens.colour(by).astype(float)
        if by == "target_rank":   # the widget's scale: 1 - log1p(rank) / log1p(max(max rank, 10)), no target blank
            want = np.where(want >= 0, 1 - np.log1p(np.maximum(want, 0)) / np.log1p(max(want.max(), 10)), np.nan)
        got = np.ma.filled(np.ma.asarray(ax.collections[0].get_array(), dtype=float), np.nan)
        assert np.allclose(got, want, equal_nan=True), by
        assert [t.get_text() for t in ax.get_yticklabels()] == lens.rows
    fig.savefig(tmp_path / "lens.png")
    acts = feature_activations(sae, run)
    top = top_features(acts, 6)
    fig = feature_heatmap_figure(acts, top, run.token_strs)
    assert np.allclose(fig.axes[0].collections[0].get_array(), acts[:, top].T)
    fig.savefig(tmp_path / "features.png")
    logit_effects_figure(feature_logit_effects(sae, hf, int(top[0]), k=5)).savefig(tmp_path / "effects.png")
    assert all((tmp_path / n).stat().st_size > 1000 for n in ("lens.png", "features.png", "effects.png"))


def test_steering_normalising_and_z_saes(models):
    """A layer_norm SAE: the edit is exactly decode(f') - decode(f) in the site's space (sae_lens'
    own decode); a z-site SAE ([T, H, d_head] flattened): neutral steering is exact."""
    hf, tl = models
    ref = make_sae_lens("standard", hook_name="blocks.2.hook_resid_post", seed=5, normalize_activations="layer_norm")
    sae = load_sae(ref)
    base = hf.run(IDS, capture=[LAST])
    x = base[LAST]
    with torch.no_grad():
        f_acts = ref.encode(x)
        f = int(f_acts.max(0).values.argmax())
        edited = f_acts.clone()
        edited[:, f] = 3.0
        ref.encode(x)      # sae_lens keeps the input statistics from encode for decode
        recon_new = ref.decode(edited)
        ref.encode(x)
        recon_old = ref.decode(f_acts)
    run = steer(hf, sae, IDS, f, value=3.0, capture=[LAST])
    err = float((run[LAST] - (x + recon_new - recon_old)).abs().max())
    assert err <= 1e-5, err
    assert float((steer(hf, sae, IDS, f, scale=1.0).logits - base.logits).abs().max()) == 0.0
    zref = make_sae_lens("jumprelu", hook_name="blocks.1.attn.hook_z", seed=6, reshape_activations="hook_z")
    zsae = load_sae(zref)
    zrun = hf.run(IDS, capture=["z.1"])
    acts = feature_activations(zsae, zrun)
    with torch.no_grad():
        assert np.abs(acts - zref.encode(zrun["z.1"]).numpy()).max() <= 1e-5
    fz = int(top_features(acts, 1)[0])
    assert float((steer(hf, zsae, IDS, fz, value=acts[:, fz]).logits - zrun.logits).abs().max()) <= 1e-5
    a, b = steer(hf, zsae, IDS, fz, value=50.0, capture=["z.1"]), steer(tl, zsae, IDS, fz, value=50.0, capture=["z.1"])
    assert float((a["z.1"] - b["z.1"]).abs().max()) <= 1e-4
    assert float((a.logits - zrun.logits).abs().max()) > 1e-2


def test_bundled_model_and_sae_end_to_end():
    """The bundled (trained) model and TopK SAE: our loader equals sae_lens, and clamping a feature
    that fires on the prompt raises the probability of the tokens it promotes."""
    zoo = pytest.importorskip("mechviz.zoo")
    if not (zoo.SAE_DIR / "cfg.json").exists():
        pytest.skip("the bundled SAE is not present")
    model, tok = zoo.load_default_model()
    hf = HFAdapter(model, tok, name="mechviz-default")
    sae, ref = load_sae(zoo.SAE_DIR), zoo.load_default_sae()
    prompt = "The king said unto the people, and the Lord"
    run = hf.run(prompt, capture=[sae.site])
    acts = feature_activations(sae, run)
    with torch.no_grad():
        err = float((torch.from_numpy(acts) - ref.encode(run[sae.site])).abs().max())
    assert err <= 1e-5
    f = int(top_features(acts[1:], 1)[0])
    promoted = feature_logit_effects(sae, hf, f, k=8).promoted_ids
    mass = [next_token_probs(steer(hf, sae, prompt, f, value=v))[promoted].sum() for v in (0.0, 5.0, 20.0)]
    base = next_token_probs(run)[promoted].sum()
    print(f"bundled SAE: encode err {err:.1e}; feature {f}: p(top-8 promoted) {base:.4f}, clamp 0/5/20 -> "
          + ", ".join(f"{m:.4f}" for m in mass))
    assert mass[0] < mass[1] < mass[2] and mass[2] > 5 * base
