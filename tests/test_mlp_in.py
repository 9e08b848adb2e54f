"""The read-only ``mlp_in`` site (the MLP's input: the pre-MLP norm's output, affine weights included), the
activation a per-layer transcoder reads: equal to the norm module's own output on sequential, parallel and
norm-free-MLP architectures; refused with a message where it cannot be read or is asked to be patched."""

from __future__ import annotations

import pytest
import torch

from mechviz.models import HFAdapter
from mechviz.models.sites import SiteError, site_width

from .conftest import build_hf


@pytest.mark.parametrize("arch", ["gpt2", "llama_gqa", "neox"])
def test_mlp_in_is_what_the_mlp_reads(arch):
    try:
        model = build_hf(arch)
    except (KeyError, ValueError):
        pytest.skip(f"no {arch} in the test zoo")
    adapter = HFAdapter(model, name=arch)
    mlp = adapter._mod(1, adapter.spec.mlp)
    seen = {}
    handle = mlp.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0].detach().clone()))
    try:
        run = adapter.run([3, 9, 27, 4, 11], capture=["mlp_in.1", "resid_mid.1"])
    finally:
        handle.remove()
    torch.testing.assert_close(run["mlp_in.1"], seen["x"][0].float(), atol=0, rtol=0)
    assert run["mlp_in.1"].shape == (5, adapter.d_model) == (5, site_width(adapter, "mlp_in"))
    assert not torch.allclose(run["mlp_in.1"], run["resid_mid.1"])     # after the norm, not before
    assert "mlp_in" in adapter.sites
    with pytest.raises(SiteError, match="cannot be patched|read but not edited"):
        adapter.run([3, 9, 27], capture=[], edits={"mlp_in.1": lambda x: x})


def test_mlp_in_is_refused_on_transformer_lens_3():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from mechviz.models import wrap

    tl = HookedTransformer(HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=8, d_head=4, d_vocab=20,
                                                   act_fn="gelu", normalization_type="LN"))
    with pytest.raises(SiteError, match="mlp_in.0 is not read from TLAdapter models.*HuggingFace"):
        wrap(tl).run([1, 2, 3], capture=["mlp_in.0"])
