"""A small, explicit sparse dictionary: the weights, the encoder's activation rule and the sites it reads
and writes. Covers SAEs, transcoders and skip transcoders as SAELens 6 runs them for inference.

Encoders follow SAELens 6 (``StandardSAE``, ``TopKSAE``, ``AbsTopKSAE``, ``JumpReLUSAE``, ``GatedSAE``,
``Transcoder``, ``SkipTranscoder``, ``JumpReLUTranscoder``, ``JumpReLUSkipTranscoder``) operation for
operation, so feature activations, reconstructions and transcoder outputs equal ``sae_lens``' own (tested
to 1e-5)::

    x' = norm_in(x) - b_dec   (b_dec only if apply_b_dec_to_input; never for transcoders)
    h  = x' @ W_enc + b_enc
    relu:      f = relu(h)
    topk:      f = relu of the k largest h (h * ||W_dec|| first if rescale_acts_by_decoder_norm), 0 elsewhere
    abstopk:   f = the k largest |h| with their sign (same rescaling), 0 elsewhere
    jumprelu:  f = relu(h) * (h > threshold)
    gated:     f = (x' @ W_enc + b_gate > 0) * relu(x' @ (W_enc * exp(r_mag)) + b_mag)
    decode:    y = f @ W_dec + b_dec   (f / ||W_dec|| if rescale_acts_by_decoder_norm), then norm_out(y)
               for an SAE; transcoders (like SAELens) do not undo the input normalisation
    forward:   decode(encode(x)) (+ x @ W_skip for a skip transcoder)

``normalize`` mirrors SAELens' run-time input normalisations: ``"constant_norm_rescale"`` (x scaled
to norm sqrt(d_in) before encoding, the reconstruction scaled back) and ``"layer_norm"`` (x centred
and divided by (std + 1e-5) before encoding; the reconstruction multiplied by std, mean added).
A dataset-wide scaling factor (``expected_average_only_in``) is folded into the weights when loading.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

ARCHITECTURES = ("relu", "topk", "abstopk", "jumprelu", "gated")
KINDS = ("sae", "transcoder", "skip_transcoder")
NORMALIZATIONS = ("none", "constant_norm_rescale", "layer_norm")
_TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "W_skip", "b_gate", "r_mag", "b_mag")


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
    """A sparse autoencoder (or transcoder) attached to model sites.

    Weights: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_out]``, ``b_dec [d_out]``
    (``d_out = d_in`` for an SAE). ``architecture``: ``"relu"`` (SAELens "standard"), ``"topk"`` /
    ``"abstopk"`` (need ``k``), ``"jumprelu"`` (needs ``threshold [d_sae]``) or ``"gated"`` (needs
    ``b_gate``, ``r_mag``, ``b_mag [d_sae]``; no ``b_enc``). ``kind``: ``"sae"`` reconstructs its input;
    a ``"transcoder"`` reads ``site`` and predicts ``site_out``; a ``"skip_transcoder"`` adds
    ``x @ W_skip`` (``W_skip [d_in, d_out]``; SAELens stores its transpose). ``site``/``site_out`` are
    mechviz's canonical names (``"resid_post.1"``); ``hook_name``/``hook_name_out`` the TransformerLens
    hooks the config names, if known; ``model_name`` the model it was trained on; ``neuronpedia_id``
    its Neuronpedia id when a release registry gives one (nothing is fetched). For a ``z`` site
    (``d_in = n_heads * d_head``) the input ``[..., n_heads, d_head]`` is flattened as SAELens'
    ``reshape_activations="hook_z"`` does.

    >>> import torch
    >>> sae = SAE(W_enc=torch.eye(4), b_enc=torch.zeros(4), W_dec=torch.eye(4), b_dec=torch.zeros(4),
    ...           site="resid_post.0")
    >>> sae.encode(torch.tensor([[1., -2., 3., 0.]]))
    tensor([[1., 0., 3., 0.]])
    >>> tc = SAE(W_enc=torch.eye(4), b_enc=torch.zeros(4), W_dec=torch.ones(4, 2), b_dec=torch.zeros(2),
    ...          kind="transcoder", apply_b_dec_to_input=False, site="mlp_in.0", site_out="mlp_out.0")
    >>> tc.d_out, tc.forward(torch.tensor([[1., -2., 3., 0.]]))
    (2, tensor([[4., 4.]]))
    """

    W_enc: torch.Tensor
    b_enc: torch.Tensor | None
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
    kind: str = "sae"
    site_out: str | None = None
    hook_name_out: str | None = None
    W_skip: torch.Tensor | None = None
    b_gate: torch.Tensor | None = None
    r_mag: torch.Tensor | None = None
    b_mag: torch.Tensor | None = None
    neuronpedia_id: str | None = None

    def __post_init__(self):
        for name in _TENSORS:
            if getattr(self, name) is not None:
                setattr(self, name, _tensor(getattr(self, name)))
        arch = {"standard": "relu"}.get(self.architecture, self.architecture)
        if arch not in ARCHITECTURES:
            raise SAEError(f"unsupported SAE architecture {self.architecture!r}: mechviz encodes "
                           f"{', '.join(ARCHITECTURES)} (SAELens 'standard' = relu)")
        self.architecture = arch
        if self.kind not in KINDS:
            raise SAEError(f"unknown kind {self.kind!r}: one of {', '.join(KINDS)}")
        if self.normalize not in NORMALIZATIONS:
            raise SAEError(f"unsupported input normalisation {self.normalize!r}: mechviz applies "
                           f"{', '.join(NORMALIZATIONS)}")
        if self.kind != "sae" and self.apply_b_dec_to_input:
            raise SAEError("a transcoder's b_dec lives in its output space: apply_b_dec_to_input must be False")
        if self.kind != "sae" and self.rescale_acts_by_decoder_norm:
            raise SAEError("rescale_acts_by_decoder_norm is not defined for transcoders")
        self._check_shapes()
        if arch in ("topk", "abstopk"):
            if self.k is None or not 0 < int(self.k) <= self.d_sae:
                raise SAEError(f"a {arch} SAE needs 0 < k <= d_sae = {self.d_sae}; got k={self.k}")
            self.k = int(self.k)

    def _check_shapes(self) -> None:
        if self.W_enc.ndim != 2 or self.W_dec.ndim != 2:
            raise SAEError(f"W_enc and W_dec must be matrices; got W_enc {tuple(self.W_enc.shape)}, "
                           f"W_dec {tuple(self.W_dec.shape)}")
        d_in, d_sae = self.W_enc.shape
        d_out = d_in if self.kind == "sae" else self.W_dec.shape[1]
        per_feature = {"threshold": "jumprelu", "b_gate": "gated", "r_mag": "gated", "b_mag": "gated"}
        shapes = {"W_dec": (d_sae, d_out), "b_dec": (d_out,), "b_enc": (d_sae,)}
        for name, arch in per_feature.items():
            if self.architecture == arch:
                if getattr(self, name) is None:
                    raise SAEError(f"a {arch} SAE needs {name} [d_sae]")
                shapes[name] = (d_sae,)
            elif getattr(self, name) is not None:
                raise SAEError(f"{name} is a {arch} weight, but this SAE is {self.architecture}")
        if self.architecture == "gated":
            if self.b_enc is not None:
                raise SAEError("a gated SAE has b_gate and b_mag instead of b_enc")
            del shapes["b_enc"]
        elif self.b_enc is None:
            raise SAEError("SAE weight b_enc [d_sae] missing")
        if self.kind == "skip_transcoder":
            if self.W_skip is None:
                raise SAEError("a skip transcoder needs W_skip [d_in, d_out]")
            shapes["W_skip"] = (d_in, d_out)
        elif self.W_skip is not None:
            raise SAEError(f"W_skip belongs to a skip transcoder, not a {self.kind}")
        for name, want in shapes.items():
            got = tuple(getattr(self, name).shape)
            if got != want:
                raise SAEError(f"SAE weight {name} has shape {got}, expected {want} "
                               f"(W_enc is [d_in, d_sae] = {tuple(self.W_enc.shape)}"
                               f"{'' if self.kind == 'sae' else f', d_out = {d_out}'})")

    # -- shape ---------------------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    @property
    def d_out(self) -> int:
        """Width of the output (``d_in`` for an SAE)."""
        return int(self.W_dec.shape[1])

    @property
    def is_transcoder(self) -> bool:
        return self.kind != "sae"

    def at(self, site: str) -> "SAE":
        """A copy attached to another input ``site`` (weights shared)."""
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
        back to the output site's space for inputs ``x`` (1 without input normalisation, and for
        transcoders, whose decoder works in the output site's own space)."""
        x = self._flat(x)
        _, scale, _ = self._norm_stats(x)
        return torch.ones_like(x[..., :1]) if scale is None or self.is_transcoder else scale

    def _sae_in(self, x) -> torch.Tensor:
        x = self._normalize_in(self._flat(x))
        return x - self.b_dec if self.apply_b_dec_to_input else x

    def pre_acts(self, x) -> torch.Tensor:
        """Encoder pre-activations ``[..., d_sae]``: ``h = x' @ W_enc + b_enc`` (a gated SAE's
        magnitude pre-activations ``x' @ (W_enc * exp(r_mag)) + b_mag``, as SAELens hooks them)."""
        x = self._sae_in(x)
        if self.architecture == "gated":
            return x @ (self.W_enc * self.r_mag.exp()) + self.b_mag
        return x @ self.W_enc + self.b_enc

    def encode(self, x) -> torch.Tensor:
        """Feature activations ``[..., d_sae]`` for activations ``[..., d_in]`` (torch or numpy)."""
        with torch.no_grad():
            if self.architecture == "gated":
                x_in = self._sae_in(x)
                gate = (x_in @ self.W_enc + self.b_gate > 0).to(x_in.dtype)
                return gate * torch.relu(x_in @ (self.W_enc * self.r_mag.exp()) + self.b_mag)
            h = self.pre_acts(x)
            if self.architecture == "relu":
                return torch.relu(h)
            if self.architecture == "jumprelu":
                return torch.relu(h) * (h > self.threshold).to(h.dtype)
            if self.rescale_acts_by_decoder_norm:
                h = h * self.W_dec.norm(dim=-1)
            if self.architecture == "abstopk":
                idx = torch.topk(h.abs(), k=self.k, dim=-1, sorted=False).indices
                return torch.zeros_like(h).scatter_(-1, idx, h.gather(-1, idx))
            values, idx = torch.topk(h, k=self.k, dim=-1, sorted=False)
            return torch.zeros_like(h).scatter_(-1, idx, values.relu())

    def directions(self) -> torch.Tensor:
        """What one unit of each feature adds to the output, ``[d_sae, d_out]``: ``W_dec``
        (rows divided by their norm when ``rescale_acts_by_decoder_norm``)."""
        if self.rescale_acts_by_decoder_norm:
            return self.W_dec / self.W_dec.norm(dim=-1, keepdim=True)
        return self.W_dec

    def decode(self, f, x=None) -> torch.Tensor:
        """Decoder output ``[..., d_out]`` from feature activations ``[..., d_sae]`` (a transcoder's
        without its skip term: see :meth:`forward`). For an SAE with input normalisation, pass the
        inputs ``x`` the features came from (their statistics undo it)."""
        with torch.no_grad():
            y = _tensor(f, self.W_dec.dtype).to(self.W_dec.device) @ self.directions() + self.b_dec
            if self.normalize == "none" or self.is_transcoder:
                return y
            if x is None:
                raise SAEError(f"this SAE normalises its inputs ({self.normalize}): decode(f, x) needs the inputs x")
            shift, scale, _ = self._norm_stats(self._flat(x))
            return y * scale + shift

    def forward(self, x) -> torch.Tensor:
        """The full map ``[..., d_out]``: an SAE's reconstruction of ``x``; a transcoder's prediction of
        its output site, ``decode(encode(x))`` plus ``x @ W_skip`` for a skip transcoder."""
        with torch.no_grad():
            y = self.decode(self.encode(x), x)
            if self.W_skip is not None:
                y = y + self._flat(x) @ self.W_skip
            return y

    def to(self, device=None, dtype=None) -> "SAE":
        """A copy with every tensor moved (``torch.Tensor.to`` semantics)."""
        move = {n: getattr(self, n).to(device=device, dtype=dtype) for n in _TENSORS if getattr(self, n) is not None}
        return replace(self, **move)

    def __repr__(self) -> str:
        extra = f", k={self.k}" if self.architecture in ("topk", "abstopk") else ""
        kind = "" if self.kind == "sae" else f"{self.kind}, "
        where = f", site={self.site!r}" if self.site else ", site=None"
        out = f", site_out={self.site_out!r}, d_out={self.d_out}" if self.is_transcoder else ""
        model = f", model={self.model_name!r}" if self.model_name else ""
        norm = f", normalize={self.normalize!r}" if self.normalize != "none" else ""
        return (f"SAE({kind}{self.architecture}{extra}, d_in={self.d_in}, d_sae={self.d_sae}{norm}{where}{out}"
                f"{model})")
