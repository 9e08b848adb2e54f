"""Logit lens: equal to TransformerLens' accumulated_resid(apply_ln=True) -> unembed on the same weights,
and the same for the HF and TL adapters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechviz.analysis.logit_lens import LogitLens, logit_lens, needs
from mechviz.models import HFAdapter, wrap

from .conftest import build_hf, tl_from_hf

pytest.importorskip("transformer_lens")

IDS = torch.tensor([0, 5, 17, 42, 8, 99, 5, 17, 42, 3, 250, 7])
K = 5


def sharpened(arch):
    """A tiny random model whose final norm gain is scaled up (x12 GPT-2, x30 others), so that every layer's lens is a peaked
    distribution (random-init logits are near uniform, which would make the comparison weak)."""
    model = build_hf(arch)
    norm = {"gpt2": "transformer.ln_f", "neox": "gpt_neox.final_layer_norm", "llama_gqa": "model.norm"}[arch]
    mod = model
    for part in norm.split("."):
        mod = getattr(mod, part)
    with torch.no_grad():
        mod.weight.mul_(12.0 if arch == "gpt2" else 30.0)
    return model


@pytest.fixture(scope="module", params=["gpt2", "neox", "llama_gqa"])
def pair(request):
    hf_model = sharpened(request.param)
    return request.param, HFAdapter(hf_model), wrap(tl_from_hf(hf_model))


def tl_reference(tl_model, ids):
    """TL's documented logit lens: accumulated_resid(apply_ln=True) then model.unembed, softmaxed."""
    _, cache = tl_model.run_with_cache(ids[None])
    stack, labels = cache.accumulated_resid(apply_ln=True, return_labels=True)   # [L+1, 1, T, d]
    with torch.no_grad():
        probs = torch.softmax(tl_model.unembed(stack[:, 0]).float(), dim=-1)       # [L+1, T, vocab]
    # the same thing spelled per layer: the final norm applied to each layer's own residual
    with torch.no_grad():
        per_layer = torch.softmax(tl_model.unembed(tl_model.ln_final(cache.accumulated_resid()[:, 0])), dim=-1)
    torch.testing.assert_close(probs, per_layer, atol=1e-6, rtol=0)
    # not TL's other option (every layer divided by the final layer's cached scale, no norm
    # weights: meant for fold_ln models), which gives a different grid
    with torch.no_grad():
        cached = cache.apply_ln_to_stack(cache.accumulated_resid(), recompute_ln=False)
        cached = torch.softmax(tl_model.unembed(cached[:, 0]).float(), dim=-1)
    assert (cached[:-1] - probs[:-1]).abs().max() > 1e-2
    return probs, labels


def assert_same_grid(got: LogitLens, probs: torch.Tensor, what: str) -> float:
    want_p, want_i = torch.topk(probs, K, dim=-1)
    err = float(np.abs(got.top_probs - want_p.numpy()).max())
    assert err <= 1e-4, f"{what}: top_probs differ by {err}"
    # ids equal wherever the k-th and (k+1)-th probabilities are not a near tie
    same = got.top_ids == want_i.numpy()
    gaps = np.abs(np.diff(want_p.numpy(), axis=-1))
    tie = np.concatenate([gaps < 1e-5, np.zeros_like(gaps[..., :1], dtype=bool)], -1)
    tie |= np.concatenate([np.zeros_like(gaps[..., :1], dtype=bool), gaps < 1e-5], -1)
    assert (same | tie).all(), f"{what}: top ids differ at {np.argwhere(~(same | tie))[:5]}"
    assert same.mean() > 0.99
    ent = -(probs * probs.clamp_min(1e-30).log()).sum(-1).numpy()
    assert np.abs(got.entropy - ent).max() <= 1e-4
    return err


def test_logit_lens_equals_tl_accumulated_resid(pair):
    arch, hf, tl = pair
    probs, labels = tl_reference(tl.model, IDS)
    lens = logit_lens(tl, tl.run(IDS, capture=needs(tl.n_layers)), k=K)
    assert len(labels) == lens.top_ids.shape[0] == tl.n_layers + 1
    assert lens.rows == ["resid_pre.0", "resid_pre.1", "resid_pre.2", "resid_post.2"]  # = 0_pre .. final_post
    assert lens.top_ids.shape == (4, len(IDS), K) and lens.entropy.shape == (4, len(IDS))
    err = assert_same_grid(lens, probs, f"{arch} TL adapter")
    assert lens.top_probs[..., 0].mean() > 0.1 and lens.entropy.mean() < 0.8 * np.log(tl.d_vocab)  # peaked
    print(arch, f"max |top_probs - TL accumulated_resid| = {err:.1e}; mean top-1 prob "
                f"{lens.top_probs[..., 0].mean():.2f}, mean entropy {lens.entropy.mean():.2f} nats")


def test_hf_adapter_gives_the_tl_logit_lens(pair):
    arch, hf, tl = pair
    probs, _ = tl_reference(tl.model, IDS)
    lens_hf = logit_lens(hf, hf.run(IDS, capture=needs(hf.n_layers)), k=K, target="next")
    err = assert_same_grid(lens_hf, probs, f"{arch} HF adapter")
    lens_tl = logit_lens(tl, tl.run(IDS, capture=needs(tl.n_layers)), k=K, target="next")
    np.testing.assert_allclose(lens_hf.target_prob, lens_tl.target_prob, atol=1e-4, equal_nan=True)
    np.testing.assert_array_equal(lens_hf.target_rank, lens_tl.target_rank)
    print(arch, f"max |top_probs HF - TL reference| = {err:.1e}, max |target_prob HF - TL| = "
                f"{np.nanmax(np.abs(lens_hf.target_prob - lens_tl.target_prob)):.1e}")


def test_incl_mid_rows_equal_tl(pair):
    arch, hf, tl = pair
    lens_hf = logit_lens(hf, hf.run(IDS, capture=needs(3, incl_mid=True)), k=K, incl_mid=True)
    assert lens_hf.rows == ["resid_pre.0", "resid_mid.0", "resid_pre.1", "resid_mid.1", "resid_pre.2",
                            "resid_mid.2", "resid_post.2"]
    lens_tl = logit_lens(tl, tl.run(IDS, capture=needs(3, incl_mid=True)), k=K, incl_mid=True)
    np.testing.assert_allclose(lens_hf.top_probs, lens_tl.top_probs, atol=1e-4)
    if tl.parallel:   # TL has no resid_mid hook in parallel blocks, so no TL reference for these rows
        return
    _, cache = tl.model.run_with_cache(IDS[None])
    stack = cache.accumulated_resid(apply_ln=True, incl_mid=True)
    with torch.no_grad():
        probs = torch.softmax(tl.model.unembed(stack[:, 0]).float(), dim=-1)
    assert_same_grid(lens_hf, probs, f"{arch} HF incl_mid")


def test_last_row_is_the_model_output_and_targets(pair):
    _, hf, _ = pair
    run = hf.run(IDS, capture=needs(hf.n_layers))
    lens = logit_lens(hf, run, k=3, target="next")
    probs = torch.softmax(run.logits, -1)
    np.testing.assert_allclose(lens.top_probs[-1], torch.topk(probs, 3, -1).values.numpy(), atol=1e-5)
    T = len(IDS)
    next_p = probs[torch.arange(T - 1), IDS[1:]].numpy()
    np.testing.assert_allclose(lens.target_prob[-1, :-1], next_p, atol=1e-5)
    assert np.isnan(lens.target_prob[:, -1]).all() and (lens.target_rank[:, -1] == -1).all()
    want_rank = (run.logits[torch.arange(T - 1)] > run.logits[torch.arange(T - 1), IDS[1:]][:, None]).sum(-1)
    np.testing.assert_array_equal(lens.target_rank[-1, :-1], want_rank.numpy())
    # a fixed target token: rank 0 exactly where it is the top token
    one = logit_lens(hf, run, k=3, target=int(lens.top_ids[1, 4, 0]))
    assert one.target_rank[1, 4] == 0 and one.target_prob[1, 4] == pytest.approx(lens.top_probs[1, 4, 0], abs=1e-6)
    assert ((one.target_rank == 0) == (one.top_ids[..., 0] == one.target[None])).all()
    assert set(one.arrays()) == {"top_ids", "top_probs", "entropy", "top_strs", "target", "target_prob",
                                 "target_rank"}
    assert one.colour("target_rank").shape == one.colour("entropy").shape == (4, T)


def test_needs_and_errors(tokenizer):
    hf = HFAdapter(build_hf("gpt2"), tokenizer)
    assert needs(3) == ["resid_pre.0", "resid_pre.1", "resid_pre.2", "resid_post.2"]
    run = hf.run("The cat sat on the mat", capture=["resid_pre.0"])
    with pytest.raises(KeyError, match="needs .*resid_pre.1"):
        logit_lens(hf, run)
    run = hf.run("The cat sat on the mat", capture=needs(3))
    lens = logit_lens(hf, run, k=2)
    assert lens.top_strs.shape == (4, len(run.tokens), 2)
    assert lens.top_strs[0, 0, 0] == tokenizer.decode([int(lens.top_ids[0, 0, 0])])
    with pytest.raises(ValueError, match="target has 2 ids but the prompt has"):
        logit_lens(hf, run, target=[1, 2])
    with pytest.raises(ValueError, match="needs a target token"):
        lens.colour("target_prob")
    (the,) = tokenizer("T", add_special_tokens=False)["input_ids"]      # a token given as its text
    by_text, by_id = logit_lens(hf, run, k=2, target="T"), logit_lens(hf, run, k=2, target=the)
    assert (by_text.target == the).all()
    np.testing.assert_array_equal(by_text.target_rank, by_id.target_rank)
    with pytest.raises(ValueError, match="is 2 tokens"):
        logit_lens(hf, run, target=tokenizer.decode([40, 41]))


@pytest.mark.parametrize("V", [20011, 300])   # blocked top-k with a tail block / a small vocabulary (plain topk)
def test_stats_equal_the_plain_formulas(V):
    """logit_stats.Stats (chunked, no softmax tensor) against log_softmax / topk / -sum p log p / a count."""
    from mechviz.analysis.logit_stats import Stats

    g = torch.Generator().manual_seed(0)
    n, k = 70, 5                                        # 70 rows: three sub-chunks of 32
    x = torch.randn(n, V, generator=g) * 3
    x[0, 17] += 40.0                                    # a peaked row: entropy ~ 0
    x[1] = 0.25                                         # all tied: entropy log V, rank 0 for every target
    x[2, V - 3] = 30.0                                  # the maximum in the tail (V is not a multiple of 128)
    x[3] *= 1e3                                         # large logits
    x[4, :] = torch.arange(V, dtype=torch.float32) / V  # distinct, sorted: the top-k are the last k
    target = torch.randint(0, V, (n,), generator=g).numpy()
    target[5] = -1                                      # no target at one position
    target[0] = 17
    pos = np.arange(n)[::-1].copy()                     # row i of x is position pos[i]: written in reverse order
    by_position = np.empty_like(target)
    by_position[pos] = target
    st = Stats(2, n, k, by_position)
    st.fill(1, pos, x)
    logp = torch.log_softmax(x.double(), -1)
    p = logp.exp()
    want_v, want_i = torch.topk(x, k, -1)
    got_i = st.top_ids[1, pos]
    untied = torch.tensor([i != 1 for i in range(n)])
    np.testing.assert_array_equal(got_i[untied.numpy()], want_i[untied].numpy())
    np.testing.assert_allclose(st.top_probs[1, pos], p.gather(-1, want_i).numpy(), atol=1e-6, rtol=1e-5)
    ent = -(p * logp).sum(-1).numpy()
    np.testing.assert_allclose(st.entropy[1, pos], ent, atol=2e-5, rtol=1e-5)
    assert st.entropy[1, pos[0]] == pytest.approx(0.0, abs=1e-6) and st.entropy[1, pos[1]] == pytest.approx(np.log(V), abs=1e-4)
    has = target >= 0
    t = torch.from_numpy(np.where(has, target, 0))[:, None]
    want_rank = (x > x.gather(-1, t)).sum(-1).numpy()
    np.testing.assert_array_equal(st.target_rank[1, pos][has], want_rank[has])
    assert st.target_rank[1, pos[5]] == -1 and np.isnan(st.target_prob[1, pos[5]])
    assert st.target_rank[1, pos[0]] == 0 and st.target_rank[1, pos[1]] == 0
    np.testing.assert_allclose(st.target_prob[1, pos][has], p.gather(-1, t)[:, 0].numpy()[has], atol=1e-6, rtol=1e-5)
    assert (st.top_ids[0] == -1).all() and np.isnan(st.entropy[0]).all()   # row 0 never filled
