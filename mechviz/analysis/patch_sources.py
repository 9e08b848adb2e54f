"""Where a patch's values come from, beyond a second prompt's run: attention patterns turned into the
``z`` they produce, and ablation sources (zeros, a reference-set mean, a resampled prompt).

Patching head ``h``'s attention pattern at destination ``d`` of layer ``l`` changes only that head's
output there: ``z[d, h] = pattern[h, d, :] @ v[:, h // (H / H_kv)]``, with the receiving run's values
(``v`` of layer ``l`` is computed before the pattern and cannot change). Grouped-query models share
each key/value head among ``H / H_kv`` consecutive query heads, as HF's ``repeat_kv`` and TL lay them
out. So a pattern patch *is* a ``z`` patch of that value, and the engine runs it as one (any adapter
that can edit ``z`` can patch patterns, HF's eager attention included, whose weights are read-only).
:func:`pattern_z` checks ``z = pattern @ v`` on the receiving run, so an attention with something
between the two (a value norm, a learned sink) is refused instead of silently mispatched.
"""

from __future__ import annotations

import torch

from ..models.sites import SiteError

#: Sites patched through another one: ``attn_pattern`` through the ``z`` it produces.
PATCHED_AS = {"attn_pattern": "z"}
#: What patching ``attn_pattern`` reads from the runs (besides the pattern): the values and ``z``.
PATTERN_NEEDS = ("v", "z")


def z_of_pattern(pattern: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``z [T, H, d_head]`` from ``pattern [H, T_dst, T_src]`` and ``v [T, H_kv, d_head]``."""
    H, Hkv = pattern.shape[0], v.shape[1]
    if H % Hkv:
        raise SiteError(f"{H} query heads cannot share {Hkv} key/value heads evenly")
    v = v.repeat_interleave(H // Hkv, dim=1).to(pattern.dtype)          # query head h reads kv head h // (H/H_kv)
    return torch.einsum("hds,shk->dhk", pattern, v)


def pattern_rtol(adapter) -> float:
    """How far ``z`` may be from ``pattern @ v`` (relative to ``max |z|``) in this model's dtype."""
    return 1e-3 if adapter._dtype() == torch.float32 else 5e-2


def pair_pattern_z(pair, receiver: str, src_pattern: torch.Tensor, layer: int) -> torch.Tensor:
    """:func:`pattern_z` on the ``receiver`` run of a :class:`~.prompt_pair.PromptPair` (its pattern, values
    and ``z`` of ``layer`` captured first if missing), at the tolerance of the model's dtype."""
    recv = pair.ensure([f"{n}.{layer}" for n in ("attn_pattern", *PATTERN_NEEDS)]).runs[receiver].cache
    return pattern_z(recv, src_pattern, layer, pattern_rtol(pair.adapter))


def pattern_z(recv: dict, src_pattern: torch.Tensor, layer: int, rtol: float = 1e-3) -> torch.Tensor:
    """The receiving run's ``z`` of ``layer`` with every (destination, head) whose pattern row differs
    from ``src_pattern``'s replaced by ``src_pattern @ v`` (rows that are equal keep the run's own z, so
    that they stay no-ops). ``recv`` holds ``attn_pattern``, ``v`` and ``z`` of ``layer``."""
    pat, v, z = (recv[f"{n}.{layer}"].float() for n in ("attn_pattern", "v", "z"))
    own = z_of_pattern(pat, v)
    err, scale = float((own - z).abs().max()), float(z.abs().max()) + 1e-6
    if err > rtol * scale:
        raise SiteError(f"attn_pattern.{layer}: the head outputs are not pattern @ v (max deviation {err:.2e} of "
                        f"{scale:.2e}): this attention has something between the two; pattern patching would be wrong")
    same = (src_pattern.float() == pat).all(-1).T                       # [T_dst, H]
    return torch.where(same[..., None], z, z_of_pattern(src_pattern.float(), v))
