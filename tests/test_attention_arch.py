"""The attention view shows the architecture: each layer's sliding window (read from the config) and
the grouped-query key/value heads; the windows are checked against the attention the model computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechviz import Lab
from mechviz.models import wrap
from mechviz.models.describe import attention_windows

from .archs import build

WINDOWED = ["qwen2", "gemma2", "gemma3_text", "mistral", "gpt_oss"]


@pytest.mark.parametrize("arch", WINDOWED + ["llama_like_full"])
def test_windows_match_the_attention_the_model_computes(arch):
    model = build("qwen3" if arch == "llama_like_full" else arch)
    adapter = wrap(model)
    windows = attention_windows(adapter)
    assert len(windows) == adapter.n_layers
    if arch == "llama_like_full":
        assert windows == [0] * adapter.n_layers
    else:
        assert any(windows), f"{arch}: no sliding-window layer found"
    T = 10
    run = adapter.run(torch.arange(1, T + 1), capture=["attn_pattern"])
    for layer, w in enumerate(windows):
        p = run[f"attn_pattern.{layer}"].numpy()           # [H, dst, src]
        for i in range(T):
            if w:
                assert (p[:, i, : max(0, i - w + 1)] == 0).all(), (arch, layer, i)   # outside the window
                assert (p[:, i, max(0, i - w + 1)] > 0).all(), (arch, layer, i)      # its first source
            else:
                assert (p[:, i, 0] > 0).all(), (arch, layer, i)                       # the whole prefix


def test_attention_view_carries_windows_and_kv_groups(tokenizer):
    model = build("gemma2")
    lab = Lab(model, tokenizer, prompt="The cat sat on the mat. The cat sat on the", threads=1)
    view = lab.attention()
    assert view.windows == [3, 0, 3] and view.kv_heads == 2 and view.data["pattern"].shape[1] == 4
    assert "gemma2" in view.model_info or view.model_info.startswith(lab.model.name)


def test_feature_logit_weights_are_linear_even_with_a_final_soft_cap():
    """Gemma 2's final soft-cap is part of the model's logits (the lens applies it) but not of a feature's
    logit weights, which are its decoder direction times W_U, as sae_vis / Neuronpedia show them."""
    from mechviz.analysis.features import feature_logit_effects
    from mechviz.saes import SAE

    model = build("gemma2")
    adapter = wrap(model)
    assert adapter.softcap
    torch.manual_seed(1)
    d = adapter.d_model
    W_dec = torch.randn(8, d) * 20   # large enough that a capped value would differ visibly
    sae = SAE(W_enc=torch.randn(d, 8), b_enc=torch.zeros(8), W_dec=W_dec, b_dec=torch.zeros(d), site="resid_post.0")
    eff = feature_logit_effects(sae, adapter, 3, k=5)
    ref = (W_dec[3] @ model.get_output_embeddings().weight.T.detach()).numpy()
    np.testing.assert_allclose(eff.values, ref, rtol=1e-5, atol=1e-4)
    assert np.abs(ref).max() > 2 * adapter.softcap            # the cap would have clipped these
    lens_last = adapter.logits_of(torch.randn(4, d) * 50)
    assert float(lens_last.abs().max()) <= adapter.softcap + 1e-4   # while the model's logits are capped
