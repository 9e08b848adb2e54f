"""circuit-tracer's transcoder layouts (mechviz.saes.circuit_tracer): files written as circuit-tracer 0.5 and its
source repos lay them out, tiny random weights, encode/forward checked against circuit-tracer's formulas
(re-implemented here from the raw arrays, in float64) and, where its venv is given
(MECHVIZ_CIRCUIT_TRACER_PYTHON=/path/to/python with circuit-tracer installed), against its own loader."""

import json
import os
import subprocess
import textwrap

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from mechviz.saes import SAEError, load_circuit_tracer_transcoders, mlp_norm_weights

D, F, L = 6, 10, 3
rng = np.random.default_rng(0)


def rand(*shape):
    return torch.tensor(rng.normal(size=shape), dtype=torch.float32)


def write_config(folder, **cfg):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))


def ct_plt(folder, *, skip=False, jump=False, legacy_dec=False, layers=L):
    """circuit-tracer's own layer_L.safetensors (W_enc [F, D], W_dec [F, D]; < 0.2: W_dec [D, F])."""
    raw = []
    for layer in range(layers):
        w = {"W_enc": rand(F, D), "W_dec": rand(F, D), "b_enc": rand(F) - 0.3, "b_dec": rand(D)}
        if jump:
            w["activation_function.threshold"] = rand(F).abs() * 0.5
        if skip:
            w["W_skip"] = rand(D, D)
        raw.append(dict(w))
        if legacy_dec:
            w["W_dec"] = w["W_dec"].T.contiguous()
        save_file(w, str(folder / f"layer_{layer}.safetensors"))
    return raw


def ct_reference(w, x):
    """circuit-tracer's SingleLayerTranscoder: F.linear(x, W_enc, b_enc), JumpReLU h*(h>thr) or ReLU,
    acts @ W_dec + b_dec (+ x @ W_skip.T)."""
    x, g = x.double(), {k: v.double() for k, v in w.items()}
    h = x @ g["W_enc"].T + g["b_enc"]
    thr = g.get("activation_function.threshold")
    f = h * (h > thr) if thr is not None else torch.relu(h)
    y = f @ g["W_dec"] + g["b_dec"]
    if "W_skip" in g:
        y = y + x @ g["W_skip"].T
    return f, y


@pytest.mark.parametrize("skip,jump,legacy", [(False, False, False), (True, False, False), (True, True, False),
                                              (False, False, True)])
def test_circuit_tracer_layer_files(tmp_path, skip, jump, legacy):
    write_config(tmp_path, model_name="meta-llama/Llama-3.2-1B", model_kind="transcoder_set",
                 feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out", scan="x")
    raw = ct_plt(tmp_path, skip=skip, jump=jump, legacy_dec=legacy)
    tcs = load_circuit_tracer_transcoders(tmp_path)
    assert len(tcs) == L
    x = rand(5, D)
    for layer, (tc, w) in enumerate(zip(tcs, raw)):
        assert (tc.site, tc.site_out) == (f"mlp_in.{layer}", f"mlp_out.{layer}")
        assert tc.kind == ("skip_transcoder" if skip else "transcoder")
        assert tc.architecture == ("jumprelu" if jump else "relu")
        f, y = ct_reference(w, x)
        assert (tc.encode(x) > 0).sum() > 0
        torch.testing.assert_close(tc.encode(x).double(), f, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(tc.forward(x).double(), y, atol=1e-6, rtol=1e-6)


def test_hub_cache_and_transcoders_list(tmp_path, monkeypatch):
    """A repo id resolves in the hub cache (refs/main -> snapshot); a `transcoders:` list of hf:// URIs
    (another repo's files) resolves there too; the legacy {id, layer, filepath} list as well."""
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    other = cache / "models--org--weights"
    (other / "refs").mkdir(parents=True)
    (other / "refs" / "main").write_text("abc")
    snap = other / "snapshots" / "abc" / "sub"
    snap.mkdir(parents=True)
    raw = ct_plt(snap, layers=2)
    repo = cache / "models--org--set" / "snapshots" / "r1"
    uris = [f"hf://org/weights/sub/layer_{i}.safetensors" for i in range(2)]
    write_config(repo, model_kind="transcoder_set", feature_input_hook="hook_resid_mid",
                 feature_output_hook="hook_mlp_out", transcoders=uris)
    tcs = load_circuit_tracer_transcoders("org/set")
    assert [t.site for t in tcs] == ["resid_mid.0", "resid_mid.1"]
    x = rand(4, D)
    torch.testing.assert_close(tcs[1].forward(x).double(), ct_reference(raw[1], x)[1], atol=1e-6, rtol=1e-6)
    legacy = tmp_path / "legacy.yaml"
    legacy.write_text(yaml.safe_dump({"model_name": "m", "feature_input_hook": "mlp.hook_in",
                                      "feature_output_hook": "mlp.hook_out", "transcoders": [
                                          {"id": "b", "layer": 1, "filepath": uris[1]},
                                          {"id": "a", "layer": 0, "filepath": str(snap / "layer_0.safetensors")}]}))
    tcs = load_circuit_tracer_transcoders(legacy)
    torch.testing.assert_close(tcs[0].encode(x).double(), ct_reference(raw[0], x)[0], atol=1e-6, rtol=1e-6)
    with pytest.raises(SAEError, match="not available offline"):   # another revision: never swapped for r1
        load_circuit_tracer_transcoders("org/set@other")
    assert len(load_circuit_tracer_transcoders("org/set@r1")) == 2
    with pytest.raises(SAEError, match="not available offline.*hf download org/missing"):
        load_circuit_tracer_transcoders("org/missing")


def test_gemma_scope_npz_folds_the_norm(tmp_path):
    """Gemma Scope params.npz (W_enc [D, F]) read at ln2.hook_normalized: with mlp_norm the SAE reads mlp_in
    = n * w + b and gives circuit-tracer's features of n."""
    raw = []
    for layer in range(2):
        w = {"W_enc": rng.normal(size=(D, F)), "W_dec": rng.normal(size=(F, D)), "b_enc": rng.normal(size=F) - .3,
             "b_dec": rng.normal(size=D), "threshold": np.abs(rng.normal(size=F)) * 0.3}
        raw.append(w)
        folder = tmp_path / "google" / "gemma-scope-2b-pt-transcoders" / f"layer_{layer}" / "width_16k" / "average_l0_7"
        folder.mkdir(parents=True)
        np.savez(folder / "params.npz", **{k: v.astype(np.float32) for k, v in w.items()})
    write_config(tmp_path / "set", model_name="google/gemma-2-2b", model_kind="transcoder_set",
                 feature_input_hook="ln2.hook_normalized", feature_output_hook="hook_mlp_out",
                 transcoders=[f"hf://google/gemma-scope-2b-pt-transcoders/layer_{i}/width_16k/average_l0_7/params.npz"
                              for i in range(2)])
    with pytest.raises(SAEError, match="mlp_norm"):
        load_circuit_tracer_transcoders(tmp_path / "set", root=tmp_path)
    norms = [(1 + rand(D), rand(D) * 0.1) for _ in range(2)]
    tcs = load_circuit_tracer_transcoders(tmp_path / "set", root=tmp_path, mlp_norm=norms)
    n = rand(5, D)
    for tc, w, (nw, nb) in zip(tcs, raw, norms):
        assert tc.architecture == "jumprelu" and tc.kind == "transcoder" and tc.site.startswith("mlp_in.")
        g = {k: torch.tensor(v, dtype=torch.float32).double() for k, v in w.items()}
        h = n.double() @ g["W_enc"] + g["b_enc"]
        f = h * (h > g["threshold"])
        mlp_in = n * nw + nb
        torch.testing.assert_close(tc.encode(mlp_in).double(), f, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(tc.forward(mlp_in).double(), f @ g["W_dec"] + g["b_dec"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["gemma2", "qwen3", "gpt2"])
def test_mlp_norm_weights_give_the_mlp_input(arch):
    """mlp_norm_weights on a real (tiny, random) HF model: the normalised pre-MLP residual (TransformerLens'
    ln2.hook_normalized, computed here from the norm's own input and eps) times weight plus bias is exactly
    the input the MLP module receives."""
    if arch == "gpt2":
        import transformers as tf
        torch.manual_seed(0)
        model = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=16)).eval()
        for p in model.parameters():
            p.data.normal_(0, 0.5)
        blocks, norm_name, mlp_name = model.transformer.h, "ln_2", "mlp"
    else:
        from .archs import build
        model = build(arch)
        blocks = model.model.layers
        norm_name = "pre_feedforward_layernorm" if arch == "gemma2" else "post_attention_layernorm"
        mlp_name = "mlp"
    seen = {}
    hooks = [getattr(b, n).register_forward_pre_hook(lambda m, a, i=i, n=n: seen.__setitem__((n, i), a[0]))
             for i, b in enumerate(blocks) for n in (norm_name, mlp_name)]
    with torch.no_grad():
        model(torch.arange(7)[None] % 50)
    for h in hooks:
        h.remove()
    norms = mlp_norm_weights(model)
    if arch == "gpt2":   # a mechviz adapter is unwrapped
        import mechviz
        norms_adapter = mlp_norm_weights(mechviz.wrap(model))
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(norms, norms_adapter))
    assert len(norms) == len(blocks)
    for i, (w, b) in enumerate(norms):
        x, norm = seen[(norm_name, i)][0].double(), getattr(blocks[i], norm_name)
        eps = getattr(norm, "eps", getattr(norm, "variance_epsilon", None))
        if arch == "gpt2":
            n = (x - x.mean(-1, keepdim=True)) / (x.var(-1, unbiased=False, keepdim=True) + eps).sqrt()
        else:
            n = x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        mlp_in = n * w.double() + (0 if b is None else b.double())
        assert (b is None) == (arch != "gpt2")
        torch.testing.assert_close(mlp_in, seen[(mlp_name, i)][0].double(), atol=1e-4, rtol=1e-4)


def test_gemma_scope_2_affine_skip(tmp_path):
    w = {"w_enc": rand(D, F), "w_dec": rand(F, D), "b_enc": rand(F) - .3, "b_dec": rand(D),
         "threshold": rand(F).abs() * .3, "affine_skip_connection": rand(D, D)}
    save_file(w, str(tmp_path / "params.safetensors"))
    write_config(tmp_path, model_kind="transcoder_set", feature_input_hook="mlp.hook_in",
                 feature_output_hook="hook_mlp_out", transcoders=["params.safetensors"])
    (tc,) = load_circuit_tracer_transcoders(tmp_path)
    x = rand(3, D).double()
    g = {k: v.double() for k, v in w.items()}
    h = x @ g["w_enc"] + g["b_enc"]
    f = h * (h > g["threshold"])
    assert tc.kind == "skip_transcoder"
    torch.testing.assert_close(tc.forward(x).double(), f @ g["w_dec"] + g["b_dec"] + x @ g["affine_skip_connection"],
                               atol=1e-5, rtol=1e-5)


def test_clear_errors(tmp_path):
    write_config(tmp_path / "clt", model_kind="cross_layer_transcoder", feature_input_hook="hook_resid_mid",
                 feature_output_hook="hook_mlp_out")
    with pytest.raises(SAEError, match="cross-layer transcoder"):
        load_circuit_tracer_transcoders(tmp_path / "clt")
    good = {"model_kind": "transcoder_set", "feature_input_hook": "mlp.hook_in", "feature_output_hook": "mlp.hook_out"}
    write_config(tmp_path / "hook", **{**good, "feature_input_hook": "hook_resid_pre"})
    with pytest.raises(SAEError, match="hook_resid_pre"):
        load_circuit_tracer_transcoders(tmp_path / "hook")
    write_config(tmp_path / "gap", **good)
    ct_plt(tmp_path / "gap", layers=3)
    (tmp_path / "gap" / "layer_1.safetensors").unlink()
    with pytest.raises(SAEError, match=r"layers \[0, 2\]"):
        load_circuit_tracer_transcoders(tmp_path / "gap")
    write_config(tmp_path / "shape", **good)
    save_file({"W_enc": rand(F, D), "W_dec": rand(F, D + 1), "b_enc": rand(F), "b_dec": rand(D)},
              str(tmp_path / "shape" / "layer_0.safetensors"))
    with pytest.raises(SAEError, match=r"W_dec has shape \(10, 7\), expected \(10, 6\)"):
        load_circuit_tracer_transcoders(tmp_path / "shape")
    write_config(tmp_path / "neg", **good)
    save_file({"W_enc": rand(F, D), "W_dec": rand(F, D), "b_enc": rand(F), "b_dec": rand(D),
               "activation_function.threshold": -torch.ones(F)}, str(tmp_path / "neg" / "layer_0.safetensors"))
    with pytest.raises(SAEError, match="negative JumpReLU"):
        load_circuit_tracer_transcoders(tmp_path / "neg")
    write_config(tmp_path / "miss", **good, transcoders=["nowhere.safetensors"])
    with pytest.raises(SAEError, match="nowhere.safetensors.*not found"):
        load_circuit_tracer_transcoders(tmp_path / "miss")
    with pytest.raises(SAEError, match="no config.yaml"):
        load_circuit_tracer_transcoders(tmp_path / "miss" / "..")


CT_PYTHON = os.environ.get("MECHVIZ_CIRCUIT_TRACER_PYTHON")


@pytest.mark.skipif(not CT_PYTHON, reason="set MECHVIZ_CIRCUIT_TRACER_PYTHON to a python with circuit-tracer")
@pytest.mark.parametrize("layout", ["plt", "gemma-scope", "gemma-scope-2"])
def test_matches_circuit_tracers_own_loader(tmp_path, layout):
    """circuit-tracer's load_transcoders (its venv, a subprocess) on the same files and inputs."""
    hook_in, repo, norms = "mlp.hook_in", "", None
    if layout == "plt":
        ct_plt(tmp_path, skip=True, jump=True)
        files = [f"layer_{i}.safetensors" for i in range(L)]
    elif layout == "gemma-scope":
        hook_in, repo, norms = "ln2.hook_normalized", "mntss/gemma-scope-transcoders", [1 + rand(D) for _ in range(L)]
        files = [f"l{i}.npz" for i in range(L)]
        for f in files:
            np.savez(tmp_path / f, W_enc=rand(D, F).numpy(), W_dec=rand(F, D).numpy(), b_enc=rand(F).numpy() - .3,
                     b_dec=rand(D).numpy(), threshold=rand(F).abs().numpy() * .3)
    else:
        repo = "mwhanna/gemma-scope-2-270m-pt"
        files = [f"l{i}.safetensors" for i in range(L)]
        for f in files:
            save_file({"w_enc": rand(D, F), "w_dec": rand(F, D), "b_enc": rand(F) - .3, "b_dec": rand(D),
                       "threshold": rand(F).abs() * .3, "affine_skip_connection": rand(D, D)}, str(tmp_path / f))
    write_config(tmp_path, model_name="m", model_kind="transcoder_set", feature_input_hook=hook_in,
                 feature_output_hook="hook_mlp_out", transcoders=files)
    x = rand(5, D)
    np.save(tmp_path / "x.npy", x.numpy())
    script = textwrap.dedent(f"""
        import json, numpy as np, torch, yaml
        from circuit_tracer.utils.hf_utils import load_transcoders
        cfg = yaml.safe_load(open({str(tmp_path / 'config.yaml')!r}))
        cfg.update(repo_id={repo!r}, scan="s", transcoders=[{str(tmp_path)!r} + "/" + f for f in cfg["transcoders"]])
        ts = load_transcoders(cfg, device=torch.device("cpu"), dtype=torch.float32, lazy_decoder=False)
        x = torch.tensor(np.load({str(tmp_path / 'x.npy')!r}))
        print(json.dumps([[t.encode(x).tolist(), t.forward(x).tolist()] for t in ts]))
    """)
    out = subprocess.run([CT_PYTHON, "-c", script], capture_output=True, text=True, check=True).stdout
    theirs = json.loads(out.strip().splitlines()[-1])
    tcs = load_circuit_tracer_transcoders(tmp_path, mlp_norm=norms)
    assert tcs[0].architecture == "jumprelu" and len(tcs) == len(theirs) == L
    for i, (tc, (f, y)) in enumerate(zip(tcs, theirs)):
        x_in = x if norms is None else x * norms[i]   # their input is ln2.hook_normalized, ours mlp_in
        assert sum(map(sum, f)) > 0
        torch.testing.assert_close(tc.encode(x_in), torch.tensor(f), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(tc.forward(x_in), torch.tensor(y), atol=1e-5, rtol=1e-5)
