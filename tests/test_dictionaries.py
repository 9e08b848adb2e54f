"""Many dictionaries per Lab: lab.saes by name, the shared selection's (dictionary, feature), the feature
view switching dictionary, steering a chosen dictionary, reconstruction error per token; numbers checked
against each SAE's own encode/decode on the bundled model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mechviz
from mechviz.analysis.features import feature_activations, steer as steer_run
from mechviz.saes import SAE

PROMPT = "The cat sat on the mat. The cat"


def random_sae(site="resid_post.2", d_sae=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(128, d_sae, generator=g) / 8
    return SAE(W_enc=W, b_enc=torch.zeros(d_sae), W_dec=W.T.clone(), b_dec=torch.zeros(128), site=site,
               model_name="mechviz-default")


@pytest.fixture
def lab():
    return mechviz.Lab.default(prompt=PROMPT, sae=False)


def test_a_lab_holds_dictionaries_by_name_and_shows_the_first(lab):
    other = random_sae()
    lab2 = mechviz.Lab(lab.model, prompt=PROMPT, sae=[mechviz.zoo.SAE_DIR, other])
    assert list(lab2.saes) == ["resid_post.1", "resid_post.2"] and lab2.saes["resid_post.2"] is other
    assert lab2.selection.dictionary == "resid_post.1" and lab2.sae is lab2.saes["resid_post.1"]
    assert "saes=['resid_post.1', 'resid_post.2'], shown='resid_post.1'" in repr(lab2)
    assert lab2.add_sae(random_sae(seed=1), name="wide") == "wide" and lab2.selection.dictionary == "wide"
    with pytest.raises(KeyError, match="no dictionary named 'resid_post.3' \\(did you mean 'resid_post.[12]'\\?\\)"):
        lab2.selection.dictionary = "resid_post.3"
    assert lab2.selection.dictionary == "wide"   # refused: the shown one stays


def test_the_feature_view_follows_the_selected_dictionary(lab):
    lab.add_sae(mechviz.zoo.SAE_DIR)
    other = random_sae()
    lab.add_sae(other)
    lab.selection.dictionary = "resid_post.1"
    view = lab.features(n=6)
    assert view.dictionaries == ["resid_post.1", "resid_post.2"] and view.dictionary == "resid_post.1"
    run = lab.run(capture=["resid_post.1", "resid_post.2"])
    acts1 = feature_activations(lab.saes["resid_post.1"], run)
    np.testing.assert_allclose(view.result.acts, acts1[:, view.result.features], atol=1e-5)
    lab.selection.feature = int(view.result.features[0])
    # the other dictionary: its own features, and the feature selection cleared (ids differ)
    lab.selection.dictionary = "resid_post.2"
    assert view.dictionary == "resid_post.2" and lab.selection.feature == -1 and view.feature == -1
    acts2 = feature_activations(other, run)
    np.testing.assert_allclose(view.result.acts, acts2[:, view.result.features], atol=1e-5)
    assert view.result.sae_label.startswith("resid_post.2")
    # each token's reconstruction error, |x - decode(encode(x))| / |x|
    x = run["resid_post.2"]
    with torch.no_grad():
        want = ((x - other.forward(x)).norm(dim=-1) / x.norm(dim=-1)).numpy()
    np.testing.assert_allclose(view.result.recon_error, want, rtol=1e-4)
    np.testing.assert_allclose(view.recon_error, want, rtol=2e-3)   # float16 in the view


def test_steering_names_its_dictionary(lab):
    lab.add_sae(mechviz.zoo.SAE_DIR)
    other = random_sae()
    lab.add_sae(other)
    view = lab.features()
    lab.steer(5, 30.0, dictionary="resid_post.1")
    assert lab.steering == mechviz.Steering(5, 30.0, "clamp", "resid_post.1")
    assert view.steering == "feature 5 of resid_post.1 clamped to 30" and view.steered["dictionary"] == "resid_post.1"
    ref = steer_run(lab.model, lab.saes["resid_post.1"], PROMPT, 5, value=30.0)
    np.testing.assert_allclose(lab.run().logits.numpy(), ref.logits.numpy(), atol=1e-5)
    # the view shows resid_post.2 (selected last) while resid_post.1 is steered: its rows are resid_post.2's
    assert view.dictionary == "resid_post.2" and 5 not in view.result.features[6:]
    # the default dictionary to steer is the one shown
    lab.steer(7, 2.0, mode="scale")
    assert lab.steering.dictionary == "resid_post.2"
    ref = steer_run(lab.model, other, PROMPT, 7, scale=2.0)
    np.testing.assert_allclose(lab.run().logits.numpy(), ref.logits.numpy(), atol=1e-5)
    # replacing the steered dictionary turns steering off
    lab.add_sae(random_sae(seed=3))
    assert lab.steering is None and view.steering == ""


def test_a_steer_request_from_the_view_steers_the_shown_dictionary(lab):
    lab.add_sae(mechviz.zoo.SAE_DIR)
    lab.add_sae(random_sae())
    view = lab.features()
    lab.selection.dictionary = "resid_post.1"
    view.steer_request = {"feature": 3, "value": 12.0, "mode": "clamp", "id": 1}
    assert lab.steering == mechviz.Steering(3, 12.0, "clamp", "resid_post.1")
    view.steer_request = {"feature": 5000, "value": 1.0, "mode": "clamp", "id": 2}
    assert "5000 out of range" in view.error and lab.steering.feature == 3


def test_compare_shares_the_dictionaries(lab):
    lab.add_sae(mechviz.zoo.SAE_DIR)
    cmp = mechviz.Compare(lab, "The dog sat on the rug. The dog")
    lab.add_sae(random_sae())
    assert list(cmp.b.saes) == ["resid_post.1", "resid_post.2"]
    cmp.side_by_side(mechviz.FeatureView)
    a, b = cmp.pairs[-1]
    assert a.dictionary == b.dictionary == "resid_post.2"
    lab.selection.dictionary = "resid_post.1"
    assert b.dictionary == "resid_post.1" and b.result.sae_label.startswith("resid_post.1")


def test_the_bundled_model_with_a_dictionary_per_layer():
    lab = mechviz.Lab.default(prompt=PROMPT, sae="all")
    assert list(lab.saes) == [f"resid_post.{i}" for i in range(4)] + [f"mlp_in.{i} -> mlp_out.{i}" for i in range(4)]
    assert lab.selection.dictionary == "resid_post.0"
    view = lab.features()
    lab.selection.dictionary = "mlp_in.2 -> mlp_out.2"
    tc = lab.saes["mlp_in.2 -> mlp_out.2"]
    assert view.result.sae_label == "mlp_in.2 -> mlp_out.2 · jumprelu transcoder · 1024 features"
    run = lab.run(capture=["mlp_in.2", "mlp_out.2"])
    np.testing.assert_allclose(view.result.acts, feature_activations(tc, run)[:, view.result.features], atol=1e-5)
    with torch.no_grad():
        y = run["mlp_out.2"]
        want = ((y - tc.forward(run["mlp_in.2"])).norm(dim=-1) / y.norm(dim=-1)).numpy()
    np.testing.assert_allclose(view.result.recon_error, want, rtol=1e-4)
    with pytest.raises(ValueError, match="sae= takes True, False, 'layers' or 'all'"):
        mechviz.Lab.default(sae="every")
