"""Steering that shows text: generate tokens with and without SAE features clamped or scaled.

:func:`steering_edits` is the joint edit of several features (the SAE encodes each position ONCE; every
feature's change ``(target - act) * d_f`` is added together, times the SAE's output scale, exactly the
single-feature :func:`~mechviz.analysis.features.steering_edit` summed), :func:`generate` a greedy
(or seeded sampled) continuation with each chosen token's probability and the top-k alternatives,
:func:`steered_generation` the unsteered and steered continuations side by side, :func:`strength_sweep`
a metric of the next-token distribution against the steering value, and :func:`neuronpedia_url` a
feature's Neuronpedia page (a link only; nothing is fetched).

Generation has no KV cache: every step is one full forward pass of the growing sequence (cheap on
small models). Steering positions: ``positions=None`` (or ``"all"``) steers every position, the
generated tokens included (each step re-runs the whole sequence, so a token is steered from the step
after it is chosen on); ``positions=`` indices into the prompt (or ``"prompt"``: all of it) steers only
those, never a generated token.

>>> import mechviz
>>> lab = mechviz.Lab.default()
>>> base, steered = steered_generation(lab.model, lab.sae, "The cat sat on the", [(5, 20.0, "clamp")], n=4)
>>> len(base.strs), len(steered.strs), steered.steering
(4, 4, 'feature 5 clamped to 20')
>>> neuronpedia_url(lab.sae, 5) is None     # the bundled SAE has no Neuronpedia id
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ..models.base import Aborted
from ..saes.load import check_sae_fits
from ..saes.sae import SAE, SAEError
from ..steering import Steering
from .checks import positive_int, token_id
from .features import feature_edit

METRICS = ("kl", "target_prob")


def steering_specs(sae: SAE, specs) -> list[Steering]:
    """``specs`` as checked :class:`~mechviz.steering.Steering` values: each a ``(feature, value)``
    (clamp), ``(feature, value, mode)``, a dict ``{"feature", "value", "mode"}`` or a Steering. Clear
    ValueErrors for a transcoder, a bad id, a non-finite value, no features, or a feature given twice."""
    if isinstance(specs, (Steering, dict)) or (isinstance(specs, tuple) and specs and not isinstance(specs[0], (tuple, list, dict, Steering))):
        specs = [specs]
    out = []
    for s in specs or []:
        if isinstance(s, Steering):
            s = (s.feature, s.value, s.mode)
        elif isinstance(s, dict):
            s = (s.get("feature"), s.get("value"), s.get("mode", "clamp"))
        if not isinstance(s, (tuple, list)) or len(s) not in (2, 3):
            raise ValueError(f"a feature to steer is (feature, value) or (feature, value, mode), got {s!r}")
        out.append(Steering.checked(s[0], s[1], s[2] if len(s) == 3 else "clamp", sae))
    if not out:
        raise ValueError("give at least one feature to steer: [(feature, value, 'clamp' | 'scale'), ...]")
    seen = [s.feature for s in out]
    dup = next((f for f in seen if seen.count(f) > 1), None)
    if dup is not None:
        raise ValueError(f"feature {dup} is given twice: steer each feature once")
    return out


def _every(positions) -> bool:
    return positions is None or (isinstance(positions, str) and positions == "all")


def _prompt_positions(positions, n_prompt: int):
    """``None`` (steer every position) or a sorted int array of prompt positions."""
    if _every(positions):
        return None
    if isinstance(positions, str):
        if positions != "prompt":
            raise ValueError(f"positions must be 'all', 'prompt' or prompt indices, got {positions!r}")
        return np.arange(n_prompt)
    pos = np.asarray(positions)
    if pos.dtype == bool:
        if pos.shape != (n_prompt,):
            raise ValueError(f"a position mask must have one entry per prompt token ({n_prompt}), got {pos.shape}")
        return np.flatnonzero(pos)
    if pos.size and not np.issubdtype(pos.dtype, np.integer):
        raise ValueError(f"positions must be whole-number indices into the prompt, got {positions!r}")
    pos = pos.reshape(-1).astype(np.int64)
    bad = pos[(pos < -n_prompt) | (pos >= n_prompt)]
    if bad.size:
        raise ValueError(f"position {int(bad[0])} is outside the prompt ({n_prompt} tokens, BOS included)")
    return np.unique(np.where(pos < 0, pos + n_prompt, pos))


def steering_edits(sae: SAE, specs, positions=None, n_prompt: int | None = None) -> dict:
    """``{sae.site: edit}`` for :meth:`~mechviz.models.ModelAdapter.run` that steers every feature of
    ``specs`` (see :func:`steering_specs`) at once: the site's activation ``x`` is encoded once, each
    feature's target is its clamp value or ``scale * act``, and ``x + sum_f (target_f - act_f) d_f *
    output_scale(x)`` replaces it (the reconstruction error is kept, so all-``scale=1`` is the unsteered
    model). ``positions``: ``None``/``"all"`` every position, else prompt indices (or ``"prompt"``) of a
    prompt of ``n_prompt`` tokens (needed then); later (generated) positions are not steered."""
    if sae.is_transcoder:
        raise SAEError(f"steering edits one site; a {sae.kind} reads {sae.site} and writes {sae.site_out}")
    checked = steering_specs(sae, specs)
    if not _every(positions) and n_prompt is None:
        raise ValueError("steering only some positions needs n_prompt, the prompt's length")
    pos = _prompt_positions(positions, n_prompt or 0)
    clamp = torch.tensor([s.mode == "clamp" for s in checked])
    vals = torch.tensor([s.value for s in checked], dtype=torch.float64)

    def target(act: torch.Tensor) -> torch.Tensor:
        v = vals.to(act.device, act.dtype)
        return torch.where(clamp.to(act.device), v.expand_as(act), act * v)

    def mask(T: int, device) -> torch.Tensor:
        m = torch.zeros(T, dtype=torch.bool, device=device)
        m[torch.as_tensor(pos[pos < T], device=device)] = True
        return m

    edit = feature_edit(sae, [s.feature for s in checked], target, None if pos is None else mask)
    return {sae.site: edit}


def _label(steerings: Sequence[Steering]) -> str:
    return "; ".join(str(s) for s in steerings)


@dataclass
class Generation:
    """A continuation of ``prompt_strs`` (int64 ``prompt_ids [T0]``): the chosen tokens ``ids`` int64
    ``[n]`` and their text ``strs``; ``probs`` float32 ``[n]`` each chosen token's probability (the
    model's softmax at temperature 1, whatever the sampling temperature); ``top_ids`` int64 ``[n, k]``,
    ``top_strs`` and ``top_probs`` float32 ``[n, k]``: the k most likely tokens at each step. ``stopped``:
    ``"n"`` (all n made) or ``"eos"`` (the tokenizer's end-of-text token was chosen: it is the last one).
    ``steering``: what was steered ("" none)."""

    prompt_ids: np.ndarray
    prompt_strs: list[str]
    ids: np.ndarray
    strs: list[str]
    probs: np.ndarray
    top_ids: np.ndarray
    top_strs: list[list[str]]
    top_probs: np.ndarray
    stopped: str = "n"
    steering: str = ""

    @property
    def text(self) -> str:
        return "".join(self.strs)

    def __repr__(self) -> str:
        return f"Generation({self.text!r}, tokens={len(self.strs)}, stopped={self.stopped!r}, steering={self.steering or 'off'!r})"


def generate(adapter, prompt, n: int = 20, edits: dict | None = None, temperature: float = 0.0, seed: int = 0,
             k: int = 5, on_step: Callable[[int, int, str], None] | None = None,
             cancel: Callable[[], bool] | None = None, stop_at_eos: bool = True) -> Generation:
    """Continue ``prompt`` (text or token ids) by ``n`` tokens, greedily (``temperature=0``) or sampled from
    ``softmax(logits / temperature)`` with a ``torch.Generator`` seeded by ``seed``. Every step is one full
    forward pass ``adapter.run(ids, edits=edits)`` of the sequence so far. Stops early at the tokenizer's
    EOS token (``stop_at_eos``; kept as the last token). ``on_step(i, n, token_str)`` after each step;
    ``cancel()`` is polled before and during each pass (True: :class:`~mechviz.models.base.Aborted`).
    A prompt plus ``n`` longer than ``adapter.max_len`` is an error (nothing is cut)."""
    n, k = positive_int(n, "n"), positive_int(k, "k")
    temperature = float(temperature)
    if not np.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    ids = adapter.to_tokens(prompt)
    limit = adapter.max_len
    if limit is not None and len(ids) + n > limit:
        raise ValueError(f"the prompt is {len(ids)} tokens and {n} more would make {len(ids) + n}, over "
                         f"{adapter.name}'s {limit}: ask for n <= {max(0, limit - len(ids))} or shorten the prompt")
    eos = getattr(adapter.tokenizer, "eos_token_id", None) if stop_at_eos else None
    gen = torch.Generator().manual_seed(int(seed)) if temperature > 0 else None
    k = min(k, adapter.d_vocab)
    prompt_ids, chosen, probs, top_i, top_p, stopped = ids.clone(), [], [], [], [], "n"
    for i in range(n):
        if cancel is not None and cancel():
            raise Aborted()
        logits = adapter.run(ids, edits=edits, abort=cancel).logits[-1].float().cpu()
        p = torch.softmax(logits, -1)
        if gen is None:
            tok = int(torch.argmax(logits))
        else:
            tok = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen))
        tp, ti = torch.topk(p, k)
        chosen.append(tok), probs.append(float(p[tok])), top_i.append(ti.numpy()), top_p.append(tp.numpy())
        ids = torch.cat([ids, torch.tensor([tok])])
        if on_step is not None:
            on_step(i + 1, n, adapter.to_str_tokens(torch.tensor([tok]))[0])
        if eos is not None and tok == eos:
            stopped = "eos"
            break
    top_ids = np.array(top_i, np.int64).reshape(len(chosen), k)
    strs = adapter.to_str_tokens(torch.tensor(chosen + top_ids.ravel().tolist(), dtype=torch.long))
    m = len(chosen)
    return Generation(prompt_ids=prompt_ids.numpy(), prompt_strs=adapter.to_str_tokens(prompt_ids),
                      ids=np.array(chosen, np.int64), strs=strs[:m], probs=np.array(probs, np.float32),
                      top_ids=top_ids, top_strs=[strs[m + j * k: m + (j + 1) * k] for j in range(m)],
                      top_probs=np.array(top_p, np.float32).reshape(m, k), stopped=stopped)


def steered_generation(adapter, sae: SAE, prompt, specs, n: int = 20, positions=None, *, temperature: float = 0.0,
                       seed: int = 0, k: int = 5, on_step=None, cancel=None, stop_at_eos: bool = True,
                       allow_model_mismatch: bool = False) -> tuple[Generation, Generation]:
    """``(unsteered, steered)`` continuations of ``prompt`` (same ``n``, ``seed``, ``temperature``): the
    second with the features of ``specs`` steered jointly (:func:`steering_edits`) at ``positions``
    (``None``/``"all"``: every position, generated ones included; prompt indices or ``"prompt"``: only
    those). ``on_step(i, 2 * n, token)`` counts both runs' steps."""
    check_sae_fits(sae, adapter, allow_model_mismatch=allow_model_mismatch)
    checked = steering_specs(sae, specs)
    T0 = len(adapter.to_tokens(prompt))
    edits = steering_edits(sae, checked, positions, n_prompt=T0)
    n = positive_int(n, "n")
    step = (lambda off: (lambda i, _n, s: on_step(off + i, 2 * n, s))) if on_step else (lambda off: None)
    args = dict(n=n, temperature=temperature, seed=seed, k=k, cancel=cancel, stop_at_eos=stop_at_eos)
    base = generate(adapter, prompt, on_step=step(0), **args)
    steered = generate(adapter, prompt, edits=edits, on_step=step(n), **args)
    steered.steering = _label(checked) + ("" if _every(positions) else " (prompt positions only)")
    return base, steered


@dataclass
class Sweep:
    """A metric of the next-token distribution at the prompt's last position against the steering value:
    ``values`` float64 ``[V]``, ``metric`` float32 ``[V]``; ``top_strs[i]`` the most likely next token at
    ``values[i]``. ``metric_name``: ``"kl"`` (KL(unsteered || steered), nats), ``"target_prob"`` (the
    probability of ``target``) or the callable's name."""

    feature: int
    mode: str
    values: np.ndarray
    metric: np.ndarray
    metric_name: str
    top_strs: list[str] = field(default_factory=list)
    target: str | None = None

    @property
    def label(self) -> str:
        return {"kl": "KL(unsteered ‖ steered)", "target_prob": f"p({self.target!r})"}.get(self.metric_name,
                                                                                            self.metric_name)

    def figure(self, current: float | None = None):
        """A matplotlib Figure: metric against the steering value (``current`` marked); ``savefig`` keeps
        every label (constrained layout)."""
        from .figures import _figure, fit

        fig = _figure(4.8, 3.0)
        ax = fig.add_subplot()
        ax.plot(self.values, self.metric, marker="o", color="#2563eb")
        if current is not None:
            ax.axvline(float(current), color="#f59e0b", lw=1.5, label=f"current {float(current):g}")
            ax.legend(loc="best", fontsize=8)
        ax.set_xlabel(f"feature {self.feature}: {'clamp value' if self.mode == 'clamp' else 'scale'}")
        ax.set_ylabel(self.label)
        ax.set_title(f"feature {self.feature}: next token after the prompt", fontsize=10)
        return fit(fig)


def strength_sweep(adapter, sae: SAE, prompt, feature: int, values, mode: str = "clamp", metric="kl", target=None,
                   positions=None, cancel=None, allow_model_mismatch: bool = False) -> Sweep:
    """For each of ``values``, one forward pass of ``prompt`` with ``feature`` clamped to (or scaled by) it
    (the unsteered pass once, for all): ``metric`` at the last position, ``"kl"`` = KL(unsteered ||
    steered) of the next-token distribution, ``"target_prob"`` = the steered probability of ``target`` (a
    token id or one-token text), or a callable ``metric(steered_logits, base_logits) -> float`` of the
    last position's logits (float32 ``[vocab]`` tensors)."""
    check_sae_fits(sae, adapter, allow_model_mismatch=allow_model_mismatch)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if not values.size:
        raise ValueError("give at least one steering value to sweep")
    if callable(metric):
        fn, name = metric, getattr(metric, "__name__", "metric")
    elif metric in METRICS:
        name = metric
        if metric == "target_prob":
            if target is None:
                raise ValueError("metric='target_prob' needs target= (a token id or one-token text)")
            tid = token_id(adapter, target, "target")
            fn = lambda s, b: float(torch.softmax(s, -1)[tid])  # noqa: E731
        else:
            fn = lambda s, b: float((torch.softmax(b, -1) * (torch.log_softmax(b, -1) - torch.log_softmax(s, -1))).sum())  # noqa: E731
    else:
        raise ValueError(f"metric must be one of {METRICS} or a callable, got {metric!r}")
    specs = [steering_specs(sae, [(feature, v, mode)])[0] for v in values]   # every value checked first
    ids = adapter.to_tokens(prompt)
    base = adapter.run(ids, abort=cancel).logits[-1].float().cpu()
    out, tops = [], []
    for s in specs:
        logits = adapter.run(ids, edits=steering_edits(sae, [s], positions, n_prompt=len(ids)),
                             abort=cancel).logits[-1].float().cpu()
        out.append(fn(logits, base))
        tops.append(int(torch.argmax(logits)))
    return Sweep(feature=specs[0].feature, mode=mode, values=values, metric=np.asarray(out, np.float32),
                 metric_name=name, top_strs=adapter.to_str_tokens(torch.tensor(tops, dtype=torch.long)),
                 target=None if target is None or name != "target_prob" else str(target))


def sweep_values(value: float, mode: str = "clamp", count: int = 9) -> np.ndarray:
    """A default sweep around ``value``: ``count`` evenly spaced from 0 to ``2 * value`` (``value`` among
    them when ``count`` is odd); for a value of 0, 0 to 10 (clamp) or 0 to 2 (scale)."""
    v = float(value) or (10.0 if mode == "clamp" else 1.0)
    return np.linspace(0.0, 2.0 * v, positive_int(count, "count"))


def neuronpedia_url(sae: SAE, feature: int) -> str | None:
    """The feature's Neuronpedia page, from the SAE's ``neuronpedia_id`` (e.g. ``"gpt2-small/0-res-jb"``
    -> ``https://www.neuronpedia.org/gpt2-small/0-res-jb/{feature}``); None without an id. A link only.

    >>> from mechviz.saes import SAE
    >>> sae = SAE(W_enc=torch.zeros(4, 8), b_enc=torch.zeros(8), W_dec=torch.zeros(8, 4), b_dec=torch.zeros(4),
    ...           neuronpedia_id="gpt2-small/0-res-jb")
    >>> neuronpedia_url(sae, 5)
    'https://www.neuronpedia.org/gpt2-small/0-res-jb/5'
    """
    nid = (getattr(sae, "neuronpedia_id", None) or "").strip().strip("/")
    if not nid:
        return None
    if isinstance(feature, bool) or not isinstance(feature, (int, np.integer)) or not 0 <= int(feature) < sae.d_sae:
        raise ValueError(f"feature {feature!r} is not an id of this SAE (0..{sae.d_sae - 1})")
    from urllib.parse import quote

    return f"https://www.neuronpedia.org/{quote(nid, safe='/-_.')}/{int(feature)}"
