"""Causal tracing (mechviz.analysis.causal_tracing) against a brute-force reference: plain PyTorch hooks on
the HuggingFace model, one run per cell and noise sample, the noise added to the token-embedding output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechviz.analysis.causal_tracing import (CausalTrace, causal_trace, causal_trace_figure, causal_traces,
                                             subject_positions,
                                             window_layers)
from mechviz.analysis.patch_grid import PatchGrid
from mechviz.models import HFAdapter

from .conftest import build_hf

PROMPT, SUBJECT = "Mary went to", "Mary"
# module paths of each test architecture: blocks, MLP and attention inside a block
PATHS = {"gpt2": (lambda m: m.transformer.h, "mlp", "attn"),
         "llama_gqa": (lambda m: m.model.layers, "mlp", "self_attn")}


def _first(x):
    return x[0] if isinstance(x, tuple) else x


def _replace_first(out, new):
    return (new,) + tuple(out[1:]) if isinstance(out, tuple) else new


def reference_trace(model, ids, subj, noise, target, kind, window):
    """values [L, T], low, high by brute force: for every cell and sample a batch-1 pass with hooks adding
    ``noise[s]`` to the token-embedding output at ``subj`` and restoring the clean outputs of the cell's modules."""
    blocks_of, mlp, attn = PATHS["gpt2" if model.config.model_type == "gpt2" else "llama_gqa"]
    blocks = blocks_of(model)
    L, T = len(blocks), len(ids)
    module = {"resid": lambda lay: blocks[lay], "mlp": lambda lay: getattr(blocks[lay], mlp),
              "attn": lambda lay: getattr(blocks[lay], attn)}[kind]
    x = torch.as_tensor(ids)[None]
    clean, handles = {}, []
    for lay in range(L):
        handles.append(module(lay).register_forward_hook(
            lambda _m, _a, out, lay=lay: clean.update({lay: _first(out)[0].detach().clone()})))
    with torch.no_grad():
        probs = torch.softmax(model(x).logits[0, -1].double(), -1)
    for h in handles:
        h.remove()
    high = float(probs[target])

    def prob(restore, s):  # restore: list of (layer, pos)
        hs = [model.get_input_embeddings().register_forward_hook(   # token embeddings (before GPT-2's wpe)
            lambda _m, _a, out: out.index_add(1, torch.tensor(subj), torch.as_tensor(noise[s])[None]))]
        for lay, pos in restore:
            def fix(_m, _a, out, lay=lay, pos=pos):
                h = _first(out).clone()
                h[0, pos] = clean[lay][pos]
                return _replace_first(out, h)
            hs.append(module(lay).register_forward_hook(fix))
        try:
            with torch.no_grad():
                return float(torch.softmax(model(x).logits[0, -1].double(), -1)[target])
        finally:
            for h in hs:
                h.remove()
    S = len(noise)
    low = np.mean([prob([], s) for s in range(S)])
    values = np.zeros((L, T))
    for lay in range(L):
        layers = [lay] if kind == "resid" else window_layers(lay, window, L)
        for p in range(T):
            values[lay, p] = np.mean([prob([(k, p) for k in layers], s) for s in range(S)])
    return values, low, high


def sharp_hf(arch):
    """build_hf with its matrices scaled up (as in test_patching), so that the next-token distribution is far
    from uniform and the noise and each restoration move the target's probability well beyond the tolerance."""
    model = build_hf(arch)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(6)
    return model


@pytest.fixture(scope="module", params=["gpt2", "llama_gqa"])
def traced(request, tokenizer):
    model = sharp_hf(request.param)
    adapter = HFAdapter(model, tokenizer)
    kinds = {"resid": 1, "mlp": 3, "attn": 2}   # windows: 3 and 2 layers of 3, clipped at both edges
    traces = {k: causal_trace(adapter, PROMPT, SUBJECT, kind=k, window=w, samples=3, seed=1) for k, w in kinds.items()}
    return request.param, model, adapter, traces


@pytest.mark.parametrize("kind", ["resid", "mlp", "attn"])
def test_matches_brute_force_reference(traced, kind):
    arch, model, adapter, traces = traced
    tr = traces[kind]
    ids = adapter.to_tokens(PROMPT)
    values, low, high = reference_trace(model, ids, tr.subject, tr.noise, tr.target, kind, tr.window)
    err = float(np.max(np.abs(tr.values - values)))
    print(f"{arch} {kind}: max |error| {err:.2e} (values {values.min():.4g}..{values.max():.4g}), "
          f"low {abs(tr.low - low):.2e}, high {abs(tr.high - high):.2e}")
    assert err < 1e-5 and err < 1e-4 * np.ptp(values)  # absolute, and relative to the grid's range
    assert abs(tr.low - low) < 1e-5 and abs(tr.high - high) < 1e-9
    assert np.ptp(values[:, tr.subject[0]:]) > 1e-3     # the noise and the restorations do something


def test_restoring_everything_gives_clean_and_nothing_gives_corrupted(traced):
    _arch, _model, adapter, traces = traced
    tr = traces["resid"]
    assert tr.values[-1, -1] == pytest.approx(tr.high, abs=1e-6)   # the last block's output at the last token
    assert np.all(tr.values[:, :tr.subject[0]] == tr.low)          # before the subject: nothing to restore
    zero = causal_trace(adapter, PROMPT, SUBJECT, kind="mlp", samples=2, noise=0.0)
    np.testing.assert_allclose(zero.values, zero.high, atol=1e-6)  # no noise: every cell is the clean run
    assert zero.low == pytest.approx(zero.high, abs=1e-6)


def test_seeded_and_batched_the_same(traced):
    _arch, _model, adapter, traces = traced
    tr = traces["attn"]
    again = causal_trace(adapter, PROMPT, SUBJECT, kind="attn", window=2, samples=3, seed=1, batch_tokens=1)
    np.testing.assert_array_equal(again.noise, tr.noise)
    np.testing.assert_allclose(again.values, tr.values, atol=1e-6)  # one cell per pass vs many
    other = causal_trace(adapter, PROMPT, SUBJECT, kind="attn", window=2, samples=3, seed=2)
    assert not np.allclose(other.noise, tr.noise)
    emb = adapter.model.get_input_embeddings().weight
    assert tr.noise_std == pytest.approx(float(emb.detach().double().std()))
    assert np.std(tr.noise) == pytest.approx(3 * tr.noise_std, rel=0.1)


def test_subject_positions_and_result(traced):
    _arch, _model, adapter, traces = traced
    ids = adapter.to_tokens(PROMPT)           # BOS, then one token per character
    assert subject_positions(adapter, ids, "Mary") == [1, 2, 3, 4]
    assert subject_positions(adapter, ids, "y w") == [4, 5, 6]
    assert subject_positions(adapter, ids, [2, -1]) == [2, len(ids) - 1]
    with pytest.raises(ValueError, match="not in the prompt"):
        subject_positions(adapter, ids, "Bob")
    with pytest.raises(ValueError, match="kind must be"):
        causal_trace(adapter, PROMPT, SUBJECT, kind="z")
    tr = traces["mlp"]
    assert isinstance(tr, CausalTrace) and tr.values.shape == (adapter.n_layers, len(ids))
    assert tr.tokens == adapter.to_str_tokens(ids)
    grid = tr.grid()
    assert isinstance(grid, PatchGrid) and grid.site == "mlp_out" and grid.by == "position"
    np.testing.assert_array_equal(grid.normalized(), tr.normalized())
    assert "CausalTrace(mlp, window 3" in repr(tr)


def test_three_traces_share_one_draw_and_draw(tokenizer):
    adapter = HFAdapter(build_hf("gpt2"), tokenizer)
    trs = causal_traces(adapter, PROMPT, SUBJECT, window=2, samples=2, target=" ")
    assert [t.kind for t in trs] == ["resid", "mlp", "attn"]
    assert len({t.low for t in trs}) == 1 and all(np.array_equal(t.noise, trs[0].noise) for t in trs)
    assert trs[0].target_str == " "
    fig = causal_trace_figure(trs)
    assert len(fig.axes) == 6                 # three heatmaps and their colour bars
    from mechviz.widgets.patching import PatchGridView

    view = PatchGridView()
    view.show_grid(trs[1].grid())
    assert view.site == "mlp_out" and view.values.shape == trs[1].values.shape


def test_transformer_lens_backend_agrees(tokenizer):
    """The same trace through the TransformerLens adapter (noise on hook_resid_pre of block 0 = embed + pos_embed)."""
    pytest.importorskip("transformer_lens")
    from mechviz.models import wrap

    from .conftest import tl_from_hf

    model = sharp_hf("gpt2")
    ids = HFAdapter(model, tokenizer).to_tokens(PROMPT)      # TL gets the same ids (and no tokenizer)
    hf = causal_traces(HFAdapter(model, tokenizer), ids, [1, 2, 3, 4], window=2, samples=2)
    tlt = causal_traces(wrap(tl_from_hf(model)), ids, [1, 2, 3, 4], window=2, samples=2)
    for a, b in zip(hf, tlt):
        assert a.noise_std == pytest.approx(b.noise_std) and a.target == b.target
        np.testing.assert_allclose(b.values, a.values, atol=1e-5)
        assert abs(a.low - b.low) < 1e-5 and abs(a.high - b.high) < 1e-5


# -- the Lab's causal-trace grid (lab.patching(prompt, trace=...)) -------------------------------------------
LAB_PROMPT, LAB_SUBJECT = "The New York Yankees played in New", "New York Yankees"


@pytest.fixture(scope="module")
def lab():
    import mechviz

    return mechviz.Lab.default(prompt="The cat", threads=1, sae=False)


def test_lab_trace_grid_equals_the_function_and_a_clicked_cell_its_value(lab):
    args = dict(subject=LAB_SUBJECT, kind="mlp", window=3, samples=3)
    view = lab.patching(LAB_PROMPT, trace=args)
    ref = causal_trace(lab.model, LAB_PROMPT, LAB_SUBJECT, kind="mlp", window=3, samples=3)
    assert view.status == "done" and view.done == view.total == ref.values.size
    np.testing.assert_allclose(view.data["values"], ref.values, atol=1e-6)
    assert view.clean_metric == pytest.approx(ref.high) and view.corrupted_metric == pytest.approx(ref.low)
    assert view.site == "mlp_out" and view.title == "Causal trace (MLP, window 3)"
    assert f"{ref.target_str!r}" in view.note and "New*" in view.col_labels[2]   # subject tokens marked
    r, c = np.unravel_index(np.argmax(ref.values), ref.values.shape)
    view.cell = [int(r), int(c)]
    assert view.detail_cell == [r, c] and view.detail_metric == pytest.approx(ref.values[r, c], abs=1e-6)
    assert view.detail_strs[0] == ref.target_str and view.error == ""
    view.cell = [0, 0]   # before the subject: the corrupted run itself
    assert view.detail_metric == pytest.approx(ref.low, abs=1e-6)


def test_lab_trace_streams_and_cancels_in_the_kernel_loop(lab):
    import asyncio

    async def scenario():
        lab._loop = asyncio.get_running_loop()
        try:
            view = lab.patching(LAB_PROMPT, trace=dict(subject=LAB_SUBJECT, samples=4, batch_tokens=64))
            seen = []
            view.observe(lambda ch: seen.append(ch["new"]), names="done")
            assert view.status == "running" and np.isnan(view.data["values"][:, 2:]).all()
            for _ in range(2000):
                await asyncio.sleep(0.01)
                if view.status in ("done", "cancelled", "error"):
                    break
            view2 = lab.patching(LAB_PROMPT, trace=dict(subject=LAB_SUBJECT, samples=4, batch_tokens=64))
            view2.cancel_requests += 1
            for _ in range(2000):
                await asyncio.sleep(0.01)
                if view2.status in ("done", "cancelled", "error"):
                    break
            return view, seen, view2
        finally:
            lab._loop = None

    view, seen, view2 = asyncio.run(scenario())
    ref = causal_trace(lab.model, LAB_PROMPT, LAB_SUBJECT, samples=4)
    assert view.status == "done" and seen[-1] == view.total and len(seen) >= 2
    np.testing.assert_allclose(view.data["values"], ref.values, atol=1e-6)
    assert view2.status == "cancelled" and np.isnan(view2.data["values"]).any()
    assert view2.result.complete is False


def test_trace_progress_and_cancel_from_python(lab):
    from mechviz.analysis.causal_tracing import _Tracer

    tracer = _Tracer(lab.model, LAB_PROMPT, LAB_SUBJECT, None, 3.0, 2, 0, None, 64)
    steps = []
    part = tracer.trace("resid", 1, on_progress=lambda t, d, n: steps.append((d, n)), cancel=lambda: len(steps) >= 2)
    assert part.complete is False and len(steps) == 2 and steps[0][0] < steps[1][0] < steps[0][1]
    assert np.isnan(part.values).sum() == steps[0][1] - steps[1][0]
    full = tracer.trace("resid", 1)
    done = ~np.isnan(part.values)
    np.testing.assert_allclose(part.values[done], full.values[done], atol=1e-6)


def test_lab_trace_refusals(lab):
    with pytest.raises(TypeError, match="with the subject"):
        lab.patching(LAB_PROMPT, trace=dict(kind="mlp"))
    with pytest.raises(TypeError, match="unknown causal-trace argument.*windw"):
        lab.patching(LAB_PROMPT, trace=dict(subject=LAB_SUBJECT, windw=3))
    with pytest.raises(TypeError, match="no corrupted prompt"):
        lab.patching(LAB_PROMPT, "The Boston Red Sox played in New", trace=dict(subject=LAB_SUBJECT))
    with pytest.raises(ValueError, match="kind must be one of"):
        lab.patching(LAB_PROMPT, trace=dict(subject=LAB_SUBJECT, kind="mlps"))
