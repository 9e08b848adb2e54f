"""DashboardView bound to a Lab: what it packs equals the analysis' dashboards, it follows the shared
(dictionary, feature) selection, searches by token, and computes a dictionary's dashboards off the kernel's
loop with a progress bar when live."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

import mechviz
from mechviz.analysis.dashboards import feature_dashboards
from mechviz.saes import SAE

PROMPT = "The cat sat on the mat. The cat"


@pytest.fixture(scope="module")
def lab():
    return mechviz.Lab.default(prompt=PROMPT)


@pytest.fixture(scope="module")
def reference(lab):
    return feature_dashboards(lab.model, lab.saes["resid_post.1"], progress=False)


def unpack(view, n):
    """Dashboard n of the view's payload, as the browser reads it (strings through the table)."""
    S = view.strings
    tok, grp = view.ctx_tokens[n], view.ctx_group[n]
    rows = [[S[t] for t in row if t >= 0] for row, g in zip(tok, grp) if g >= 0]
    return rows, grp[grp >= 0]


def test_payload_equals_the_analysis(lab, reference):
    feat = lab.features()
    view = lab.add(mechviz.DashboardView())
    assert view.status == "ready" and view.corpus_label.startswith(f"{reference.rows.shape[0]} rows x 128 tokens")
    # the prompt's most active features come with the payload (the export switches among them)
    assert view.features.tolist()[:5] == feat.result.features[:5].tolist()
    for n, f in enumerate(view.features.tolist()[:3]):
        fd = reference.feature(f)
        np.testing.assert_allclose(view.stats[n], [fd.density, fd.mean_active, fd.max_act], rtol=1e-6)
        rows, groups = unpack(view, n)
        want = [[s for s, t in zip(strs, ids) if t >= 0] for ctx in [fd.top] + fd.intervals
                for strs, ids in zip(ctx.token_strs, ctx.tokens)]
        assert rows == want
        assert groups.tolist() == [g for g, ctx in enumerate([fd.top] + fd.intervals) for _ in range(len(ctx))]
        assert view.group_labels[n][0] == f"top {len(fd.top)} activations"
        centre = view.ctx_acts[n, : len(fd.top), view.centre].astype(np.float32)
        np.testing.assert_allclose(centre, fd.top.acts, rtol=2e-3)          # float16 on the wire
        np.testing.assert_array_equal(view.hist_counts[n], fd.hist_counts)
        assert [view.strings[i] for i in view.effect_idx[n, 0]] == fd.promoted_strs
        np.testing.assert_allclose(view.effect_val[n, 1], fd.suppressed_values, rtol=1e-6)
        np.testing.assert_array_equal(view.logit_counts[n], fd.logit_hist_counts)
    feat.close()
    view.close()


def test_follows_the_selection_and_searches(lab, reference):
    view = lab.add(mechviz.DashboardView())
    outside = next(f for f in range(1024) if f not in view.features.tolist() and reference.feature(f).max_act > 0)
    lab.selection.feature = outside       # a feature its payload lacks: a new payload leads with it
    assert view.features[0] == outside and view.feature == outside
    lab.selection.feature = int(view.features[2])   # one it holds: no new payload needed
    assert view.features[0] == outside
    view.search_request = {"token": " the", "by": "activation", "id": 1}
    hits = reference.search_by_token(" the", by="activation")
    assert view.search_result == [[int(f), pytest.approx(float(s))] for f, s in zip(hits.features, hits.scores)]
    assert view.search_label == "activation on ' the'"
    view.search_request = {"token": " the", "by": "logit", "id": 2}
    assert view.search_result[0][0] == int(reference.search_by_token(" the", by="logit").features[0])
    view.search_request = {"token": " Paris is", "by": "activation", "id": 3}
    assert view.error.startswith("search: ' Paris is' is 4 tokens") and view.search_result == []
    view.close()


def test_another_dictionary_gets_its_own_dashboards(lab):
    W = torch.randn(128, 64, generator=torch.Generator().manual_seed(0)) / 8
    other = SAE(W_enc=W, b_enc=torch.zeros(64), W_dec=W.T.clone(), b_dec=torch.zeros(128), site="resid_post.2",
                neuronpedia_id="mechviz-default/2-res-test")
    lab2 = mechviz.Lab(lab.model, prompt=PROMPT, sae=[mechviz.zoo.SAE_DIR, other])
    view = lab2.add(mechviz.DashboardView())
    assert view.neuronpedia == ""
    lab2.selection.dictionary = "resid_post.2"
    ref = feature_dashboards(lab2.model, other, progress=False)
    assert "resid_post.2" in view.corpus_label and view.result.sae is other
    assert view.neuronpedia == "https://www.neuronpedia.org/mechviz-default/2-res-test/{}"
    f = int(view.features[0])
    np.testing.assert_allclose(view.stats[0], [ref.feature(f).density, ref.feature(f).mean_active,
                                               ref.feature(f).max_act], rtol=1e-6)


def test_live_the_dashboards_compute_in_a_worker_with_progress(lab):
    async def scenario():
        lab3 = mechviz.Lab(lab.model, prompt=PROMPT, sae=mechviz.zoo.SAE_DIR)
        assert lab3._loop is asyncio.get_running_loop()
        seen = []
        view = mechviz.DashboardView()
        view.observe(lambda ch: seen.append((ch["name"], ch["new"])), names=["status", "progress"])
        lab3.add(view, batch_size=8)
        assert view.status == "computing"        # the cell returns at once: the work is in a worker
        for _ in range(3000):
            await asyncio.sleep(0.01)
            if view.status in ("ready", "error"):
                break
        return view, seen

    view, seen = asyncio.run(scenario())
    assert view.status == "ready", view.error
    progress = [v for n, v in seen if n == "progress"]
    assert len(progress) >= 3 and progress == sorted(progress) and progress[-1] == 1.0
    assert view.features is not None and len(view.features) > 0


def test_needs_a_dictionary():
    lab = mechviz.Lab.default(prompt=PROMPT, sae=False)
    with pytest.raises(ValueError, match="needs an SAE"):
        lab.add(mechviz.DashboardView())
