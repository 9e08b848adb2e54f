"""Feature dashboards on the bundled model and SAE equal a brute-force computation over the dense
[N_tokens, d_sae] activation matrix; the cache resumes to identical results and a hit runs no forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mechviz
from mechviz.analysis.dashboard_cache import HIST_EDGES, HIST_PER_INTERVAL, N_INTERVALS, token_keys
from mechviz.analysis.dashboards import default_corpus, feature_dashboards
from mechviz.analysis.features import feature_activations, top_features
from mechviz.saes import SAE, load_sae
from mechviz.zoo import SAE_DIR, load_default_model

BATCH = 16


@pytest.fixture(scope="module")
def adapter():
    torch.manual_seed(0)
    return mechviz.wrap(*load_default_model())


@pytest.fixture(scope="module")
def sae():
    return load_sae(SAE_DIR)


@pytest.fixture(scope="module")
def dash(adapter, sae):
    return feature_dashboards(adapter, sae, batch_size=BATCH, progress=False)


@pytest.fixture(scope="module")
def dense(adapter, sae, dash):
    """The whole corpus encoded at once into [N, d_sae] (same row batches as the dashboards, so the same
    floats), BOS positions zeroed (they do not count)."""
    rows = dash.rows
    acts = []
    for r0 in range(0, len(rows), BATCH):
        x = adapter.capture_batch(torch.from_numpy(rows[r0:r0 + BATCH]), sae.site)
        acts.append(sae.encode(x.reshape(-1, x.shape[-1])).float().numpy())
    acts = np.concatenate(acts)
    counted = (rows != adapter.bos_id()).reshape(-1)
    acts[~counted] = 0
    return acts, counted


def test_capture_batch_equals_run_and_stops_after_the_site(adapter, sae, dash):
    calls = {i: 0 for i in range(adapter.n_layers)}
    handles = [b.register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls[i] + 1))
               for i, b in enumerate(adapter.blocks)]
    try:
        x = adapter.capture_batch(torch.from_numpy(dash.rows[:3]), sae.site)
    finally:
        for h in handles:
            h.remove()
    assert calls == {0: 1, 1: 1, 2: 0, 3: 0}  # resid_post.1: blocks 2 and 3 never run
    for i in range(3):
        ref = adapter.run(torch.from_numpy(dash.rows[i]), capture=[sae.site])[sae.site]
        torch.testing.assert_close(x[i], ref, rtol=1e-5, atol=1e-5)


def test_capture_batch_on_transformer_lens_stops_after_the_site(adapter, sae, dash):
    pytest.importorskip("transformer_lens")
    tl = mechviz.wrap(load_default_model(backend="transformer_lens")[0])
    fired = []
    handle = tl.model.blocks[2].register_forward_pre_hook(lambda m, a: fired.append(1))
    try:
        x = tl.capture_batch(torch.from_numpy(dash.rows[:3]), sae.site)
    finally:
        handle.remove()
    assert not fired and not any(h._forward_hooks for h in tl.model.hook_dict.values())  # stopped, hooks removed
    torch.testing.assert_close(x, adapter.capture_batch(torch.from_numpy(dash.rows[:3]), sae.site), rtol=1e-4,
                               atol=1e-4)


def test_top_k_contexts_equal_brute_force(dash, dense):
    acts, _ = dense
    S, T = dash.rows.shape
    k, left, right = dash.params["k"], dash.params["left"], dash.params["right"]
    g = np.arange(acts.shape[0])
    checked = 0
    for f in range(acts.shape[1]):
        a = acts[:, f]
        pos = np.nonzero(a > 0)[0]
        order = pos[np.lexsort((g[pos], -a[pos]))][:k]  # largest first, ties: the earlier token
        fd = dash.feature(f)
        np.testing.assert_array_equal(fd.top.rows * T + fd.top.positions, order)
        np.testing.assert_array_equal(fd.top.acts, a[order])
        for c, gi in enumerate(order):  # the window: the feature over [pos - left, pos + right] of the row
            row, p = divmod(int(gi), T)
            cols = np.arange(p - left, p + right + 1)
            inside = (cols >= 0) & (cols < T)
            want = np.where(inside, a[row * T + np.clip(cols, 0, T - 1)], 0)
            np.testing.assert_array_equal(fd.top.window_acts[c], want)
            tokens = np.where(inside, dash.rows[row, np.clip(cols, 0, T - 1)], -1)
            np.testing.assert_array_equal(fd.top.tokens[c], tokens)
            assert fd.top.token_strs[c][left] == dash._strs([dash.rows[row, p]])[0]
        checked += len(order) == k
    assert checked > 900  # nearly every feature has a full top k on this corpus


def test_ties_go_to_the_earlier_row(adapter, sae, dash):
    row = dash.rows[5]
    d = feature_dashboards(adapter, sae, np.stack([row] * 3), k=2, batch_size=1, features=range(64), progress=False)
    n = 0
    for f in range(64):
        fd = d.feature(f)
        if len(fd.top):  # the best activation occurs three times: rows 0 and 1 at one position win
            assert fd.top.rows.tolist() == [0, 1] and fd.top.positions[0] == fd.top.positions[1]
            assert fd.top.acts[0] == fd.top.acts[1] == d.feature(f).max_act
            n += 1
    assert n > 20


def test_density_histogram_and_interval_samples_equal_brute_force(dash, dense):
    acts, counted = dense
    a = dash.arrays
    assert int(a["n_tokens"]) == counted.sum()
    np.testing.assert_array_equal(a["n_active"], (acts > 0).sum(0))
    np.testing.assert_array_equal(a["act_max"], acts.max(0))
    np.testing.assert_allclose(a["act_sum"], acts.astype(np.float64).sum(0), rtol=1e-9)
    edges = np.r_[0.0, HIST_EDGES[1:-1].astype(np.float32).astype(np.float64), np.inf]
    g = np.arange(acts.shape[0])
    keys = token_keys(g)
    q = dash.params["q"]
    for f in range(0, acts.shape[1], 7):
        v = acts[:, f]
        pos = np.nonzero(v > 0)[0]
        hist = np.histogram(v[pos].astype(np.float64), bins=edges)[0]
        np.testing.assert_array_equal(a["hist"][f], hist)
        fd = dash.feature(f)
        assert fd.density == pytest.approx(len(pos) / counted.sum())
        bins = np.searchsorted(edges, v[pos].astype(np.float64), side="right") - 1
        want = []
        for b in range(N_INTERVALS - 1, -1, -1):
            inb = pos[bins // HIST_PER_INTERVAL == b]
            if len(inb):
                want.append((inb[np.lexsort((g[inb], keys[inb]))][:q], len(inb)))
        assert len(fd.intervals) == len(want)
        T = dash.rows.shape[1]
        for c, (idx, count) in zip(fd.intervals, want):
            np.testing.assert_array_equal(c.rows * T + c.positions, idx)
            np.testing.assert_array_equal(c.acts, v[idx])
            assert c.count == count and all(c.lo <= x < c.hi for x in c.acts)


def test_logit_effects_equal_w_dec_times_w_u(adapter, sae, dash):
    W_U = adapter.model.lm_head.weight.detach().T  # tied GPT-2 unembedding, no bias
    effects = (sae.W_dec @ W_U).numpy()
    k = dash.params["k"]
    for f in (0, 3, 500, 1023):
        fd, v = dash.feature(f), effects[f]
        np.testing.assert_allclose(fd.promoted_values, np.sort(v)[::-1][:k], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(fd.suppressed_values, np.sort(v)[:k], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(v[fd.promoted_ids], fd.promoted_values, rtol=1e-5, atol=1e-6)
        assert fd.promoted_strs == adapter.to_str_tokens(torch.from_numpy(fd.promoted_ids))
        counts, edges = np.histogram(v, bins=dash.params["n_logit_bins"])
        assert np.abs(fd.logit_hist_counts - counts).sum() <= 2  # float32 vs float64 at bin edges
        np.testing.assert_allclose(fd.logit_hist_edges, edges, rtol=1e-5, atol=1e-6)


def _forward_counter(adapter):
    count = [0]
    handle = adapter.blocks[0].register_forward_pre_hook(lambda m, a: count.__setitem__(0, count[0] + 1))
    return count, handle


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_interrupted_run_resumes_to_identical_results(adapter, sae, tmp_path, exc):
    corpus = default_corpus()[:2]
    kw = dict(features=range(0, 1024, 3), seq_len=64, batch_size=4, save_every=2)
    ref = feature_dashboards(adapter, sae, corpus, progress=False, **kw)

    def stop_after_5(done, total):
        if done >= 5 * 4:
            raise exc("interrupted")
    with pytest.raises(exc):
        feature_dashboards(adapter, sae, corpus, cache_dir=tmp_path, progress=stop_after_5, **kw)
    count, handle = _forward_counter(adapter)
    try:
        resumed = feature_dashboards(adapter, sae, corpus, cache_dir=tmp_path, progress=False, **kw)
    finally:
        handle.remove()
    (entry,) = tmp_path.iterdir()
    import json
    runs = json.loads((entry / "meta.json").read_text())["runs"]
    n_rows = len(ref.rows)
    assert runs[0] == [0, 4, 8, 12, 16] and runs[1] == list(range(20, n_rows, 4))  # no batch computed twice
    assert count[0] == len(runs[1])
    assert resumed.computed and set(resumed.arrays) == set(ref.arrays)
    for name, arr in ref.arrays.items():
        np.testing.assert_array_equal(resumed.arrays[name], arr, err_msg=name)


def test_cache_hit_runs_no_forward_and_other_inputs_are_other_entries(adapter, sae, tmp_path):
    corpus = default_corpus()[:1]
    kw = dict(features=range(100), seq_len=64, cache_dir=tmp_path, progress=False)
    count, handle = _forward_counter(adapter)
    try:
        first = feature_dashboards(adapter, sae, corpus, **kw)
        n_first = count[0]
        hit = feature_dashboards(adapter, sae, corpus, **kw)
        assert count[0] == n_first > 0 and first.computed and not hit.computed
        for name, arr in first.arrays.items():
            np.testing.assert_array_equal(hit.arrays[name], arr)
        other_corpus = feature_dashboards(adapter, sae, [corpus[0][:-200]], **kw)
        assert count[0] > n_first and other_corpus.computed and other_corpus.key != first.key
        n = count[0]
        other = sae.at(sae.site)
        other.W_enc = sae.W_enc.clone()
        other.W_enc[0, 0] += 1e-3
        other_sae = feature_dashboards(adapter, other, corpus, **kw)
        assert count[0] > n and other_sae.computed and other_sae.key not in (first.key, other_corpus.key)
    finally:
        handle.remove()
    assert len(list(tmp_path.iterdir())) == 3


def test_search_by_token_span_and_prompt(adapter, sae, dash, dense):
    acts, _ = dense
    t = adapter.tokenizer(" the", add_special_tokens=False)["input_ids"][0]
    hits = dash.search_by_token(" the", by="activation", n=5)
    where = (dash.rows.reshape(-1) == t)
    mean = acts[where].mean(0)
    np.testing.assert_array_equal(hits.features, top_features(mean[None], 5))
    np.testing.assert_allclose(hits.scores, mean[hits.features], rtol=1e-5)
    logit = dash.search_by_token(t, by="logit", n=5)
    eff = (sae.W_dec @ adapter.model.lm_head.weight.detach()[t]).numpy()
    np.testing.assert_array_equal(logit.features, np.argsort(-eff, kind="stable")[:5])
    prompt = "In the beginning God created the heaven and the earth."
    ref = feature_activations(sae, adapter.run(prompt, capture=[sae.site]))
    span = dash.search_by_span(prompt, 2, 5, n=4, by="max")
    np.testing.assert_array_equal(span.features, top_features(ref[2:5], 4, by="max"))
    per_token = dash.prompt_features(prompt, n=3)
    assert len(per_token) == len(ref)
    from_run = dash.prompt_features(adapter.run(prompt, capture=[sae.site]), n=3)
    assert [(t, h.features.tolist()) for t, h in from_run] == [(t, h.features.tolist()) for t, h in per_token]
    np.testing.assert_array_equal(per_token[4][1].features, top_features(ref[4:5], 3))
    assert "Dashboards(mechviz-default" in repr(dash) and "feature 3" in repr(dash.feature(3))
    with pytest.raises(ValueError, match="tokens"):
        dash.search_by_token(" Constantinople")


def test_a_feature_subset_of_a_relu_sae_equals_those_features_of_the_whole(adapter, dash):
    """ReLU features are encoded from their own encoder rows only: a subset gives the same dashboards."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(128, 96, generator=g) / 128 ** 0.5
    relu = SAE(W_enc=W, b_enc=torch.full((96,), -0.5), W_dec=W.T.clone(), b_dec=torch.zeros(128), site="resid_post.1")
    rows = dash.rows[:12]
    whole = feature_dashboards(adapter, relu, rows, progress=False)
    part = feature_dashboards(adapter, relu, rows, features=[70, 3, 41], progress=False)
    np.testing.assert_array_equal(part.features, [70, 3, 41])
    for f in (70, 3, 41):
        a, b = whole.feature(f), part.feature(f)
        np.testing.assert_array_equal(a.top.rows * 1000 + a.top.positions, b.top.rows * 1000 + b.top.positions)
        np.testing.assert_allclose(a.top.acts, b.top.acts, rtol=1e-5)
        np.testing.assert_array_equal(a.hist_counts, b.hist_counts)
        np.testing.assert_array_equal(a.promoted_ids, b.promoted_ids)
        assert 0 < a.density == b.density < 1


def test_row_histograms_and_top_k_match_numpy_exactly():
    """The vectorised logit-effect helpers: np.histogram's binning and a stable argsort's ties, row by row."""
    from mechviz.analysis.dashboard_cache import histogram_rows, top_k_rows

    rng = np.random.default_rng(0)
    v = rng.standard_normal((64, 2048)).astype(np.float32).astype(np.float64)
    v[5], v[6, :10] = 1.0, 3.0  # a constant row (numpy widens its range) and a tied maximum
    lo, hi = v.min(1), v.max(1)
    want = np.stack([np.histogram(r, bins=40, range=(a, b))[0] for r, a, b in zip(v, lo, hi)])
    np.testing.assert_array_equal(histogram_rows(v, lo, hi, 40), want)
    x = torch.from_numpy(np.round(rng.standard_normal((50, 300)), 1).astype(np.float32))  # many ties
    np.testing.assert_array_equal(top_k_rows(x, 10), np.stack([np.argsort(-r, kind="stable")[:10] for r in x.numpy()]))
