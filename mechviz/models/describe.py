"""What a wrapped model is, in one line for a view's header: backend, numerics, dtype, device.

Numbers depend on more than the architecture: TransformerLens' default loading folds LayerNorm and
centres weights (activations then differ from the HF model's, and an SAE trained on raw HF
activations does not apply), and bfloat16 weights round every activation. Views show this so a
figure says what produced it.

>>> from transformers import GPT2Config, GPT2LMHeadModel
>>> from mechviz.models import wrap
>>> str(describe(wrap(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32)), name="tiny")))
'tiny · HF raw weights · float32 · cpu'
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelInfo:
    """``name``, ``backend`` ("HF", "TransformerLens", ...), ``numerics`` ("raw weights" or what
    TransformerLens folded), ``dtype`` and ``device`` (of the first parameter; ``devices``: how many
    devices the parameters are spread over)."""

    name: str
    backend: str
    numerics: str
    dtype: str
    device: str
    devices: int = 1

    def __str__(self) -> str:
        where = self.device if self.devices == 1 else f"{self.device} (+{self.devices - 1} more devices)"
        return f"{self.name} · {self.backend} {self.numerics} · {self.dtype} · {where}"


def describe(adapter) -> ModelInfo:
    """The :class:`ModelInfo` of a mechviz model adapter."""
    model = getattr(adapter, "model", None)
    params = list(model.parameters()) if model is not None and hasattr(model, "parameters") else []
    dtype = str(params[0].dtype).replace("torch.", "") if params else "unknown"
    devices = sorted({str(p.device) for p in params}) or ["unknown"]
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "normalization_type"):  # TransformerLens
        folded = str(cfg.normalization_type).endswith("Pre") or bool(getattr(cfg, "layer_norm_folding", False))
        backend, numerics = "TransformerLens", "LayerNorm folded" if folded else "raw weights"
    else:
        backend, numerics = "HF", "raw weights"
    first = str(params[0].device) if params else devices[0]
    return ModelInfo(name=str(adapter.name), backend=backend, numerics=numerics, dtype=dtype, device=first,
                     devices=len(devices))
