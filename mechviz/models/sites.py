"""Canonical activation-site names: the one place where every site is defined.

A *site* is a named point in the forward pass. Per-layer sites are written ``"<name>.<layer>"``
(for example ``"resid_pre.3"``); ``"<name>"`` alone means that site in every layer. Shapes are
for one prompt of ``T`` tokens (no batch axis); ``H`` is the number of query heads, ``H_kv`` the
number of key/value heads (``H_kv < H`` for grouped-query attention), ``d`` the model width.

======================  ====================  ======================================================
site                    shape                 meaning
======================  ====================  ======================================================
``resid_pre.L``         ``[T, d]``            residual stream entering block ``L``
``attn_pattern.L``      ``[H, T_dst, T_src]`` softmaxed attention, rows = destination (query) token
``q.L``                 ``[T, H, d_head]``    queries, before rotary embedding
``k.L``                 ``[T, H_kv, d_head]`` keys, before rotary embedding
``v.L``                 ``[T, H_kv, d_head]`` values
``z.L``                 ``[T, H, d_head]``    per-head attention output (pattern @ v), before W_O
``attn_out.L``          ``[T, d]``            attention block output added to the residual stream
``resid_mid.L``         ``[T, d]``            ``resid_pre + attn_out`` (what the MLP reads unless the
                                              block is parallel, as in GPT-NeoX/Pythia)
``mlp_in.L``            ``[T, d]``            the MLP's input: the pre-MLP norm's output, its affine
                                              weights included (read-only; what a transcoder reads)
``mlp_out.L``           ``[T, d]``            MLP output added to the residual stream
``resid_post.L``        ``[T, d]``            residual stream leaving block ``L``
======================  ====================  ======================================================

These are the names TransformerLens calls ``blocks.L.hook_resid_pre``, ``blocks.L.attn.hook_pattern``,
``blocks.L.attn.hook_q`` ... ``blocks.L.hook_resid_post``; :data:`TL_HOOKS` maps them. TransformerLens 4's
``TransformerBridge`` names its hooks after the component that fires them (``blocks.L.hook_in``,
``blocks.L.attn.q.hook_out`` ...) and keeps the 3.x names as aliases of those; :data:`TL4_HOOKS` maps the
sites to the canonical names.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

#: Every per-layer site, in forward order, with a one-line description.
SITES: dict[str, str] = {
    "resid_pre": "residual stream entering the block [T, d]",
    "q": "queries before rotary embedding [T, H, d_head]",
    "k": "keys before rotary embedding [T, H_kv, d_head]",
    "v": "values [T, H_kv, d_head]",
    "attn_pattern": "softmaxed attention [H, T_dst, T_src]",
    "z": "per-head attention output before W_O [T, H, d_head]",
    "attn_out": "attention output added to the residual stream [T, d]",
    "resid_mid": "resid_pre + attn_out [T, d]",
    "mlp_out": "MLP output added to the residual stream [T, d]",
    "resid_post": "residual stream leaving the block [T, d]",
}

#: TransformerLens hook names for each site (format with the layer).
TL_HOOKS: dict[str, str] = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "q": "blocks.{layer}.attn.hook_q",
    "k": "blocks.{layer}.attn.hook_k",
    "v": "blocks.{layer}.attn.hook_v",
    "attn_pattern": "blocks.{layer}.attn.hook_pattern",
    "z": "blocks.{layer}.attn.hook_z",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "resid_post": "blocks.{layer}.hook_resid_post",
}
assert TL_HOOKS.keys() == SITES.keys()

#: Sites only some blocks have (read-only; not in :data:`SITES`, which every model has): the router
#: logits of a mixture-of-experts MLP (Mixtral, Qwen2-MoE, Qwen3-MoE, gpt-oss), one row per token.
MOE_SITES: dict[str, str] = {"router": "router logits of a mixture-of-experts MLP [T, n_experts] (read-only)"}
#: Read-only sites every HuggingFace model has but patching does not edit: the MLP's input (the pre-MLP
#: norm's output with its affine weights: what the MLP and a per-layer transcoder read). TransformerLens 3
#: has no hook for it (``ln2.hook_normalized`` is before the norm's weights); TransformerLens 4 calls it
#: ``blocks.L.mlp.hook_in``.
READ_SITES: dict[str, str] = {"mlp_in": "the MLP's input, the pre-MLP norm's output [T, d] (read-only)"}
#: Every site name in forward order (the order :func:`parse_sites` returns).
_ORDER = [*list(SITES)[:8], *READ_SITES, *MOE_SITES, *list(SITES)[8:]]
#: TransformerLens 4 ``TransformerBridge`` canonical hook names for each site (format with the layer). The
#: bridge also answers to the 3.x names of :data:`TL_HOOKS`, as aliases of these same hook points
#: (``blocks.L.hook_resid_pre`` is ``blocks.L.hook_in``, ``blocks.L.attn.hook_z`` is
#: ``blocks.L.attn.o.hook_in``, ...). ``resid_mid`` is the second norm's input, which is
#: ``resid_pre + attn_out`` only in a sequential block: in a parallel one (GPT-NeoX/Pythia) that norm
#: reads ``resid_pre``, and adapters derive ``resid_mid`` instead.
TL4_HOOKS: dict[str, str] = {
    "resid_pre": "blocks.{layer}.hook_in",
    "q": "blocks.{layer}.attn.q.hook_out",
    "k": "blocks.{layer}.attn.k.hook_out",
    "v": "blocks.{layer}.attn.v.hook_out",
    "attn_pattern": "blocks.{layer}.attn.hook_pattern",
    "z": "blocks.{layer}.attn.o.hook_in",
    "attn_out": "blocks.{layer}.attn.hook_out",
    "resid_mid": "blocks.{layer}.ln2.hook_in",
    "mlp_out": "blocks.{layer}.mlp.hook_out",
    "resid_post": "blocks.{layer}.hook_out",
}
assert TL4_HOOKS.keys() == SITES.keys()

#: Sites one ``d_model`` vector wide per token (patched by position; readable by an SAE).
RESID_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
#: Sites with a head axis ``[T, heads, d_head]``: ``z`` is the head's output (TransformerLens'
#: "attn_head_out"); ``k`` and ``v`` have ``n_kv_heads`` heads in grouped-query models.
HEAD_SITES = ("z", "q", "k", "v")
KV_SITES = ("k", "v")


def n_site_heads(adapter, name: str) -> int:
    """How many heads site ``name`` has on this model (0: no head axis)."""
    if name == "attn_pattern":
        return adapter.n_heads
    if name not in HEAD_SITES:
        return 0
    return adapter.n_kv_heads if name in KV_SITES else adapter.n_heads


def site_width(adapter, name: str) -> int | None:
    """The per-token width of site ``name`` (head sites flattened over heads); None for
    ``attn_pattern``, which is not a per-token vector."""
    if name in RESID_SITES or name in READ_SITES:
        return adapter.d_model
    if name in HEAD_SITES:
        return n_site_heads(adapter, name) * adapter.d_head
    return None


class SiteError(ValueError):
    """An unknown site name or a layer the model does not have."""


@dataclass(frozen=True, order=True)
class Site:
    """One site in one layer, e.g. ``Site("resid_pre", 3)``; ``str()`` gives ``"resid_pre.3"``."""

    name: str
    layer: int

    def __str__(self) -> str:
        return f"{self.name}.{self.layer}"


def parse_sites(spec, n_layers: int) -> list[Site]:
    """Turn ``"resid_pre.3"``, ``"attn_pattern"`` (all layers), ``Site`` objects or
    ``("z", 2)`` tuples (or a list of any of these) into a de-duplicated list of Sites in forward
    order (by layer, then by position in the block).

    >>> [str(s) for s in parse_sites(["attn_pattern", "resid_pre.1"], n_layers=2)]
    ['attn_pattern.0', 'resid_pre.1', 'attn_pattern.1']
    """
    if isinstance(spec, (str, Site, tuple)):
        spec = [spec]
    out: set[Site] = set()
    for item in spec:
        if isinstance(item, Site):
            name, layer = item.name, item.layer
        elif isinstance(item, tuple) and len(item) == 2:
            name, layer = item
        elif isinstance(item, str):
            name, _, layer_s = item.partition(".")
            if layer_s and not layer_s.lstrip("-").isdigit():
                raise SiteError(f"bad site {item!r}: expected '<name>.<layer>', e.g. 'resid_pre.0'")
            layer = int(layer_s) if layer_s else None
        else:
            raise SiteError(f"cannot read {item!r} as a site; use a string like 'resid_pre.0'")
        if name not in _ORDER:
            close = difflib.get_close_matches(str(name), _ORDER, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise SiteError(f"unknown site {name!r}.{hint} Known sites: {', '.join(SITES)}, {', '.join(READ_SITES)} "
                            f"(and {', '.join(MOE_SITES)} in mixture-of-experts models).")
        layers = range(n_layers) if layer is None else [int(layer)]
        for lay in layers:
            if not 0 <= lay < n_layers:
                raise SiteError(f"site {name}.{lay}: the model has layers 0..{n_layers - 1}")
            out.add(Site(name, lay))
    return sorted(out, key=lambda s: (s.layer, _ORDER.index(s.name)))


def tl_hook_name(site) -> str:
    """The TransformerLens hook of one single-layer site: ``"resid_post.1"`` -> ``"blocks.1.hook_resid_post"``."""
    if isinstance(site, str) and "." not in site:
        raise SiteError(f"site {site!r} needs a layer, e.g. '{site}.0'")
    (one,) = parse_sites(site, n_layers=1 << 30)
    return TL_HOOKS[one.name].format(layer=one.layer)
