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
    remote = getattr(adapter, "remote", False)
    if hasattr(adapter, "lm"):  # the nnsight backend (mechviz.models.nnsight): where its traces run
        backend = "nnsight"
        if remote is True or (isinstance(remote, str) and remote != "local"):
            first, devices = "NDIF", ["NDIF"]
    return ModelInfo(name=str(adapter.name), backend=backend, numerics=numerics, dtype=dtype, device=first,
                     devices=len(devices))


def attention_windows(adapter) -> list[int]:
    """Per layer, the length of its sliding attention window (a token attends to itself and the
    ``w - 1`` before it), or 0 where the layer attends to the whole prefix. Read from the model's
    config: HF ``layer_types`` + ``sliding_window`` (Gemma 2/3, gpt-oss, Qwen2), a model-wide
    ``sliding_window`` (Mistral), TransformerLens ``attn_types`` + ``window_size``."""
    n = adapter.n_layers
    model = getattr(adapter, "model", None)
    cfg = getattr(model, "config", None)
    if cfg is not None:  # HF
        w = int(getattr(cfg, "sliding_window", None) or 0)
        types = getattr(cfg, "layer_types", None)
        if types:
            return [w if t == "sliding_attention" else 0 for t in types][:n]
        return [w if getattr(cfg, "use_sliding_window", True) is not False else 0] * n
    tl = getattr(model, "cfg", None)
    types, w = getattr(tl, "attn_types", None), int(getattr(tl, "window_size", None) or 0)
    if types and w:
        return [w if t == "local" else 0 for t in types][:n]
    return [0] * n
