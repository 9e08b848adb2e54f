"""A small, explicit sparse autoencoder: the weights, the encoder's activation rule and the site it reads.

Encoders follow SAELens 6 (``StandardSAE``, ``TopKSAE``, ``JumpReLUSAE``) operation for operation, so
feature activations equal ``sae_lens``' own ``encode`` (tested to 1e-5)::

    x' = x - b_dec            (only if apply_b_dec_to_input)
    h  = x' @ W_enc + b_enc
    relu:      f = relu(h)
    topk:      f = relu of the k largest h (rescaled by ||W_dec|| first if rescale_acts_by_decoder_norm),
               zero elsewhere
    jumprelu:  f = relu(h) * (h > threshold)
    decode:    x_hat = f @ W_dec + b_dec   (f / ||W_dec|| if rescale_acts_by_decoder_norm)

``normalize`` mirrors SAELens' run-time input normalisations: ``"constant_norm_rescale"`` (x scaled
to norm sqrt(d_in) before encoding, the reconstruction scaled back) and ``"layer_norm"`` (x centred
and divided by (std + 1e-5) before encoding; the reconstruction multiplied by std, mean added).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

ARCHITECTURES = ("relu", "topk", "jumprelu")
NORMALIZATIONS = ("none", "constant_norm_rescale", "layer_norm")


class SAEError(ValueError):
    """An SAE that cannot be built, or that does not fit the model or site it is used with."""


def _tensor(x, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A detached tensor; cast to ``dtype`` if given, else floating dtypes kept and others -> float32."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    x = torch.as_tensor(x).detach()
    if dtype is None and not x.is_floating_point():
        dtype = torch.float32
    return x if dtype is None else x.to(dtype)


@dataclass(eq=False)
class SAE:
    """A sparse autoencoder attached to one model site.

    Weights: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``.
    ``architecture``: ``"relu"`` (SAELens "standard"), ``"topk"`` (needs ``k``) or ``"jumprelu"``
    (needs ``threshold [d_sae]``). ``site`` is mechviz's canonical name (``"resid_post.1"``);
    ``hook_name`` the TransformerLens hook the SAE was trained on, if known; ``model_name`` the
    model it was trained on, if its config says. For a ``z`` site (``d_in = n_heads * d_head``) the
    input ``[..., n_heads, d_head]`` is flattened as SAELens' ``reshape_activations="hook_z"`` does.

    >>> import torch
    >>> sae = SAE(W_enc=torch.eye(4), b_enc=torch.zeros(4), W_dec=torch.eye(4), b_dec=torch.zeros(4),
    ...           site="resid_post.0")
    >>> sae.encode(torch.tensor([[1., -2., 3., 0.]]))
    tensor([[1., 0., 3., 0.]])
    """

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    architecture: str = "relu"
    k: int | None = None
    threshold: torch.Tensor | None = None
    apply_b_dec_to_input: bool = True
    rescale_acts_by_decoder_norm: bool = False
    normalize: str = "none"
    site: str | None = None
    hook_name: str | None = None
    model_name: str | None = None
    cfg: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.W_enc, self.b_enc = _tensor(self.W_enc), _tensor(self.b_enc)
        self.W_dec, self.b_dec = _tensor(self.W_dec), _tensor(self.b_dec)
        arch = {"standard": "relu"}.get(self.architecture, self.architecture)
        if arch not in ARCHITECTURES:
            raise SAEError(f"unsupported SAE architecture {self.architecture!r}: mechviz encodes "
                           f"{', '.join(ARCHITECTURES)} (SAELens 'standard' = relu)")
        self.architecture = arch
        if self.normalize not in NORMALIZATIONS:
            raise SAEError(f"unsupported input normalisation {self.normalize!r}: mechviz applies "
                           f"{', '.join(NORMALIZATIONS)}")
        d_in, d_sae = self.W_enc.shape if self.W_enc.ndim == 2 else (None, None)
        shapes = {"W_enc": (self.W_enc.shape, (d_in, d_sae)), "b_enc": (self.b_enc.shape, (d_sae,)),
                  "W_dec": (self.W_dec.shape, (d_sae, d_in)), "b_dec": (self.b_dec.shape, (d_in,))}
        if arch == "jumprelu":
            if self.threshold is None:
                raise SAEError("a jumprelu SAE needs a threshold [d_sae]")
            self.threshold = _tensor(self.threshold)
            shapes["threshold"] = (self.threshold.shape, (d_sae,))
        for name, (got, want) in shapes.items():
            if tuple(got) != want:
                raise SAEError(f"SAE weight {name} has shape {tuple(got)}, expected {want} "
                               f"(W_enc is [d_in, d_sae] = {tuple(self.W_enc.shape)})")
        if arch == "topk":
            if self.k is None or not 0 < int(self.k) <= d_sae:
                raise SAEError(f"a topk SAE needs 0 < k <= d_sae = {d_sae}; got k={self.k}")
            self.k = int(self.k)

    # -- shape ---------------------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    def at(self, site: str) -> "SAE":
        """A copy attached to another ``site`` (weights shared)."""
        return replace(self, site=site)

    # -- encode / decode ------------------------------------------------------------------------
    def _flat(self, x) -> torch.Tensor:
        x = _tensor(x, self.W_enc.dtype).to(self.W_enc.device)
        if x.shape[-1] != self.d_in and x.ndim >= 2 and x.shape[-2] * x.shape[-1] == self.d_in:
            x = x.reshape(*x.shape[:-2], self.d_in)  # [.., n_heads, d_head] -> [.., d_in] (hook_z)
        if x.shape[-1] != self.d_in:
            raise SAEError(f"activations of width {x.shape[-1]} do not fit this SAE (d_in={self.d_in})")
        return x

    def _norm_stats(self, x: torch.Tensor):
        """``(shift, scale, scale_in)``: normalised input ``(x - shift) / (scale_in or scale)``;
        reconstruction in the site's space ``y * scale + shift`` (SAELens' run-time normalisations)."""
        if self.normalize == "constant_norm_rescale":
            return 0.0, x.norm(dim=-1, keepdim=True) / self.d_in ** 0.5, None
        if self.normalize == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            std = (x - mu).std(dim=-1, keepdim=True)
            return mu, std, std + 1e-5
        return 0.0, None, None

    def _normalize_in(self, x: torch.Tensor) -> torch.Tensor:
        shift, scale, scale_in = self._norm_stats(x)
        if scale is None:
            return x
        return (x - shift) / (scale if scale_in is None else scale_in)

    def output_scale(self, x) -> torch.Tensor:
        """Per-token factor ``[..., 1]`` that maps a change in the SAE's (normalised) output space
        back to the site's space for inputs ``x`` (1 without input normalisation)."""
        x = self._flat(x)
        _, scale, _ = self._norm_stats(x)
        return torch.ones_like(x[..., :1]) if scale is None else scale

    def pre_acts(self, x) -> torch.Tensor:
        """Encoder pre-activations ``h = (x - b_dec) @ W_enc + b_enc``, ``[..., d_sae]``."""
        x = self._normalize_in(self._flat(x))
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def encode(self, x) -> torch.Tensor:
        """Feature activations ``[..., d_sae]`` for activations ``[..., d_in]`` (torch or numpy)."""
        with torch.no_grad():
            h = self.pre_acts(x)
            if self.architecture == "relu":
                return torch.relu(h)
            if self.architecture == "jumprelu":
                return torch.relu(h) * (h > self.threshold).to(h.dtype)
            if self.rescale_acts_by_decoder_norm:
                h = h * self.W_dec.norm(dim=-1)
            values, idx = torch.topk(h, k=self.k, dim=-1, sorted=False)
            return torch.zeros_like(h).scatter_(-1, idx, values.relu())

    def directions(self) -> torch.Tensor:
        """What one unit of each feature adds to the reconstruction, ``[d_sae, d_in]``: ``W_dec``
        (rows divided by their norm when ``rescale_acts_by_decoder_norm``)."""
        if self.rescale_acts_by_decoder_norm:
            return self.W_dec / self.W_dec.norm(dim=-1, keepdim=True)
        return self.W_dec

    def decode(self, f, x=None) -> torch.Tensor:
        """Reconstruction ``[..., d_in]`` from feature activations ``[..., d_sae]``. With input
        normalisation, pass the inputs ``x`` the features came from (their statistics undo it)."""
        with torch.no_grad():
            y = _tensor(f, self.W_dec.dtype).to(self.W_dec.device) @ self.directions() + self.b_dec
            if self.normalize == "none":
                return y
            if x is None:
                raise SAEError(f"this SAE normalises its inputs ({self.normalize}): decode(f, x) needs the inputs x")
            shift, scale, _ = self._norm_stats(self._flat(x))
            return y * scale + shift

    def to(self, device=None, dtype=None) -> "SAE":
        """A copy with every tensor moved (``torch.Tensor.to`` semantics)."""
        move = {n: getattr(self, n).to(device=device, dtype=dtype)
                for n in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold") if getattr(self, n) is not None}
        return replace(self, **move)

    def __repr__(self) -> str:
        extra = {"topk": f", k={self.k}", "jumprelu": "", "relu": ""}[self.architecture]
        where = f", site={self.site!r}" if self.site else ", site=None"
        model = f", model={self.model_name!r}" if self.model_name else ""
        norm = f", normalize={self.normalize!r}" if self.normalize != "none" else ""
        return f"SAE({self.architecture}{extra}, d_in={self.d_in}, d_sae={self.d_sae}{norm}{where}{model})"
