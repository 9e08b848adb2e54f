"""What every model adapter shares: the :class:`Run` it returns and the :class:`ModelAdapter` interface."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from .sites import SITES, Site, SiteError, parse_sites


class UnsupportedModelError(TypeError):
    """The model's architecture has no adapter map."""


class PromptError(ValueError):
    """A prompt the model cannot run: empty, longer than its context, holding characters that are not
    text (lone surrogates, control characters), or token ids that are not whole numbers in the vocabulary."""


class Aborted(Exception):
    """Raised inside a forward pass when its result is no longer wanted (a newer prompt arrived)."""


@dataclass
class Run:
    """One forward pass over one prompt.

    ``tokens``: int64 ``[T]``; ``token_strs``: the text of each token; ``logits``: float32
    ``[T, vocab]``; ``cache``: ``{"<site>.<layer>": tensor}`` holding exactly the sites asked for
    (shapes in :mod:`mechviz.models.sites`, no batch axis), detached, on the CPU.
    """

    prompt: str
    tokens: torch.Tensor
    token_strs: list[str]
    logits: torch.Tensor
    cache: dict[str, torch.Tensor] = field(default_factory=dict)

    def __getitem__(self, site: str) -> torch.Tensor:
        try:
            return self.cache[site]
        except KeyError:
            raise KeyError(f"{site!r} was not captured in this run; captured: {sorted(self.cache)}") from None

    def stack(self, name: str) -> torch.Tensor:
        """All captured layers of one site stacked on a new leading axis, e.g. ``[L, H, T, T]``. When
        the adapter captured them into one stack (attention patterns) and the cache holds its slices in
        order, that stack itself (no copy: writing to it writes the cache)."""
        layers = sorted(int(k.split(".")[1]) for k in self.cache if k.split(".")[0] == name)
        if not layers:
            raise KeyError(f"site {name!r} was not captured; captured: {sorted(self.cache)}")
        parts = [self.cache[f"{name}.{lay}"] for lay in layers]
        first, n = parts[0], parts[0].numel()
        if all(p.is_contiguous() and p.shape == first.shape and p.device == first.device
               and p.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
               and p.storage_offset() == first.storage_offset() + i * n for i, p in enumerate(parts)):
            return first.as_strided((len(parts), *first.shape), (n, *first.stride()), first.storage_offset())
        return torch.stack(parts)

    def __repr__(self) -> str:
        return (f"Run(prompt={self.prompt!r}, n_tokens={len(self.token_strs)}, "
                f"captured={sorted(self.cache, key=lambda s: (int(s.split('.')[1]), s))})")


# Characters a prompt may not hold: C0 controls but tab, newline and carriage return; DEL; and the C1
# controls U+0080..U+009F. U+0085 (NEL) is refused too: in a Python string it nearly always is a
# Windows-1252 ellipsis decoded as Latin-1, not an intended line break (write "\n" for one).
_ALLOWED_CONTROLS = frozenset("\t\n\r")
_CONTROL_NAMES = {0x00: "NUL", 0x07: "BEL", 0x08: "BS", 0x0B: "VT", 0x0C: "FF", 0x1B: "ESC", 0x7F: "DEL",
                  0x85: "NEL"}


def _is_control(c: str) -> bool:
    o = ord(c)
    return (o < 0x20 and c not in _ALLOWED_CONTROLS) or 0x7F <= o <= 0x9F


def _control_message(prompt: str, i: int) -> str:
    """Why a prompt with a control character at ``i`` is refused, and what to do.

    >>> print(_control_message("cat\\x1b[0m", 3))
    the prompt holds a control character (U+001B ESC) at character 3, which is not visible text: remove it (tabs and newlines are fine)
    """
    o = ord(prompt[i])
    name = f" {_CONTROL_NAMES[o]}" if o in _CONTROL_NAMES else ""
    hint = " (tabs and newlines are fine)"
    if 0x80 <= o <= 0x9F:
        hint = " (it often comes from Windows-1252 text decoded as Latin-1: decode it as cp1252)"
    return (f"the prompt holds a control character (U+{o:04X}{name}) at character {i}, which is not visible "
            f"text: remove it{hint}")


def _finite(x: torch.Tensor) -> bool:
    """Every value of ``x`` finite. A NaN or inf makes the sum NaN or inf, so a finite sum proves it in one
    pass with no [numel] temporary (the attention stack at 2,048 tokens is 2.4 GB); only a sum that
    overflows from finite values needs the elementwise check.

    >>> _finite(torch.tensor([1.0, 3e38, 3e38])), _finite(torch.tensor([1.0, float("nan")]))
    (True, False)
    """
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def _check_finite(logits: torch.Tensor, cache: dict, sites: list[Site], edited: bool) -> None:
    """A run whose numbers are not all finite is an error naming where it starts, never a view of NaNs."""
    bad = next((str(s) for s in sites if not _finite(cache[str(s)])), None)
    if bad is None and _finite(logits):
        return
    where = f"first at site {bad}" if bad else "in the logits (after every captured site)"
    cause = " with edits applied (a steering value can overflow the model)" if edited else ""
    raise FloatingPointError(f"the model's activations contain NaN or inf, {where}{cause}: its weights or inputs "
                             "overflow; nothing computed from this run is shown")


class StopForward(Exception):
    """Raised by a hook once the last block has run, so the pass skips the final norm and unembedding."""


@dataclass
class Edit:
    """One activation edit in a batched patched pass: ``act[rows, pos, heads] = values``.

    ``site`` is the Site to edit (a per-head site is indexed ``[row, pos, head]``, any other
    ``[row, pos]``); ``rows``, ``pos`` (absolute token positions) and ``heads`` (None for sites
    without a head axis) are int64 ``[n]``; ``values`` is ``[n, d]`` or ``[n, d_head]``. Setting
    ``resid_mid`` is done by changing ``attn_out`` so that ``resid_pre + attn_out`` takes the value
    (in a sequential block that is also what the MLP reads).
    """

    site: Site
    rows: torch.Tensor
    pos: torch.Tensor
    heads: torch.Tensor | None
    values: torch.Tensor

    def index(self, start_pos: int) -> tuple:
        idx = (self.rows, self.pos - start_pos)
        return idx if self.heads is None else idx + (self.heads,)

    def apply(self, act: torch.Tensor, start_pos: int) -> None:
        """Write the values into ``act`` (``[B, T - start_pos, ...]``, edited in place)."""
        act[self.index(start_pos)] = self.values.to(act.device, act.dtype)

    def apply_resid_mid(self, attn_out: torch.Tensor, resid_pre: torch.Tensor, start_pos: int) -> None:
        """Set ``resid_pre + attn_out`` to the values by editing ``attn_out`` in place."""
        idx = self.index(start_pos)
        attn_out[idx] = self.values.to(attn_out.device, attn_out.dtype) - resid_pre[idx]


class ModelAdapter:
    """One interface over HuggingFace and TransformerLens models.

    Subclasses set the shape attributes and implement :meth:`_forward`. The adapter never changes
    what the model computes: hooks only read (and can abort a pass that is no longer wanted).
    """

    name: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_vocab: int
    max_len: int | None
    tokenizer = None
    prepend_bos: bool = True

    # -- tokenisation -------------------------------------------------------------------------
    def bos_id(self) -> int | None:
        tok = self.tokenizer
        if tok is None:
            return None
        bos = getattr(tok, "bos_token_id", None)
        return bos if bos is not None else getattr(tok, "eos_token_id", None)

    def to_tokens(self, prompt: str | Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Token ids ``[T]`` for a prompt (BOS prepended when the model has one, as TransformerLens
        does); ids passed in are used as they are."""
        if isinstance(prompt, torch.Tensor):
            if prompt.dtype == torch.bool or prompt.is_floating_point() or prompt.is_complex():
                raise PromptError(f"token ids must be integers, got a {prompt.dtype} tensor: pass a tensor of "
                                  "dtype torch.long (ids are never rounded)")
            ids = prompt.reshape(-1).long()
        elif isinstance(prompt, str):
            if not prompt.strip():
                raise PromptError("the prompt is empty: type some text to run the model on")
            bad = next((i for i, c in enumerate(prompt) if 0xD800 <= ord(c) <= 0xDFFF), None)
            if bad is not None:
                raise PromptError(f"the prompt holds a lone surrogate (U+{ord(prompt[bad]):04X}) at character {bad}, "
                                  "which is not text: remove it (it often comes from a broken copy of an emoji)")
            bad = next((i for i, c in enumerate(prompt) if _is_control(c)), None)
            if bad is not None:
                raise PromptError(_control_message(prompt, bad))
            if self.tokenizer is None:
                raise PromptError("this model has no tokenizer: pass token ids instead of text")
            # verbose=False: the tokenizer's own max length is not the model's (checked below, with a message)
            ids_list = list(self.tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"])
            bos = self.bos_id()
            if self.prepend_bos and bos is not None:
                ids_list = [bos] + ids_list
            ids = torch.tensor(ids_list, dtype=torch.long)
        else:
            ids = list(prompt)
            bad = next((i for i, t in enumerate(ids) if isinstance(t, bool) or not isinstance(t, (int, np.integer))), None)
            if bad is not None:
                raise PromptError(f"token ids must be whole numbers, got {ids[bad]!r} at position {bad}: pass ints "
                                  "(ids are never rounded), or pass the prompt as text")
            ids = torch.tensor([int(t) for t in ids], dtype=torch.long)
        if ids.numel() == 0:
            raise PromptError("the prompt has no tokens")
        if self.max_len is not None and ids.numel() > self.max_len:
            start = " (counting the start token the model prepends)" if isinstance(prompt, str) and self.prepend_bos \
                and self.bos_id() is not None else ""
            raise PromptError(
                f"the prompt is {ids.numel()} tokens long{start} but {self.name} takes at most "
                f"{self.max_len}: shorten it"
            )
        if int(ids.min()) < 0 or int(ids.max()) >= self.d_vocab:
            raise PromptError(f"token ids must lie in [0, {self.d_vocab}); got {ids.min()}..{ids.max()}")
        return ids

    def to_str_tokens(self, ids: torch.Tensor) -> list[str]:
        """The text of each token (undecodable bytes shown as U+FFFD)."""
        if self.tokenizer is None:
            return [str(int(i)) for i in ids]
        return [self.tokenizer.decode([int(i)]) for i in ids]

    # -- running ------------------------------------------------------------------------------
    def run(self, prompt, capture=(), abort: Callable[[], bool] | None = None,
            edits: dict | None = None) -> Run:
        """One forward pass; returns a :class:`Run` holding only the sites in ``capture``.

        ``abort``, if given, is polled before each block; when it returns True the pass stops by
        raising :class:`Aborted`. ``edits`` maps single-layer sites to functions that take the
        site's activation (shape as in :mod:`~mechviz.models.sites`, no batch axis) and return the
        replacement, e.g. ``{"resid_post.1": lambda x: x + 4 * direction}`` (steering); captured
        sites then show the edited values. Without ``edits`` hooks only read.

        >>> run = adapter.run("Hello world", capture=["attn_pattern.0"])   # doctest: +SKIP
        >>> run["attn_pattern.0"].shape                                    # doctest: +SKIP
        torch.Size([12, 3, 3])
        """
        sites = parse_sites(capture, self.n_layers) if capture else []
        edit_fns = {}
        for key, fn in (edits or {}).items():
            if isinstance(key, str) and "." not in key:
                raise SiteError(f"edit site {key!r} needs a layer, e.g. '{key}.0'")
            (site,) = parse_sites(key, self.n_layers)
            edit_fns[site] = fn
        ids = self.to_tokens(prompt)
        with torch.inference_mode():
            logits, cache = self._forward(ids, sites, abort, edit_fns)
        _check_finite(logits, cache, sites, edited=bool(edit_fns))
        text = prompt if isinstance(prompt, str) else ""
        return Run(prompt=text, tokens=ids, token_strs=self.to_str_tokens(ids),
                   logits=logits.float(), cache=cache)

    def _forward(self, ids: torch.Tensor, sites: list[Site], abort, edits) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def capture_batch(self, ids: torch.Tensor, site: str) -> torch.Tensor:
        """One site's activations for a batch of equal-length token rows ``ids`` ``[B, T]``: ``[B, T, ...]``
        (site shape as in :mod:`~mechviz.models.sites`), detached, on the model's device. Backends that can
        stop the pass once the site is computed do (nothing after the site's block runs); this default runs
        :meth:`run` row by row. No BOS is added: the rows are used as they are."""
        ids = torch.as_tensor(ids).long()
        if ids.ndim != 2:
            raise PromptError(f"capture_batch takes token ids [B, T], got shape {tuple(ids.shape)}")
        return torch.stack([self.run(row, capture=[site])[site] for row in ids])

    def final_norm(self, resid: torch.Tensor) -> torch.Tensor:
        """The model's own final normalisation, applied as the model applies it (``[..., d]``)."""
        raise NotImplementedError

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised residual ``[..., d]`` to logits ``[..., vocab]`` (the model's own unembedding)."""
        raise NotImplementedError

    def unembed_linear(self, x: torch.Tensor) -> torch.Tensor:
        """The unembedding as a linear map (no final soft-cap): what logit weights of a direction and
        direct logit attribution decompose. Equal to :meth:`unembed` for models without a soft-cap."""
        return self.unembed(x)

    def logits_of(self, resid: torch.Tensor) -> torch.Tensor:
        """Logits the model would output if ``resid`` were its final residual stream (logit lens)."""
        with torch.inference_mode():
            return self.unembed(self.final_norm(resid)).float()

    def logits_into(self, resid: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """:meth:`logits_of` ``resid`` ``[n, d]`` written into ``out`` (float32 ``[n, vocab]``, on the
        CPU): the logit lens reuses one buffer for every row. Backends with a plain linear head
        write it with no temporary; this default copies."""
        return out.copy_(self.logits_of(resid))

    # -- batched patched passes (the activation-patching engine) --------------------------------
    def patch_base(self, ids: torch.Tensor):
        """One pass over ``ids`` ``[T]`` at batch size 1, keeping what :meth:`forward_from` needs to
        resume it at any layer and position (keys/values per layer, and for some backends the
        residual stream entering each block)."""
        raise NotImplementedError

    def forward_from(self, base, n_rows: int, edits: Sequence[Edit], start_layer: int = 0,
                     start_pos: int = 0, abort: Callable[[], bool] | None = None,
                     keep: Sequence[int] | None = None) -> torch.Tensor:
        """``n_rows`` copies of the ``base`` pass, each with its own :class:`Edit` s, computed only from
        block ``start_layer`` and token ``start_pos`` on (earlier layers cannot see an edit at
        ``start_layer``; earlier positions cannot see one at ``start_pos`` in a causal model, so
        their keys and values are reused from ``base``). Every edit must lie at or after
        ``(start_layer, start_pos)``. Returns the final residual stream (before the final norm)
        ``[n_rows, T - start_pos, d]``. ``abort`` is polled before each block, as in :meth:`run`.
        ``keep``: if given, only these (absolute) positions of the result will be read, and an
        adapter may skip work for the others in the last block (their values are then undefined)."""
        raise NotImplementedError

    def grad_run(self, ids: torch.Tensor, sites: Sequence[Site],
                 objective: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Forward ``ids`` ``[N, T]`` to the final residual stream ``[N, T, d]``, then backward
        ``objective(final_resid)`` (a scalar). Returns ``{"<site>.<layer>": (activation, gradient)}``
        with the batch axis kept, detached, float32, on the CPU. The gradient of ``resid_mid`` is
        that of ``attn_out`` (``resid_mid = resid_pre + attn_out``)."""
        raise NotImplementedError

    def attn_out_of_z(self, layer: int, z: torch.Tensor) -> torch.Tensor | None:
        """Block ``layer``'s attention output for per-head outputs ``z`` ``[N, H, d_head]`` (its output
        projection): ``[N, d]``; None where this backend cannot compute it on its own."""
        return None

    def attn_out_nonlinear(self) -> str | None:
        """Why a block's attention output is not linear in ``z`` (a norm applied after the output projection),
        or None when ``attn_out = sum_h z_h W_O[h] + b_O`` (per-head logit attribution is then exact)."""
        return None

    def pos_embed(self, n: int) -> torch.Tensor | None:
        """The learned positional embedding of positions ``0..n-1`` added to the residual stream before block 0
        (GPT-2): float32 ``[n, d]`` on the CPU; None where positions are not an additive embedding (rotary)."""
        return None

    def finish_block(self, layer: int, resid_pre: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor | None:
        """The rest of block ``layer`` once its attention output is known, token by token:
        ``resid_post`` ``[N, d]`` from ``resid_pre`` and ``attn_out`` ``[N, d]`` (the MLP reads
        ``resid_pre + attn_out``, or ``resid_pre`` in a parallel block). A patch after the attention
        of block ``layer`` at one position changes only that position's ``resid_post``, so patching
        can start at block ``layer + 1``. None where this backend cannot compute it on its own."""
        return None

    def unembed_tokens(self, x: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
        """``unembed(x)[..., token_ids]`` computed for those vocabulary rows only."""
        return self.unembed(x)[..., list(token_ids)]

    @property
    def sites(self) -> list[str]:
        """Every site name this adapter can capture."""
        return list(SITES)

    def __repr__(self) -> str:
        gqa = f", n_kv_heads={self.n_kv_heads}" if self.n_kv_heads != self.n_heads else ""
        return (f"{type(self).__name__}({self.name}: n_layers={self.n_layers}, n_heads={self.n_heads}{gqa}, "
                f"d_model={self.d_model}, d_vocab={self.d_vocab})")
