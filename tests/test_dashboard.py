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


def test_dashboard_one_pass_and_values(lab):
    box = lab.dashboard()
    prompt_box, attn, lens_view, feat = box.children
    calls = []
    h = lab.model.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        lab.prompt = "And the LORD said unto Moses, Go in unto Pharaoh"
    finally:
        h.remove()
    assert len(calls) == 1  # three views, one forward pass
    assert attn.prompt == lens_view.prompt == feat.prompt == prompt_box.shown == lab.prompt
    run = lab.run(capture=ll.needs(lab.model.n_layers) + [lab.sae.site])
    ref = ll.logit_lens(lab.model, run, k=5, target="next")
    got = lens_view.values
    np.testing.assert_allclose(got["top_probs"], ref.top_probs, atol=2e-3)  # float16 transport
    strings = np.array(lens_view.strings, dtype=object)
    assert (strings[got["top_idx"]] == ref.top_strs).all()
    assert lens_view.rows == ref.rows and len(ref.rows) == lab.model.n_layers + 1
    acts = feature_activations(lab.sae, run)
    feats = feat.values["features"]
    np.testing.assert_allclose(feat.values["acts"], acts[:, feats], atol=1e-6)
    assert set(feats[:5]) <= set(np.argsort(-acts.max(0))[:12].tolist())
    assert "resid_post.1" in feat.sae_label
    fig = lens_view.figure()
    assert fig.axes and feat.figure().axes and attn.figure().axes


def test_steering_from_the_view_changes_prediction_and_lens(lab):
    lens_view, feat = lab.logit_lens(), lab.features()
    lab.prompt = "The cat sat on the"
    before_next = feat.values["next_prob"][0].copy()
    before_lens = lens_view.lens.top_probs.copy()
    f = int(feat.values["features"][0])
    promoted = feat.values["effect_ids"][0, 0]
    feat.steer_request = {"feature": f, "value": 40.0, "mode": "clamp", "id": 1}  # as the browser's controls do
    assert lab.steering == mechviz.lab.Steering(f, 40.0, "clamp")
    assert feat.steered == {"feature": f, "value": 40.0, "mode": "clamp"}
    assert feat.steering == f"feature {f} clamped to 40"
    base, steered = feat.values["next_prob"]
    np.testing.assert_allclose(base, before_next, atol=1e-6)  # row 0 stays the unsteered model
    assert not np.allclose(steered, base, atol=1e-3)
    site_layer = int(lab.sae.site.split(".")[1])
    np.testing.assert_allclose(lens_view.lens.top_probs[: site_layer + 1], before_lens[: site_layer + 1], atol=1e-6)
    assert not np.allclose(lens_view.lens.top_probs[-1], before_lens[-1], atol=1e-3)
    # the promoted tokens gained probability in the steered next-token distribution
    p0 = torch.softmax(lab.model.run("The cat sat on the").logits[-1], -1)
    p1 = torch.softmax(lab.run().logits[-1], -1)
    assert float(p1[promoted].sum()) > float(p0[promoted].sum())
    feat.steer_request = {"feature": None, "id": 2}
    assert lab.steering is None and feat.steering == "" and feat.steered is None


def test_bad_steering_and_bad_sae_show_clear_errors(lab):
    feat = lab.features()
    feat.steer_request = {"feature": 10**6, "value": 1.0, "mode": "clamp", "id": 1}
    assert "out of range" in feat.error and lab.steering is None and feat.steered is None
    from mechviz.saes import SAE
    wide = SAE(W_enc=torch.zeros(64, 8), b_enc=torch.zeros(8), W_dec=torch.zeros(8, 64), b_dec=torch.zeros(64),
               site="resid_post.0")
    with pytest.raises(SAEError, match="d_in=64 does not match"):
        lab.add_sae(wide)
