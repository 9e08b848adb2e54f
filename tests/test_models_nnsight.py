"""The nnsight backend against the HF adapter on the same weights: every site, edits, every view's numbers, the
reductions evaluated inside the trace against the full computation, nnsight's remote path (serialised and run
in-process by nnsight's own local simulation: no network here), the remote error messages, and sharded models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

nnsight = pytest.importorskip("nnsight")

from mechviz import Lab  # noqa: E402
from mechviz.analysis import logit_lens as lens_fns  # noqa: E402
from mechviz.analysis.dla import direct_logit_attribution, needs as dla_needs  # noqa: E402
from mechviz.analysis.features import feature_activations, top_features  # noqa: E402
from mechviz.analysis.patching import activation_patching  # noqa: E402
from mechviz.models import HFAdapter, NNsightAdapter, UnsupportedModelError, wrap  # noqa: E402
from mechviz.models.reductions import LensTopK, SAETop, Uint8Pattern, patch_cells, reduce  # noqa: E402
from mechviz.models.remote import RemoteRunError, explain  # noqa: E402

from . import archs  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # nnsight deprecates the LanguageModel name

IDS = [0, 17, 5, 230, 41, 99, 8, 150, 63, 2]
CORRUPTED = [0, 17, 5, 12, 41, 99, 8, 150, 63, 2]


@pytest.fixture(scope="module")
def bundled():
    from mechviz.zoo import load_default_model

    return load_default_model()


def _pair(arch):
    model = archs.build(arch)
    return HFAdapter(model), NNsightAdapter(nnsight.NNsight(model))


@pytest.mark.parametrize("arch", ["qwen3", "gemma2", "gptj", "phi3", "olmo2", "mixtral"])
def test_every_site_and_edit_equals_the_hf_adapter(arch):
    hf, nn = _pair(arch)
    sites = hf.sites  # every one, the router of a mixture-of-experts model (mixtral) included
    a, b = hf.run(IDS, capture=sites), nn.run(IDS, capture=sites)
    assert sorted(a.cache) == sorted(b.cache) and len(a.cache) == len(sites) * hf.n_layers
    torch.testing.assert_close(b.logits, a.logits, atol=1e-5, rtol=0)
    for key in a.cache:
        torch.testing.assert_close(b.cache[key], a.cache[key], atol=1e-5, rtol=0, msg=key)
    # edits (steering, patching through run) at a per-head site and a residual one, read downstream
    last = f"resid_pre.{hf.n_layers - 1}"
    edits = {"z.0": lambda z: z + 0.5, "resid_post.0": lambda x: 2 * x}
    a, b = hf.run(IDS, capture=[last, "q.0"], edits=edits), nn.run(IDS, capture=[last, "q.0"], edits=edits)
    assert (a.logits - hf.run(IDS).logits).abs().max() > 1e-2  # the edits change the output
    for key in (last, "q.0"):
        torch.testing.assert_close(b.cache[key], a.cache[key], atol=1e-5, rtol=0)
    torch.testing.assert_close(b.logits, a.logits, atol=1e-5, rtol=0)
    batch = torch.tensor([IDS, CORRUPTED])
    torch.testing.assert_close(nn.capture_batch(batch, "k.1"), hf.capture_batch(batch, "k.1"), atol=1e-5, rtol=0)


def test_a_pass_that_is_no_longer_wanted_stops_inside_the_trace():
    from mechviz.models import Aborted

    hf, nn = _pair("qwen3")
    polls = []
    with pytest.raises(Aborted):
        nn.run(IDS, capture=["resid_post.2"], abort=lambda: polls.append(1) or len(polls) > 1)
    assert len(polls) == 2  # polled before each block: stopped before block 1, not after the pass
    torch.testing.assert_close(nn.run(IDS).logits, hf.run(IDS).logits, atol=1e-5, rtol=0)  # usable after


def test_wrap_recognises_nnsight_models_first(bundled):
    model, tok = bundled
    lm = nnsight.LanguageModel(model, tokenizer=tok)
    adapter = wrap(lm)
    assert isinstance(adapter, NNsightAdapter) and adapter.tokenizer is tok and adapter.n_layers == 4
    assert isinstance(wrap(nnsight.NNsight(model)), NNsightAdapter)
    with pytest.raises(UnsupportedModelError, match="remote=True runs nnsight models"):
        wrap(model, tok, remote=True)
    with pytest.raises(UnsupportedModelError, match="cannot run remotely"):
        wrap(nnsight.NNsight(model), remote=True)


@pytest.mark.parametrize("arch", ["gemma2", "gptj", "qwen3"])
def test_reductions_equal_the_full_computation(arch):
    hf, nn = _pair(arch)
    L = hf.n_layers
    run = hf.run(IDS, capture=lens_fns.needs(L) + [f"attn_pattern.{i}" for i in range(L)])
    ref = lens_fns.logit_lens(hf, run, k=5, target="next", decode=False)
    target = torch.tensor(IDS[1:] + [-1])
    out = reduce(nn, IDS, {"lens": LensTopK(5, target), "att": Uint8Pattern([0, L - 1])})
    lens = out["lens"]
    np.testing.assert_array_equal(lens["top_ids"].numpy(), ref.top_ids)
    np.testing.assert_allclose(lens["top_probs"].numpy(), ref.top_probs, atol=1e-5)
    np.testing.assert_allclose(lens["entropy"].numpy(), ref.entropy, atol=1e-5)
    np.testing.assert_allclose(lens["target_prob"].numpy(), ref.target_prob, atol=1e-5)
    np.testing.assert_array_equal(lens["target_rank"].numpy(), ref.target_rank)
    pattern = run.stack("attn_pattern")[[0, L - 1]]
    expect = torch.round(pattern * 255).to(torch.uint8)
    assert out["att"]["pattern"].dtype == torch.uint8
    assert (out["att"]["pattern"].int() - expect.int()).abs().max() <= 1  # float rounding at exact halves only
    R, T = L + 1, len(IDS)
    # only the reduced tensors were saved: int64 ids, float32 probabilities, entropy, target prob and int64 rank
    assert nn.bytes_received == {"lens": R * T * 5 * (8 + 4) + R * T * (4 + 4 + 8), "att": 2 * 4 * T * T}
    # a patching grid as one batched trace saving only each cell's metric, equal to the patching engine's grid
    metric = lambda logits: logits[:, -1, 3] - logits[:, -1, 4]  # noqa: E731
    for site in ("resid_pre", "attn_out", "mlp_out"):
        grid = activation_patching(hf, IDS, CORRUPTED, site, metric=metric)
        cells = patch_cells(nn, CORRUPTED, IDS, site, metric=metric, tag=site, rows=7)  # several traces
        assert np.abs(grid.values).max() > 1e-2
        np.testing.assert_allclose(cells.numpy(), grid.values, atol=1e-5)
        assert nn.bytes_received[site] == 4 * L * T


def test_lab_views_equal_the_hf_adapter(bundled):
    from mechviz.saes import load_sae
    from mechviz.zoo import SAE_DIR

    model, tok = bundled
    prompt = "The cat sat on the mat because it was"
    sae = load_sae(SAE_DIR)
    a = Lab(model, tok, prompt=prompt, threads=1, sae=sae)
    b = Lab(nnsight.LanguageModel(model, tokenizer=tok), prompt=prompt, threads=1, sae=sae)
    assert isinstance(b.model, NNsightAdapter) and b.model.reduce_views
    assert "nnsight raw weights" in b.model_info and "HF raw weights" in a.model_info
    # logit lens: reduced to its top-k inside the trace, equal to the full lens of the HF adapter
    la, lb = a.logit_lens(k=5), b.logit_lens(k=5)
    np.testing.assert_array_equal(lb.result.top_ids, la.result.top_ids)
    np.testing.assert_array_equal(lb.result.top_strs, la.result.top_strs)
    for name in ("top_probs", "entropy", "target_prob"):
        np.testing.assert_allclose(getattr(lb.result, name), getattr(la.result, name), atol=1e-5)
    np.testing.assert_array_equal(lb.result.target_rank, la.result.target_rank)
    assert la.bytes_received == -1 and lb.bytes_received == b.model.bytes_received["logit_lens"] > 0
    assert "received from the model" in lb.note
    # attention: uint8 inside the trace; the browser gets the same bytes as from the HF adapter's float patterns
    va, vb = a.attention(), b.attention()
    np.testing.assert_allclose(vb.data["pattern"], va.data["pattern"], atol=0.5 / 255 + 1e-6)
    assert vb.get_state("detail")["detail"]["data"] == va.get_state("detail")["detail"]["data"]
    assert vb.bytes_received == b.model.bytes_received["attention"] == 4 * 4 * len(vb.tokens) ** 2
    # steering: the reduced views apply the Lab's edits inside their trace
    before = lb.result.top_probs.copy()
    for lab in (a, b):
        lab.steer(int(a.features().result.features[0]), 30.0)
    assert np.abs(lb.result.top_probs - before).max() > 1e-3
    np.testing.assert_allclose(lb.result.top_probs, la.result.top_probs, atol=1e-5)
    np.testing.assert_allclose(vb.data["pattern"], va.data["pattern"], atol=0.5 / 255 + 1e-6)
    for lab in (a, b):
        lab.steer(None)
    # SAE features (the Lab's shared pass through nnsight)
    fa, fb = a.features(), b.features()
    np.testing.assert_array_equal(fb.result.features, fa.result.features)
    np.testing.assert_allclose(fb.result.acts, fa.result.acts, atol=1e-5)
    # DLA from a run through nnsight
    ra, rb = a.run(capture=dla_needs(4) + [sae.site]), b.run(capture=dla_needs(4))
    da, db = direct_logit_attribution(a.model, ra, " the"), direct_logit_attribution(b.model, rb, " the")
    np.testing.assert_allclose(db.components, da.components, atol=1e-5)
    np.testing.assert_allclose(db.heads, da.heads, atol=1e-5)
    # SAE top features reduced inside the trace equal the full encoding's
    acts = feature_activations(sae, ra)
    top = reduce(b.model, prompt, {"sae": SAETop(sae, 8)})["sae"]
    np.testing.assert_array_equal(top["ids"].numpy(), top_features(acts, 8))
    np.testing.assert_allclose(top["acts"].numpy(), acts[:, top_features(acts, 8)], atol=1e-5)
    # a patching grid on the nnsight adapter (the engine on the same modules) equals the HF adapter's
    clean, corrupt = "The cat sat on the mat and the dog", "The cat sat on the rug and the dog"
    ga = activation_patching(a.model, clean, corrupt, "resid_pre", answers=(" the", " a"))
    gb = activation_patching(b.model, clean, corrupt, "resid_pre", answers=(" the", " a"))
    np.testing.assert_allclose(gb.values, ga.values, atol=1e-5)


def test_remote_path_runs_through_nnsight_serialisation(bundled, monkeypatch):
    """nnsight's remote="local": the trace is serialised as for NDIF, deserialised with local modules hidden (so
    mechviz must travel by value, as it would to a server without it), and run in-process."""
    from nnsight.schema.request import RequestModel

    from mechviz.zoo import load_default_model

    payloads, serialize = [], RequestModel.serialize.__func__
    monkeypatch.setattr(RequestModel, "serialize", classmethod(
        lambda cls, tracer, compress=False: payloads.append(serialize(cls, tracer, compress)) or payloads[-1]))
    model, tok = load_default_model()  # a fresh model: no module tagged by an earlier serialisation
    lm = nnsight.LanguageModel(model, tokenizer=tok)
    sim, local = NNsightAdapter(lm, remote="local"), NNsightAdapter(lm)
    prompt, other = "The cat sat on the mat because it", "The dog sat on the mat because it"
    edits = {"resid_pre.1": lambda x: 2 * x}
    a, b = sim.run(prompt, capture=["resid_post.1", "attn_pattern.2"], edits=edits), \
        local.run(prompt, capture=["resid_post.1", "attn_pattern.2"], edits=edits)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(a["attn_pattern.2"], b["attn_pattern.2"], atol=1e-5, rtol=0)
    ra, rb = reduce(sim, prompt, {"lens": LensTopK(5)}), reduce(local, prompt, {"lens": LensTopK(5)})
    torch.testing.assert_close(ra["lens"]["top_probs"], rb["lens"]["top_probs"], atol=1e-5, rtol=0)
    torch.testing.assert_close(patch_cells(sim, other, prompt, "resid_pre"), patch_cells(local, other, prompt,
                                                                                        "resid_pre"))
    assert sim.bytes_received == local.bytes_received
    # every request referenced the model's modules: none shipped its weights
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert len(payloads) == 3 and max(map(len, payloads)) < weights / 4
    # activation_patching on a remote model: cells evaluated inside traces, equal to the patching engine's grid
    hf = HFAdapter(model, tok)
    clean, corrupt = "The cat sat on the mat and the dog", "The cat sat on the rug and the dog"
    for site, by in (("resid_pre", "position"), ("attn_out.2", "position"), ("z", "head"), ("v.1", "head_position")):
        want = activation_patching(hf, clean, corrupt, site, by=by, answers=(" the", " a"))
        got = activation_patching(sim, clean, corrupt, site, by=by, answers=(" the", " a"))
        assert np.abs(want.values).max() > 1e-2 and got.values.shape == want.values.shape
        np.testing.assert_allclose(got.values, want.values, atol=1e-5)
    seen = []
    activation_patching(sim, clean, corrupt, "resid_pre", answers=(" the", " a"),
                        on_progress=lambda grid, done, total: seen.append((done, total)))
    T = len(sim.to_tokens(clean))
    assert seen == [(T * (i + 1), 4 * T) for i in range(4)]
    stopped = activation_patching(sim, clean, corrupt, "resid_pre", answers=(" the", " a"), cancel=lambda: True)
    assert not stopped.complete and np.isnan(stopped.values).all()
    # a Lab over the simulated remote model: its views come through the same serialised traces
    a, b = Lab(wrap(lm, remote="local"), prompt=prompt, threads=1), Lab(model, tok, prompt=prompt, threads=1)
    la, lb = a.logit_lens(), b.logit_lens()
    np.testing.assert_array_equal(la.result.top_ids, lb.result.top_ids)
    np.testing.assert_allclose(la.result.top_probs, lb.result.top_probs, atol=1e-5)
    np.testing.assert_allclose(a.attention().data["pattern"], b.attention().data["pattern"], atol=0.5 / 255 + 1e-6)


def test_remote_errors_say_what_to_do(bundled, monkeypatch):
    from nnsight.intervention.backends.remote import RemoteError
    from nnsight.schema.config import CONFIG

    model, tok = bundled
    adapter = NNsightAdapter(nnsight.LanguageModel(model, tokenizer=tok), remote=True)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    with pytest.raises(RemoteRunError, match="no NDIF API key") as info:
        adapter.run("Hello there")
    assert info.value.kind == "no_key"
    # a real failure of nnsight's remote path here (no network): the model key's Hub lookup / the host
    monkeypatch.setattr(CONFIG.API, "APIKEY", "not-a-key")
    monkeypatch.setattr(CONFIG.API, "HOST", "http://127.0.0.1:9")
    with pytest.raises(RemoteRunError, match="could not reach NDIF") as info:
        adapter.run("Hello there")
    assert info.value.kind == "unreachable" and info.value.__cause__ is not None
    # the server's answers, as nnsight raises them (RemoteError with the server's description)
    cases = {
        "Failed to send request: Invalid API key": "bad_key",
        "Model openai-community/gpt2 is not deployed": "not_deployed",
        "Failed to send request: Client nnsight version 0.8.1 is incompatible with server version 0.9.0":
            "version_mismatch",
        "Failed to send request: [Errno 111] Connection refused": "unreachable",
        "CUDA out of memory": "server",
    }
    for text, kind in cases.items():
        mapped = explain(RemoteError(text), adapter)
        assert mapped.kind == kind and text in str(mapped)
    assert "nnsight.compare()" in str(explain(RemoteError(next(iter(k for k, v in cases.items()
                                                                  if v == "version_mismatch"))), adapter))
    assert explain(ValueError("local bug"), adapter) is None


def test_meta_models_run_only_remotely(bundled):
    from mechviz.zoo import MODEL_DIR

    lm = nnsight.LanguageModel(str(MODEL_DIR), tokenizer=bundled[1])  # as LanguageModel(repo_id): weights on meta
    assert next(lm._module.parameters()).device.type == "meta" and lm.attn_implementation == "sdpa"
    with pytest.raises(UnsupportedModelError, match="meta device"):
        NNsightAdapter(lm)
    adapter = NNsightAdapter(lm, remote=True)
    from mechviz.models.describe import describe

    assert str(describe(adapter)).endswith("· nnsight raw weights · float32 · NDIF")
    # the adapter asks for eager attention (the only one with weights), and nnsight sends that with every request
    assert lm._remoteable_get_env()["attn_implementation"] == "eager"
    # what needs the weights here says so (the weights are on the server)
    with pytest.raises(UnsupportedModelError, match="unembed needs .* weights here"):
        adapter.unembed(torch.zeros(1, adapter.d_model))
    with pytest.raises(UnsupportedModelError, match="patch_base needs"):
        adapter.patch_base(torch.tensor([1, 2]))
    # the forward order is found on meta tensors, so a remote trace reads modules in the order they run
    plan, _ = adapter.plan(adapter_sites(adapter), {})
    order = [str(site) for _, _, taps in plan for site, _ in taps]
    assert order.index("resid_pre.0") < order.index("q.0") < order.index("attn_out.0") < order.index("mlp_out.0") \
        < order.index("resid_post.0") < order.index("resid_pre.1")


def adapter_sites(adapter):
    from mechviz.models import parse_sites

    return parse_sites(["resid_pre", "q", "attn_out", "mlp_out", "resid_post"], adapter.n_layers)


def test_sharded_models_hook_on_each_blocks_device(bundled):
    """A model dispatched by accelerate with an explicit per-module device map (every part on the CPU here, with
    accelerate's device-alignment hooks forced on, as on several GPUs): HF hooks and nnsight reads both work."""
    accelerate = pytest.importorskip("accelerate")
    from mechviz.zoo import load_default_model

    ref_model, tok = bundled
    model, _ = load_default_model()
    names = ["transformer.wte", "transformer.wpe", "transformer.drop", "transformer.ln_f", "lm_head"] + \
        [f"transformer.h.{i}" for i in range(4)]
    model = accelerate.dispatch_model(model, device_map={n: "cpu" for n in names}, main_device="cpu",
                                      force_hooks=True)
    assert hasattr(model.transformer.h[2], "_hf_hook")
    ref, hf = HFAdapter(ref_model, tok), HFAdapter(model, tok)
    nn = NNsightAdapter(nnsight.LanguageModel(model, tokenizer=tok))
    prompt, sites = "The cat sat on the mat", ["resid_post.2", "attn_pattern.1", "z.3"]
    a = ref.run(prompt, capture=sites)
    for other in (hf, nn):
        b = other.run(prompt, capture=sites)
        for key in sites:
            torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=0)
    lens = reduce(nn, prompt, {"lens": LensTopK(3)})["lens"]
    full = lens_fns.logit_lens(ref, ref.run(prompt, capture=lens_fns.needs(4)), k=3)
    np.testing.assert_array_equal(lens["top_ids"].numpy(), full.top_ids)
