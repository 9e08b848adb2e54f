"""SAELens releases resolved offline: sae_lens' registry maps release + sae_id to a repo and path, read
from a local folder (root=) or a Hugging Face hub cache tree built here under tmp_path, never the network.
Each layout is also loaded by sae_lens' own SAE.from_pretrained (hub offline, pointed at the same cache)
and the encodings compared."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mechviz.saes import SAEError, load_sae
from mechviz.saes.releases import _registry, resolve

sae_lens = pytest.importorskip("sae_lens")
import huggingface_hub.constants as hf_constants  # noqa: E402

from .test_sae_formats import make, randomize  # noqa: E402

REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty hub cache; mechviz reads HF_HUB_CACHE, sae_lens' hf_hub_download reads the constants."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return cache


def snapshot(cache, repo_id: str, path: str):
    """The folder ``path`` in a cached snapshot of ``repo_id`` (refs/main -> REV)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REV)
    folder = repo / "snapshots" / REV / path
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def x_for(d_in: int, n: int = 24):
    return torch.randn(n, d_in, generator=torch.Generator().manual_seed(5)) * 2


def test_registry_resolves_release_and_neuronpedia_id():
    r = resolve("gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical")
    assert (r.repo_id, r.path, r.conversion) == ("google/gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_82",
                                                 "gemma_2")
    assert r.neuronpedia_id == "gemma-2-2b/12-gemmascope-res-16k"
    from sae_lens.loading.pretrained_saes_directory import get_repo_id_and_folder_name

    assert (r.repo_id, r.path) == get_repo_id_and_folder_name(r.release, r.sae_id)   # sae_lens' own mapping


def test_missing_files_say_repo_path_folder_and_command(hub, tmp_path):
    with pytest.raises(SAEError) as err:
        load_sae(release="gemma-scope-2b-pt-res-canonical", sae_id="layer_12/width_16k/canonical")
    msg = str(err.value)
    for part in ("'google/gemma-scope-2b-pt-res'", "'layer_12/width_16k/average_l0_82'", "params.npz",
                 str(hub / "models--google--gemma-scope-2b-pt-res" / "snapshots"),
                 'hf download google/gemma-scope-2b-pt-res --include "layer_12/width_16k/average_l0_82/*"',
                 'huggingface-cli download google/gemma-scope-2b-pt-res --include',
                 "never downloads"):
        assert part in msg, (part, msg)
    with pytest.raises(SAEError, match=f"expected under root= at {tmp_path}/blocks.8.hook_resid_pre"):
        load_sae(("gpt2-small-res-jb", "blocks.8.hook_resid_pre"), root=tmp_path)


def test_unknown_release_or_id_suggests_close_matches():
    with pytest.raises(SAEError, match=r"unknown SAELens release 'gemma-scope-2b-pt-res-canonicl'.*close releases: "
                                       r"'gemma-scope-2b-pt-res-canonical'"):
        load_sae(release="gemma-scope-2b-pt-res-canonicl", sae_id="layer_12/width_16k/canonical")
    with pytest.raises(SAEError, match=r"has no SAE 'layer_12/width_16k/canonicl'.*'layer_12/width_16k/canonical'"):
        load_sae(("gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonicl"))
    with pytest.raises(SAEError, match="needs both release= and sae_id="):
        load_sae(release="gpt2-small-res-jb")


def test_unsupported_converter_is_refused_saying_what_to_do(hub):
    rel = next(r for r, v in _registry().items() if v.get("conversion_func") == "llama_scope")
    sae_id = _registry()[rel]["saes"][0]["id"]
    with pytest.raises(SAEError, match=r"'llama_scope' loader, which mechviz does not read.*save_model"):
        load_sae(release=rel, sae_id=sae_id)


def test_sae_lens_format_release_from_hub_cache_and_root(hub, tmp_path):
    release, sae_id = "gpt2-small-res-jb", "blocks.8.hook_resid_pre"
    r = resolve(release, sae_id)
    ref = make("topk")
    ref.cfg.metadata.hook_name = "blocks.8.hook_resid_pre"
    ref.save_model(snapshot(hub, r.repo_id, r.path))
    sae = load_sae(release=release, sae_id=sae_id)
    theirs, their_cfg, _ = sae_lens.SAE.from_pretrained_with_cfg_and_sparsity(release, sae_id)   # offline, same cache
    assert sae.neuronpedia_id == "gpt2-small/8-res-jb" == their_cfg["neuronpedia_id"]
    assert (sae.site, sae.architecture) == ("resid_pre.8", "topk")
    x = x_for(48)
    with torch.no_grad():
        want = theirs.encode(x)
    assert (want != 0).any()
    for got in (sae, load_sae((release, sae_id)),
                load_sae((release, sae_id), root=snapshot(hub, r.repo_id, "")),
                load_sae((release, sae_id), root=snapshot(hub, r.repo_id, r.path))):   # repo layout or the folder
        torch.testing.assert_close(got.encode(x), want, atol=1e-5, rtol=0)


def test_registry_norm_scaling_factor_is_folded_like_sae_lens(hub):
    """Releases whose SAEs need a dataset-wide input scale list it in the registry; both fold it."""
    release = "gpt2-small-mlp-tm"
    entry = _registry()[release]
    s = next(s for s in entry["saes"] if "norm_scaling_factor" in s)
    r = resolve(release, s["id"])
    ref = make("standard", "expected_average_only_in")
    ref.save_model(snapshot(hub, r.repo_id, r.path))
    sae = load_sae(release=release, sae_id=s["id"])
    theirs = sae_lens.SAE.from_pretrained(release, s["id"])
    assert theirs.cfg.normalize_activations == "none"   # sae_lens folded it too
    x = x_for(48)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), theirs.encode(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(sae.forward(x), theirs(x), atol=1e-5, rtol=0)
    assert r.norm_scaling_factor == s["norm_scaling_factor"] != 1.0


def test_gemma_scope_params_npz(hub):
    """Gemma Scope stores params.npz (read with allow_pickle=False); the config comes from the names. The
    4k-wide embedding SAE is the smallest real shape (2304 x 4096) and exercises sae_lens' d_model rescale."""
    release, sae_id = "gemma-scope-2b-pt-res", "embedding/width_4k/average_l0_6"
    r = resolve(release, sae_id)
    g = torch.Generator().manual_seed(0)
    d_in, d_sae = 2304, 4096
    params = {"W_enc": torch.randn(d_in, d_sae, generator=g) / 48, "W_dec": torch.randn(d_sae, d_in, generator=g) / 48,
              "b_enc": torch.randn(d_sae, generator=g) * 0.1, "b_dec": torch.randn(d_in, generator=g) * 0.1,
              "threshold": torch.rand(d_sae, generator=g) * 0.05}
    np.savez(snapshot(hub, r.repo_id, r.path) / "params.npz", **{k: v.numpy() for k, v in params.items()})
    sae = load_sae(release=release, sae_id=sae_id, site="resid_pre.0")
    theirs = sae_lens.SAE.from_pretrained(release, sae_id)
    assert (sae.architecture, sae.kind, sae.d_in, sae.d_sae, sae.model_name) == ("jumprelu", "sae", 2304, 4096,
                                                                               "gemma-2-2b")
    assert sae.hook_name == "hook_embed" and sae.site == "resid_pre.0"
    x = torch.randn(8, d_in, generator=g) * 30
    with torch.no_grad():
        want = theirs.encode(x)
        assert (want != 0).any() and (want == 0).any()
        torch.testing.assert_close(sae.encode(x), want, atol=1e-5, rtol=0)
        torch.testing.assert_close(sae.forward(x), theirs(x), atol=1e-4, rtol=1e-5)


def test_gemma_scope_2_skip_transcoder(hub, monkeypatch):
    """Gemma Scope 2 (gemma_3 converter): params.safetensors, affine_skip_connection stored [d_in, d_out].
    sae_lens asks the hub for the tensor shapes over HTTP; here it reads them from the local file."""
    from safetensors.numpy import save_file
    from safetensors import safe_open
    from sae_lens.loading import pretrained_sae_loaders as loaders

    release, sae_id = "gemma-scope-2-4b-pt-transcoders-all", "layer_0_width_16k_l0_big_affine"
    r = resolve(release, sae_id)
    folder = snapshot(hub, r.repo_id, r.path)
    g = torch.Generator().manual_seed(1)
    raw = {"w_enc": torch.randn(48, 96, generator=g) / 7, "w_dec": torch.randn(96, 48, generator=g) / 7,
           "b_enc": torch.randn(96, generator=g) * 0.3, "b_dec": torch.randn(48, generator=g) * 0.3,
           "threshold": torch.rand(96, generator=g) * 0.5,
           "affine_skip_connection": torch.randn(48, 48, generator=g) / 7}
    save_file({k: v.numpy() for k, v in raw.items()}, str(folder / "params.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": "jump_relu", "model_name": "gemma-v3-4b-pt",
                                                    "affine_connection": True}))

    def local_shapes(repo_id, filename):
        with safe_open(str(snapshot(hub, repo_id, "") / filename), "np") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}

    monkeypatch.setattr(loaders, "get_safetensors_tensor_shapes", local_shapes)
    sae = load_sae(release=release, sae_id=sae_id)
    theirs = sae_lens.SAE.from_pretrained(release, sae_id)
    assert (sae.kind, sae.architecture, sae.site_out, sae.model_name) == ("skip_transcoder", "jumprelu",
                                                                          "mlp_out.0", "google/gemma-3-4b-pt")
    x = x_for(48)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), theirs.encode(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(sae.forward(x), theirs(x), atol=1e-5, rtol=0)


def test_gemma_scope_transcoder_params_npz(hub, monkeypatch):
    """Gemma Scope transcoders (gemma_2_transcoder): params.npz as a jumprelu transcoder. Their config takes
    the widths from the names (2304 x 16k); here both loaders get a config with the file's small widths."""
    from sae_lens.loading import pretrained_sae_loaders as loaders

    original = loaders.get_gemma_2_transcoder_config_from_hf
    monkeypatch.setattr(loaders, "get_gemma_2_transcoder_config_from_hf",
                        lambda *a, **kw: {**original(*a, **kw), "d_in": 48, "d_out": 48, "d_sae": 96})
    release, sae_id = "gemma-scope-2b-pt-transcoders", "layer_0/width_16k/average_l0_76"
    r = resolve(release, sae_id)
    g = torch.Generator().manual_seed(2)
    params = {"W_enc": torch.randn(48, 96, generator=g) / 7, "W_dec": torch.randn(96, 48, generator=g) / 7,
              "b_enc": torch.randn(96, generator=g) * 0.3, "b_dec": torch.randn(48, generator=g) * 0.3,
              "threshold": torch.rand(96, generator=g) * 0.5}
    np.savez(snapshot(hub, r.repo_id, r.path) / "params.npz", **{k: v.numpy() for k, v in params.items()})
    sae = load_sae(release=release, sae_id=sae_id)
    theirs = sae_lens.SAE.from_pretrained(release, sae_id)
    assert (sae.kind, sae.architecture, sae.site, sae.site_out) == ("transcoder", "jumprelu", None, "mlp_out.0")
    assert sae.hook_name == "blocks.0.ln2.hook_normalized"   # no mechviz site: pass site= to attach it
    assert sae.neuronpedia_id == "gemma-2-2b/0-gemmascope-transcoder-16k"
    x = x_for(48)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), theirs.encode(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(sae.forward(x), theirs(x), atol=1e-5, rtol=0)

