"""The linked dashboard on the bundled model and SAE: one pass per edit, views' arrays equal the
analysis functions, steering from the feature view changes every view."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mechviz
from mechviz.analysis import feature_activations
from mechviz.analysis import logit_lens as ll
from mechviz.saes import SAEError


@pytest.fixture(scope="module")
def lab():
    return mechviz.Lab.default(prompt="In the beginning God created the heaven and the earth.", threads=1)


def count_passes(lab):
    calls = []
    return calls, lab.model.model.register_forward_hook(lambda *a: calls.append(1))


def test_dashboard_one_pass_and_values(lab):
    calls, h = count_passes(lab)
    try:
        box = lab.dashboard()
        assert len(calls) == 1  # building three views costs one forward pass
        prompt_box, attn, lens_view, feat = box.children
        lab.prompt = "And the LORD said unto Moses, Go in unto Pharaoh"
    finally:
        h.remove()
    assert len(calls) == 2  # three views, one forward pass per edit
    assert attn.prompt == lens_view.prompt == feat.prompt == prompt_box.shown == lab.prompt
    run = lab.run(capture=ll.needs(lab.model.n_layers) + [lab.sae.site])
    ref = ll.logit_lens(lab.model, run, k=5, target="next")
    got = lens_view.data
    np.testing.assert_allclose(got["top_probs"], ref.top_probs, atol=1e-6)
    strings = np.array(lens_view.strings, dtype=object)
    assert (strings[got["top_idx"]] == ref.top_strs).all()
    assert (lens_view.result.top_strs == ref.top_strs).all()
    assert lens_view.rows == ref.rows and len(ref.rows) == lab.model.n_layers + 1
    acts = feature_activations(lab.sae, run)
    feats = feat.data["features"]
    np.testing.assert_allclose(feat.data["acts"], acts[:, feats], atol=1e-6)
    assert set(feats[:5]) <= set(np.argsort(-acts.max(0))[:12].tolist())
    assert "resid_post.1" in feat.sae_label
    fig = lens_view.figure()
    assert fig.axes and feat.figure().axes and attn.figure().axes


def steer_request(view, feature, value=None, mode="clamp"):
    """As the browser's steering controls do: one message."""
    n = (view.steer_request or {}).get("id", 0) + 1
    view.steer_request = {"feature": feature, "value": value, "mode": mode, "id": n}


def test_steering_from_the_view_changes_prediction_and_lens(lab):
    lens_view, feat = lab.logit_lens(), lab.features()
    lab.prompt = "The cat sat on the"
    before_next = feat.result.next_prob[0].copy()
    before_lens = lens_view.result.top_probs.copy()
    f = int(feat.result.features[0])
    promoted = feat.result.effect_ids[0, 0]
    calls, h = count_passes(lab)
    try:
        steer_request(feat, f, 40.0)
    finally:
        h.remove()
    assert len(calls) == 2  # one request, one recompute: the steered pass and the unsteered one
    assert lab.steering == mechviz.Steering(f, 40.0, "clamp", "resid_post.1")
    assert feat.steering == f"feature {f} of resid_post.1 clamped to 40"
    assert feat.steered == {"feature": f, "value": 40.0, "mode": "clamp", "dictionary": "resid_post.1"}
    base, steered = feat.result.next_prob
    np.testing.assert_allclose(base, before_next, atol=1e-6)  # row 0 stays the unsteered model
    assert not np.allclose(steered, base, atol=1e-3)
    site_layer = int(lab.sae.site.split(".")[1])
    np.testing.assert_allclose(lens_view.result.top_probs[: site_layer + 1], before_lens[: site_layer + 1], atol=1e-6)
    assert not np.allclose(lens_view.result.top_probs[-1], before_lens[-1], atol=1e-3)
    # the promoted tokens gained probability in the steered next-token distribution
    p0 = torch.softmax(lab.model.run("The cat sat on the").logits[-1], -1)
    p1 = torch.softmax(lab.run().logits[-1], -1)
    assert float(p1[promoted].sum()) > float(p0[promoted].sum())
    steer_request(feat, None)
    assert lab.steering is None and feat.steering == "" and feat.steered is None


def test_bad_steering_and_bad_sae_show_clear_errors(lab):
    feat = lab.features()
    lab.steer(5, 10.0)
    for bad, msg in [((10**6, 1.0), "out of range"), ((3.7, 1.0), "whole-number id, got 3.7"),
                     ((5, float("nan")), "must be finite"), ((5, ""), "must be a number")]:
        steer_request(feat, *bad)
        assert msg in feat.error and lab.steering == mechviz.Steering(5, 10.0, dictionary="resid_post.1")  # the applied one stays
        with pytest.raises(ValueError, match=msg.split(",")[0]):
            lab.steer(*bad)
    # a steering that passes the checks but breaks the model: the error says so, the old one stays
    with pytest.raises(FloatingPointError) as info:
        lab.steer(5, 1e30)
    assert lab.steering == mechviz.Steering(5, 10.0, dictionary="resid_post.1")
    assert "steering (feature 5 of resid_post.1 clamped to 1e+30) failed" in feat.error
    assert any("while steering feature 5" in n for n in getattr(info.value, "__notes__", []))
    lab.prompt = "The cat sat on the mat"      # later edits keep working, still steered by the good one
    assert feat.error == "" and feat.steering == "feature 5 of resid_post.1 clamped to 10"
    lab.steer(None)
    from mechviz.saes import SAE
    wide = SAE(W_enc=torch.zeros(64, 8), b_enc=torch.zeros(8), W_dec=torch.zeros(8, 64), b_dec=torch.zeros(64),
               site="resid_post.0")
    with pytest.raises(SAEError, match="d_in=64 does not match"):
        lab.add_sae(wide)


def test_selecting_a_feature_from_python_shows_it(lab):
    feat = lab.features(n=3)
    lab.prompt = "In the beginning God created the heaven and the earth."
    hidden = next(f for f in range(lab.sae.d_sae) if f not in feat.result.features)
    lab.selection.feature = hidden
    assert feat.feature == hidden and hidden in feat.result.features.tolist()
    assert len(feat.result.features) == 4


def test_selecting_a_feature_reuses_the_last_pass(lab):
    feat = lab.features(n=3)
    lab.prompt = "And God said, Let there be light: and there was light."
    hidden = next(f for f in range(lab.sae.d_sae) if f not in feat.result.features)
    calls, h = count_passes(lab)
    try:
        lab.selection.feature = hidden
    finally:
        h.remove()
    assert calls == [] and hidden in feat.result.features.tolist()   # the payload changed, no forward pass
    from mechviz.saes import load_sae

    other = load_sae(mechviz.zoo.SAE_DIR)
    other.W_enc = other.W_enc.flip(-1)        # another SAE on the same site: its features are the old ones reversed
    other.b_enc = other.b_enc.flip(-1)
    other.W_dec, other.threshold = other.W_dec.flip(0), None
    lab.add_sae(other)                        # the feature view follows the Lab's new SAE (a new pass)
    acts = feature_activations(other, lab.run(capture=[other.site]))
    np.testing.assert_allclose(feat.result.acts, acts[:, feat.result.features], atol=1e-6)
    lab.add_sae(mechviz.zoo.SAE_DIR)
