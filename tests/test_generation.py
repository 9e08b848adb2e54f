"""Steering that shows text (mechviz.analysis.generation and SteeringView) on the bundled model: every
number is checked against a brute-force loop of plain forward passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mechviz
from mechviz.analysis.features import steering_edit
from mechviz.analysis.generation import (generate, neuronpedia_url, steered_generation, steering_edits,
                                         strength_sweep, sweep_values)
from mechviz.models.base import Aborted

PROMPT = "The cat sat on the mat. The cat"


@pytest.fixture(scope="module")
def lab():
    return mechviz.Lab.default(prompt=PROMPT)


def _brute(adapter, prompt, n, edits=None, k=5):
    """Greedy decoding by hand: ids, chosen probabilities, top-k ids and probabilities."""
    ids = adapter.to_tokens(prompt)
    out, probs, tops, top_p = [], [], [], []
    for _ in range(n):
        p = torch.softmax(adapter.run(ids, edits=edits).logits[-1].float(), -1)
        tok = int(torch.argmax(p))
        tp, ti = torch.topk(p, k)
        out.append(tok), probs.append(float(p[tok])), tops.append(ti.tolist()), top_p.append(tp.tolist())
        ids = torch.cat([ids, torch.tensor([tok])])
    return out, np.array(probs), np.array(tops), np.array(top_p)


def _same(gen, brute):
    ids, probs, tops, top_p = brute
    assert gen.ids.tolist() == ids
    np.testing.assert_allclose(gen.probs, probs, atol=1e-5)
    assert gen.top_ids.tolist() == tops.tolist()
    np.testing.assert_allclose(gen.top_probs, top_p, atol=1e-5)


def _joint_by_hand(sae, specs):
    """A two-feature edit written out: encode, targets, the sum of (target - act) * direction."""
    def edit(x):
        flat = x.reshape(x.shape[0], -1)
        acts = sae.encode(flat)
        out = flat.clone()
        for f, v, mode in specs:
            a = acts[:, f]
            target = torch.full_like(a, v) if mode == "clamp" else a * v
            out = out + (target - a)[:, None] * sae.directions()[f] * sae.output_scale(flat)
        return out.reshape(x.shape)
    return {sae.site: edit}


def test_unsteered_generation_equals_a_greedy_loop(lab):
    g = generate(lab.model, PROMPT, n=6, k=4)
    _same(g, _brute(lab.model, PROMPT, 6, k=4))
    assert g.strs == lab.model.to_str_tokens(torch.tensor(g.ids)) and g.text == "".join(g.strs)
    assert g.prompt_strs == lab.model.to_str_tokens(lab.model.to_tokens(PROMPT)) and g.stopped == "n"
    assert [s[0] for s in g.top_strs] == g.strs   # greedy: the chosen token is the top one


def test_one_feature_steered_generation_equals_steering_edit_loop(lab):
    sae = lab.sae
    base, steered = steered_generation(lab.model, sae, PROMPT, [(67, 15.0, "clamp")], n=6)
    _same(base, _brute(lab.model, PROMPT, 6))
    _same(steered, _brute(lab.model, PROMPT, 6, {sae.site: steering_edit(sae, 67, value=15.0)}))
    assert steered.ids.tolist() != base.ids.tolist()   # the clamp changes the text (else the test proves little)
    assert steered.steering == "feature 67 clamped to 15"
    _, scaled = steered_generation(lab.model, sae, PROMPT, [(67, 3.0, "scale")], n=4)
    _same(scaled, _brute(lab.model, PROMPT, 4, {sae.site: steering_edit(sae, 67, scale=3.0)}))


def test_two_features_equal_a_hand_written_joint_edit(lab):
    specs = [(67, 12.0, "clamp"), (71, 4.0, "scale")]
    _, steered = steered_generation(lab.model, lab.sae, PROMPT, specs, n=6)
    _same(steered, _brute(lab.model, PROMPT, 6, _joint_by_hand(lab.sae, specs)))
    # joint, not sequential: not what two single edits applied one after the other give in general
    run = lab.model.run(PROMPT, edits=steering_edits(lab.sae, specs))
    ref = lab.model.run(PROMPT, edits=_joint_by_hand(lab.sae, specs))
    np.testing.assert_allclose(run.logits.numpy(), ref.logits.numpy(), atol=1e-5)


def test_scale_one_is_unsteered(lab):
    base, steered = steered_generation(lab.model, lab.sae, PROMPT, [(67, 1.0, "scale"), (5, 1.0, "scale")], n=5)
    assert steered.ids.tolist() == base.ids.tolist()
    np.testing.assert_allclose(steered.probs, base.probs, atol=1e-5)
    np.testing.assert_allclose(steered.top_probs, base.top_probs, atol=1e-5)


def test_sampling_is_seeded(lab):
    a = generate(lab.model, PROMPT, n=6, temperature=1.5, seed=3)
    b = generate(lab.model, PROMPT, n=6, temperature=1.5, seed=3)
    c = generate(lab.model, PROMPT, n=6, temperature=1.5, seed=4)
    assert a.ids.tolist() == b.ids.tolist() and a.ids.tolist() != c.ids.tolist()
    # the reported probability is the model's own (temperature 1) of the sampled token
    p = torch.softmax(lab.model.run(PROMPT).logits[-1], -1)
    assert a.probs[0] == pytest.approx(float(p[a.ids[0]]), abs=1e-6)


def test_sweep_metric_equals_separate_steered_runs(lab):
    sae, m = lab.sae, lab.model
    values = [0.0, 5.0, 20.0]
    sw = strength_sweep(m, sae, PROMPT, 67, values)
    base = torch.softmax(m.run(PROMPT).logits[-1], -1)
    for v, got in zip(values, sw.metric):
        q = torch.softmax(m.run(PROMPT, edits={sae.site: steering_edit(sae, 67, value=v)}).logits[-1], -1)
        assert got == pytest.approx(float((base * (base.log() - q.log())).sum()), abs=1e-5)
    assert sw.metric[-1] > sw.metric[0] >= 0
    tp = strength_sweep(m, sae, PROMPT, 67, values, metric="target_prob", target=" sat")
    tid = m.to_tokens(" sat")[-1]
    for v, got in zip(values, tp.metric):
        q = torch.softmax(m.run(PROMPT, edits={sae.site: steering_edit(sae, 67, value=v)}).logits[-1], -1)
        assert got == pytest.approx(float(q[tid]), abs=1e-6)
    sc = strength_sweep(m, sae, PROMPT, 67, [1.0, 2.0], mode="scale", metric=lambda s, b: float(s.max() - b.max()))
    assert sc.metric[0] == pytest.approx(0.0, abs=1e-5) and sc.metric_name == "<lambda>"
    fig = sw.figure(current=5.0)
    import io
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(io.BytesIO())   # default args: constrained layout keeps the labels inside
    ax = fig.axes[0]
    assert "KL" in ax.get_ylabel() and "feature 67" in ax.get_xlabel()
    r = fig.canvas.get_renderer()
    box = fig.bbox
    for text in (ax.xaxis.label, ax.yaxis.label):
        bb = text.get_window_extent(r)
        assert bb.x0 >= box.x0 - 1 and bb.x1 <= box.x1 + 1 and bb.y0 >= box.y0 - 1 and bb.y1 <= box.y1 + 1
    assert sweep_values(5.0).tolist()[4] == 5.0 and sweep_values(0.0)[-1] == 20.0


def test_positions_restrict_the_edit(lab):
    sae, m = lab.sae, lab.model
    T = len(m.to_tokens(PROMPT))
    base = m.run(PROMPT).logits
    run = m.run(PROMPT, edits=steering_edits(sae, [(67, 25.0, "clamp")], positions=[T - 3], n_prompt=T)).logits
    np.testing.assert_allclose(run[: T - 3].numpy(), base[: T - 3].numpy(), atol=1e-6)   # earlier logits unchanged
    assert float((run[T - 3] - base[T - 3]).abs().max()) > 1e-2
    # equals the single-feature edit at those positions
    ref = m.run(PROMPT, edits={sae.site: steering_edit(sae, 67, value=25.0, positions=[T - 3])}).logits
    np.testing.assert_allclose(run.numpy(), ref.numpy(), atol=1e-5)
    # "prompt": generated tokens are not steered; brute force with the mask over the prompt only
    _, steered = steered_generation(m, sae, PROMPT, [(67, 25.0)], n=4, positions="prompt")
    ids = m.to_tokens(PROMPT)
    for tok in steered.ids:
        edit = steering_edit(sae, 67, value=25.0, positions=np.arange(T))
        nxt = int(torch.argmax(m.run(ids, edits={sae.site: edit}).logits[-1]))
        assert nxt == tok
        ids = torch.cat([ids, torch.tensor([nxt])])
    assert steered.steering.endswith("(prompt positions only)")


def test_errors_are_clear(lab):
    sae, m = lab.sae, lab.model
    with pytest.raises(ValueError, match="out of range"):
        steered_generation(m, sae, PROMPT, [(sae.d_sae, 1.0)], n=2)
    with pytest.raises(ValueError, match="must be finite"):
        steered_generation(m, sae, PROMPT, [(3, float("nan"))], n=2)
    with pytest.raises(ValueError, match="whole-number"):
        steering_edits(sae, [(2.5, 1.0)])
    with pytest.raises(ValueError, match="given twice"):
        steering_edits(sae, [(3, 1.0), (3, 2.0, "scale")])
    with pytest.raises(ValueError, match="at least one feature"):
        steering_edits(sae, [])
    with pytest.raises(ValueError, match="n must be"):
        generate(m, PROMPT, n=0)
    with pytest.raises(ValueError, match="over .*ask for n <= "):
        generate(m, PROMPT, n=m.max_len)
    with pytest.raises(ValueError, match="outside the prompt"):
        steered_generation(m, sae, PROMPT, [(3, 1.0)], n=2, positions=[99])
    with pytest.raises(ValueError, match="target="):
        strength_sweep(m, sae, PROMPT, 3, [1.0], metric="target_prob")
    with pytest.raises(ValueError, match="metric must be"):
        strength_sweep(m, sae, PROMPT, 3, [1.0], metric="entropy")
    from mechviz.saes import SAE
    d, w = m.d_model, 16
    tc = SAE(W_enc=torch.zeros(d, w), b_enc=torch.zeros(w), W_dec=torch.zeros(w, d), b_dec=torch.zeros(d),
             kind="transcoder", apply_b_dec_to_input=False, site="mlp_in.0", site_out="mlp_out.0")
    with pytest.raises(ValueError, match="transcoder"):
        steering_edits(tc, [(1, 2.0)])
    calls = []
    with pytest.raises(Aborted):
        generate(m, PROMPT, n=5, on_step=lambda i, n, s: calls.append(i), cancel=lambda: len(calls) >= 2)
    assert calls == [1, 2]


def test_neuronpedia_url(lab):
    from dataclasses import replace

    assert neuronpedia_url(lab.sae, 5) is None
    sae = replace(lab.sae, neuronpedia_id="gpt2-small/0-res-jb")
    assert neuronpedia_url(sae, 12) == "https://www.neuronpedia.org/gpt2-small/0-res-jb/12"
    with pytest.raises(ValueError, match="not an id"):
        neuronpedia_url(sae, sae.d_sae)


# -- the view, bound to a Lab ---------------------------------------------------------------------------


def test_view_follows_the_lab_and_answers_requests():
    lab = mechviz.Lab.default(prompt=PROMPT)
    lab.selection.feature = 67
    v = lab.add(mechviz.SteeringView(), n=4)
    assert v.specs == [{"feature": 67, "value": 10.0, "mode": "clamp"}]   # the selected feature, clamped
    base, steered = steered_generation(lab.model, lab.sae, PROMPT, [(67, 10.0)], n=4)
    assert v.base_strs == base.strs and v.steered_strs == steered.strs
    np.testing.assert_allclose(v.steered_prob, steered.probs, atol=1e-6)
    assert v.steered_alt == steered.top_strs and v.steering == "feature 67 clamped to 10"
    sw = strength_sweep(lab.model, lab.sae, PROMPT, 67, sweep_values(10.0))
    np.testing.assert_allclose(v.sweep_metric, sw.metric, atol=1e-6)
    assert (v.sweep_feature, v.sweep_current, v.neuronpedia) == (67, 10.0, "")
    # a browser request: two features, prompt positions only, n=3, sweep the second
    specs = [{"feature": 67, "value": 5.0, "mode": "clamp"}, {"feature": 71, "value": 3.0, "mode": "scale"}]
    v.request = {"specs": specs, "positions": "prompt", "n": 3, "selected": 1, "id": 1}
    _, steered = steered_generation(lab.model, lab.sae, PROMPT, [(67, 5.0), (71, 3.0, "scale")], n=3, positions="prompt")
    assert v.steered_strs == steered.strs and v.specs == specs and (v.n, v.positions, v.selected) == (3, "prompt", 1)
    assert v.sweep_feature == 71 and not v.busy and v.error == ""
    np.testing.assert_allclose(v.sweep_metric, strength_sweep(lab.model, lab.sae, PROMPT, 71, sweep_values(3.0, "scale"),
                                                              mode="scale", positions="prompt").metric, atol=1e-6)
    shown = (list(v.base_strs), list(v.steered_strs), v.seq)
    # a refused request: says why, keeps what is shown and the settings
    for bad, why in [({"specs": [{"feature": lab.sae.d_sae, "value": 1.0}]}, "out of range"),
                     ({"specs": specs, "n": 0}, "n must be"), ({"specs": [{"feature": 3, "value": "inf"}]}, "finite"),
                     ({"specs": specs, "n": lab.model.max_len}, "over")]:
        v.request = {**bad, "id": 2}
        assert why in v.error and (list(v.base_strs), list(v.steered_strs), v.seq) == shown and v.specs == specs
    # the prompt follows the Lab, with the request's settings
    lab.prompt = "Hello there"
    _, steered = steered_generation(lab.model, lab.sae, "Hello there", [(67, 5.0), (71, 3.0, "scale")], n=3,
                                    positions="prompt")
    assert v.steered_strs == steered.strs and v.prompt == "Hello there" and v.error == ""
    v.request = {"specs": [], "n": 2, "id": 3}      # no features: the unsteered column only
    assert v.steered_strs == [] and len(v.base_strs) == 2 and v.sweep_feature == -1 and v.steering == ""


def test_view_request_runs_off_the_loop_with_progress():
    import asyncio

    async def scenario():
        lab = mechviz.Lab.default(prompt=PROMPT)
        v = lab.add(mechviz.SteeringView(), n=2, specs=[(67, 4.0)])
        seen, seq = [], v.seq
        v.observe(lambda c: seen.append(c["new"]), names="progress")
        v.request = {"specs": [{"feature": 67, "value": 8.0, "mode": "clamp"}], "n": 5, "id": 1}
        assert v.seq == seq    # not computed in the observer: the loop stays free
        for _ in range(300):
            await asyncio.sleep(0.02)
            if v.seq > seq:
                break
        _, steered = steered_generation(lab.model, lab.sae, PROMPT, [(67, 8.0)], n=5)
        assert v.steered_strs == steered.strs and not v.busy and v.progress == ""
        assert seen[0] == "generating 0/10" and "generating 9/10" in seen and "sweeping" in seen and seen[-1] == ""
        # a prompt typed in the browser: the new tokens at once (the last text kept, busy), then the new text
        busy, old = [], list(v.steered_strs)
        v.observe(lambda c: busy.append((c["new"], list(v.tokens), list(v.steered_strs))), names="busy")
        seen.clear()
        lab.prompt_box.value = "Once upon a time"
        for _ in range(300):
            await asyncio.sleep(0.02)
            if v.prompt == "Once upon a time" and not v.busy:
                break
        return lab, v, busy, seen, old

    lab, v, busy, seen, old = asyncio.run(scenario())
    tokens = lab.model.to_str_tokens(lab.model.to_tokens("Once upon a time"))
    assert busy[0] == (True, tokens, old) and busy[-1][0] is False
    _, steered = steered_generation(lab.model, lab.sae, "Once upon a time", [(67, 8.0)], n=5)
    assert v.steered_strs == steered.strs and v.tokens == tokens and v.progress == "" and "generating 3/10" in seen


def test_view_request_overtaken_by_a_prompt_edit_uses_the_new_prompt():
    import asyncio

    async def scenario():
        lab = mechviz.Lab.default(prompt=PROMPT)
        v = lab.add(mechviz.SteeringView(), n=2, specs=[(67, 4.0)])
        v.request = {"specs": [{"feature": 67, "value": 8.0, "mode": "clamp"}], "n": 12, "id": 1}
        await asyncio.sleep(0)
        lab.prompt = "Once upon a time"     # from Python: synchronous, while the request is computed
        for _ in range(400):
            await asyncio.sleep(0.02)
            if v.n == 12 and not v.busy:
                break
        return lab, v

    lab, v = asyncio.run(scenario())
    _, steered = steered_generation(lab.model, lab.sae, "Once upon a time", [(67, 8.0)], n=12)
    assert v.prompt == "Once upon a time" and v.steered_strs == steered.strs and v.specs[0]["value"] == 8.0


def test_view_added_after_a_refused_prompt_shows_the_last_good_one():
    lab = mechviz.Lab.default(prompt=PROMPT)
    lab.attention()
    with pytest.raises(ValueError):
        lab.prompt = "x" * 2000        # too long: refused, the views keep PROMPT
    v = lab.add(mechviz.SteeringView(), n=3, specs=[(67, 6.0)])
    _, steered = steered_generation(lab.model, lab.sae, PROMPT, [(67, 6.0)], n=3)
    assert v.prompt == PROMPT and v.steered_strs == steered.strs and v.error == ""
