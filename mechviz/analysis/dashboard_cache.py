"""The array core of :func:`mechviz.analysis.dashboards.feature_dashboards`: the corpus as token rows, the
per-feature accumulator, the row-wise logit-effect helpers, and the resumable on-disk cache (numpy ``.npz`` + JSON,
never pickle).

One pass over the corpus in batches of rows; each batch's SAE activations ``[B, T, F]`` are folded into
fixed-size per-feature state and dropped (no ``[N_tokens, d_sae]`` matrix is ever kept):

* counts: tokens seen (``n_tokens``), tokens where the feature is > 0 (``n_active``), the sum of its
  activations (float64, for the mean activation when active);
* ``hist``: counts of positive activations in fixed log-spaced bins, :data:`HIST_PER_DECADE` per decade
  from 1e-3 to 1e4 (the first bin also holds (0, 1e-3), the last everything >= its lower edge);
* top-``k``: the ``k`` largest positive activations, ties broken by the earlier token (global index
  ``row * T + pos``), with the feature's activations over the token window around each;
* interval samples: activations binned into :data:`INTERVALS_PER_DECADE` log intervals per decade (each
  a union of histogram bins); in each, the ``q`` tokens whose hash key (:func:`token_keys`, a bijective
  mix of the token's global index) is smallest: a uniform sample, the same whatever the batching.

Every rule is a function of the activations and token indices only, so an interrupted run resumed from
its last saved state gives exactly the arrays of an uninterrupted one (the batches are the same rows).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

#: histogram bins per decade, and the edges (1e-3 .. 1e4): bin j holds [edge j, edge j+1), bin 0 also
#: (0, 1e-3) and the last bin everything above
HIST_PER_DECADE = 8
HIST_EDGES = 10.0 ** (np.arange(-3 * HIST_PER_DECADE, 4 * HIST_PER_DECADE + 1) / HIST_PER_DECADE)
N_HIST = len(HIST_EDGES) - 1
#: interval-sample groups per decade (each is HIST_PER_DECADE // INTERVALS_PER_DECADE histogram bins)
INTERVALS_PER_DECADE = 2
HIST_PER_INTERVAL = HIST_PER_DECADE // INTERVALS_PER_DECADE
N_INTERVALS = N_HIST // HIST_PER_INTERVAL
INTERVAL_EDGES = HIST_EDGES[::HIST_PER_INTERVAL]
#: bump when a rule above changes: cached results of another version are never read
VERSION = 1
_INNER = torch.from_numpy(HIST_EDGES[1:-1].astype(np.float32))
_EMPTY_KEY = np.iinfo(np.int64).max


def hist_bins(acts: np.ndarray | torch.Tensor):
    """The histogram bin of each (positive) activation: the number of inner edges <= it."""
    if isinstance(acts, torch.Tensor):
        return torch.bucketize(acts, _INNER, right=True)
    return np.searchsorted(HIST_EDGES[1:-1].astype(np.float32), np.asarray(acts, np.float32), side="right")


def token_keys(g) -> np.ndarray:
    """The sampling key (int64 >= 0) of tokens with global indices ``g``: splitmix64, a bijection on
    64 bits, shifted to 63 (the interval samples keep the smallest keys; ties, never seen, go to the
    earlier token)."""
    z = np.asarray(g, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return ((z ^ (z >> np.uint64(31))) >> np.uint64(1)).astype(np.int64)


# -------------------------------------------------------------------------------------------- corpus
def corpus_rows(adapter, corpus, seq_len: int) -> np.ndarray:
    """The corpus as int64 token rows ``[S, T]``.

    Texts (an iterable of strings, or one string) are tokenised without special tokens, joined by the
    model's BOS/EOS token and cut into rows of ``seq_len - 1`` tokens, each prefixed with BOS (``seq_len``
    without one); a last partial row is dropped, unless it is the only one. Token ids (a 2-D tensor or
    array, or an iterable of equal-length id sequences) are used as they are."""
    if isinstance(corpus, str):
        corpus = [corpus]
    if isinstance(corpus, (torch.Tensor, np.ndarray)):
        rows = np.asarray(corpus.cpu() if isinstance(corpus, torch.Tensor) else corpus)
        if rows.ndim == 1:
            rows = rows[None]
    else:
        items = list(corpus)
        if not items:
            raise ValueError("the corpus is empty")
        if all(isinstance(t, str) for t in items):
            return _pack_texts(adapter, items, seq_len)
        if any(isinstance(t, str) for t in items):
            raise TypeError("a corpus is either all strings or all token-id sequences, not a mix")
        rows = [np.asarray(t.cpu() if isinstance(t, torch.Tensor) else t).reshape(-1) for t in items]
        if len({len(r) for r in rows}) != 1:
            raise ValueError("token-id rows must all have the same length (pack them, or pass texts)")
        rows = np.stack(rows)
    if rows.ndim != 2 or rows.size == 0 or rows.dtype.kind not in "iu":
        raise ValueError(f"token ids must be a non-empty integer [B, T] array, got {rows.dtype} {rows.shape}")
    if rows.min() < 0 or rows.max() >= adapter.d_vocab:
        raise ValueError(f"token ids must lie in [0, {adapter.d_vocab})")
    return np.ascontiguousarray(rows, dtype=np.int64)


def _pack_texts(adapter, texts: list[str], seq_len: int) -> np.ndarray:
    tok = adapter.tokenizer
    if tok is None:
        raise ValueError("this model has no tokenizer: pass the corpus as token ids")
    bos = adapter.bos_id() if adapter.prepend_bos else None
    sep = adapter.bos_id()
    stream: list[int] = []
    for i, ids in enumerate(tok(texts, add_special_tokens=False, verbose=False)["input_ids"]):
        if i and sep is not None:
            stream.append(sep)
        stream.extend(ids)
    width = seq_len - (bos is not None)
    if width < 1:
        raise ValueError(f"seq_len={seq_len} leaves no room for text")
    n = max(1, len(stream) // width)
    body = np.asarray(stream[: n * width], dtype=np.int64)
    if body.size < n * width:  # a corpus shorter than one row: one shorter row
        width = body.size
    body = body.reshape(n, width)
    return body if bos is None else np.concatenate([np.full((n, 1), bos, np.int64), body], 1)


# ------------------------------------------------------------------------------------ fingerprints
def _digest(h, t: torch.Tensor, max_elems: int | None = None) -> None:
    t = t.detach().reshape(-1)
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if max_elems is not None and t.numel() > max_elems:
        t = t[:: t.numel() // max_elems][:max_elems]
    h.update(t.float().cpu().numpy().tobytes())


def model_fingerprint(adapter) -> str:
    """The model's identity: its name, every parameter's name and shape, and the values of its first,
    middle and last parameters (up to 65,536 evenly spaced values each): cheap on any size of model."""
    h = hashlib.sha256(f"{type(adapter).__name__}:{adapter.name}".encode())
    model = getattr(adapter, "model", None)
    params = list(model.named_parameters()) if model is not None else []
    for name, p in params:
        h.update(f"{name}{tuple(p.shape)}".encode())
    for i in sorted({0, len(params) // 2, len(params) - 1} if params else ()):
        _digest(h, params[i][1], 65536)
    return h.hexdigest()


def sae_fingerprint(sae) -> str:
    """The SAE's identity: all its weights, its encoder rule and its site."""
    h = hashlib.sha256(repr((sae.architecture, sae.k, sae.apply_b_dec_to_input, sae.rescale_acts_by_decoder_norm,
                             sae.normalize, sae.site)).encode())
    for t in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, sae.threshold):
        if t is not None:
            _digest(h, t)
    return h.hexdigest()


def cache_key(adapter, sae, rows: np.ndarray, params: dict) -> str:
    h = hashlib.sha256(json.dumps({"version": VERSION, "model": model_fingerprint(adapter),
                                   "sae": sae_fingerprint(sae), "params": params}, sort_keys=True).encode())
    h.update(np.ascontiguousarray(rows, np.int64).tobytes())
    h.update(str(rows.shape).encode())
    return h.hexdigest()[:32]


# ------------------------------------------------------------------------------------- accumulator
class Accumulator:
    """Per-feature state folded over batches (see the module docstring). ``state`` is a dict of numpy
    arrays (plus ``next_row``), replaced whole after each batch, so it is always consistent."""

    def __init__(self, n_features: int, k: int, q: int, left: int, right: int, T: int):
        self.k, self.q, self.left, self.right, self.T = k, q, left, right, T
        F, W = n_features, left + 1 + right
        self.state = {
            "next_row": np.zeros((), np.int64), "n_tokens": np.zeros((), np.int64),
            "n_active": np.zeros(F, np.int64), "act_sum": np.zeros(F, np.float64), "act_max": np.zeros(F, np.float32),
            "hist": np.zeros((F, N_HIST), np.int64),
            "top_act": np.zeros((F, k), np.float32), "top_idx": np.full((F, k), -1, np.int64),
            "top_win": np.zeros((F, k, W), np.float32),
            "iv_key": np.full((F, N_INTERVALS, q), _EMPTY_KEY, np.int64),
            "iv_idx": np.full((F, N_INTERVALS, q), -1, np.int64), "iv_act": np.zeros((F, N_INTERVALS, q), np.float32),
            "iv_win": np.zeros((F, N_INTERVALS, q, W), np.float32),
        }

    def update(self, acts: torch.Tensor, counted: torch.Tensor, row0: int) -> None:
        """Fold in ``acts`` float32 ``[B, T, F]`` of rows ``row0 ..``; ``counted`` bool ``[B, T]``: the
        positions that count (others, e.g. BOS, are zeroed in ``acts`` first and never selected)."""
        st = dict(self.state)
        B, T, F = acts.shape
        acts[~counted] = 0  # in place (only the ignored positions are touched)
        flat = acts.reshape(B * T, F)
        tn, tf = (flat > 0).nonzero(as_tuple=True)  # the positive entries: everything below reads only these
        vals = flat[tn, tf]
        bins = hist_bins(vals)
        st["n_tokens"] = st["n_tokens"] + int(counted.sum())
        st["n_active"] = st["n_active"] + torch.bincount(tf, minlength=F).numpy()
        st["act_sum"] = st["act_sum"] + torch.sum(flat, 0, dtype=torch.float64).numpy()
        st["hist"] = st["hist"] + torch.bincount(tf * N_HIST + bins, minlength=F * N_HIST).reshape(F, N_HIST).numpy()
        g0 = row0 * T
        padded = torch.nn.functional.pad(acts, (0, 0, self.left, self.right))  # [B, T + left + right, F]
        self._top(st, flat, padded, g0)
        self._intervals(st, tn, tf, vals, bins, padded, g0)
        st["next_row"] = np.asarray(row0 + B, np.int64)
        self.state = st

    def _windows(self, padded: torch.Tensor, n: np.ndarray, f: np.ndarray) -> np.ndarray:
        T = self.T
        b, p = torch.from_numpy(n // T), torch.from_numpy(n % T)
        cols = p[:, None] + torch.arange(self.left + 1 + self.right)[None, :]
        return padded[b[:, None], cols, torch.from_numpy(f)[:, None]].numpy()

    def _top(self, st, flat, padded, g0):
        k, F = self.k, flat.shape[1]
        kk = min(k, flat.shape[0])
        best = torch.topk(flat, kk, dim=0).values
        st["act_max"] = np.maximum(st["act_max"], best[0].numpy())
        thr = best[-1]  # the chunk's k-th largest per feature
        cand = (flat >= thr[None, :]) & (flat > 0)  # every entry that can enter the top k (ties included)
        tn, tf = cand.nonzero(as_tuple=True)
        n, f, act = tn.numpy(), tf.numpy(), flat[tn, tf].numpy()
        old = st["top_idx"] >= 0
        of, oslot = np.nonzero(old)
        all_f = np.concatenate([of, f])
        all_act = np.concatenate([st["top_act"][of, oslot], act])
        all_g = np.concatenate([st["top_idx"][of, oslot], g0 + n])
        order = np.lexsort((all_g, -all_act, all_f))
        rank = _rank_in_group(all_f[order])
        keep = order[rank < k]
        rk = rank[rank < k]
        kf = all_f[keep]
        win = np.zeros((len(keep), padded.shape[1] - self.T + 1), np.float32)
        from_old = keep < len(of)
        win[from_old] = st["top_win"][of[keep[from_old]], oslot[keep[from_old]]]
        new = keep[~from_old] - len(of)
        win[~from_old] = self._windows(padded, n[new], f[new])
        top_act, top_idx = np.zeros_like(st["top_act"]), np.full_like(st["top_idx"], -1)
        top_win = np.zeros_like(st["top_win"])
        top_act[kf, rk], top_idx[kf, rk], top_win[kf, rk] = all_act[keep], all_g[keep], win
        st["top_act"], st["top_idx"], st["top_win"] = top_act, top_idx, top_win

    def _intervals(self, st, tn, tf, vals, bins, padded, g0):
        q = self.q
        keys = torch.from_numpy(token_keys(g0 + tn.numpy()))
        ib = bins // HIST_PER_INTERVAL
        thr = torch.from_numpy(st["iv_key"][:, :, -1].reshape(-1))  # q-th smallest key kept so far
        cand = keys < thr[tf * N_INTERVALS + ib]
        if not bool(cand.any()):
            return
        n, f, act, b, key = (x[cand].numpy() for x in (tn, tf, vals, ib, keys))
        old = st["iv_idx"] >= 0
        of, ob, oslot = np.nonzero(old)
        all_f = np.concatenate([of, f])
        all_b = np.concatenate([ob, b])
        all_key = np.concatenate([st["iv_key"][of, ob, oslot], key])
        all_g = np.concatenate([st["iv_idx"][of, ob, oslot], g0 + n])
        all_act = np.concatenate([st["iv_act"][of, ob, oslot], act])
        order = np.lexsort((all_g, all_key, all_b, all_f))
        rank = _rank_in_group(all_f[order] * N_INTERVALS + all_b[order])
        keep, rk = order[rank < q], rank[rank < q]
        kf, kb = all_f[keep], all_b[keep]
        W = padded.shape[1] - self.T + 1
        win = np.zeros((len(keep), W), np.float32)
        from_old = keep < len(of)
        ko = keep[from_old]
        win[from_old] = st["iv_win"][of[ko], ob[ko], oslot[ko]]
        new = keep[~from_old] - len(of)
        win[~from_old] = self._windows(padded, n[new], f[new])
        out = {"iv_key": np.full_like(st["iv_key"], _EMPTY_KEY), "iv_idx": np.full_like(st["iv_idx"], -1),
               "iv_act": np.zeros_like(st["iv_act"]), "iv_win": np.zeros_like(st["iv_win"])}
        out["iv_key"][kf, kb, rk], out["iv_idx"][kf, kb, rk] = all_key[keep], all_g[keep]
        out["iv_act"][kf, kb, rk], out["iv_win"][kf, kb, rk] = all_act[keep], win
        st.update(out)


def _rank_in_group(groups_sorted: np.ndarray) -> np.ndarray:
    """Position of each element within its run of equal values (``groups_sorted`` is grouped)."""
    n = len(groups_sorted)
    if n == 0:
        return np.zeros(0, np.int64)
    start = np.r_[True, groups_sorted[1:] != groups_sorted[:-1]]
    first = np.maximum.accumulate(np.where(start, np.arange(n), 0))
    return np.arange(n) - first


# ------------------------------------------------------------------------- logit effects, by rows
def top_k_rows(x: torch.Tensor, k: int) -> np.ndarray:
    """Column ids of the ``k`` largest values of each row of ``x`` ``[R, V]``, largest first, ties to the lower
    id (``np.argsort(-row, kind="stable")[:k]``), from ``torch.topk`` plus an exact sort of the candidates."""
    kth = torch.topk(x, k, dim=1).values[:, -1:]
    r, c = (t.numpy() for t in (x >= kth).nonzero(as_tuple=True))  # k per row, more where the k-th value ties
    v = x.numpy()[r, c]
    order = np.lexsort((c, -v, r))
    rank = _rank_in_group(r[order])
    keep = order[rank < k]
    ids = np.zeros((x.shape[0], k), np.int64)
    ids[r[keep], rank[rank < k]] = c[keep]
    return ids


def histogram_rows(v: np.ndarray, lo: np.ndarray, hi: np.ndarray, n_bins: int) -> np.ndarray:
    """``np.histogram(v[i], bins=n_bins, range=(lo[i], hi[i]))[0]`` for every row of float64 ``v`` at once
    (numpy's own rule: scaled index, then corrected against the linspace edges)."""
    R = v.shape[0]
    lo_, hi_ = np.where(hi > lo, lo, lo - 0.5), np.where(hi > lo, hi, hi + 0.5)  # numpy widens an empty range
    span = (hi_ - lo_)[:, None]
    lo_, hi_, step = lo_[:, None], hi_[:, None], span / n_bins

    idx = ((v - lo_) / span * n_bins).astype(np.int64)
    idx[idx == n_bins] -= 1
    idx -= v < idx * step + lo_  # np.linspace(lo, hi, n_bins + 1)[j] is j * step + lo (its last edge: hi)
    upper = (idx + 1) * step + lo_
    upper[idx == n_bins - 1] = np.inf  # the last bin is closed: nothing moves past it
    idx += v >= upper
    flat = (idx + np.arange(R)[:, None] * n_bins).reshape(-1)
    return np.bincount(flat, minlength=R * n_bins).reshape(R, n_bins)


# -------------------------------------------------------------------------------------- on disk
class DiskCache:
    """One entry ``<cache_dir>/<key>/``: ``meta.json`` (parameters, progress, and ``runs``: the batches
    (first row of each) every call computed, the log a test can read), ``state.npz`` (the accumulator
    after the last saved batch) and, once finished, ``result.npz``. Files are written to a temporary
    name and renamed, so an interruption never leaves a torn file."""

    def __init__(self, cache_dir, key: str):
        self.dir = Path(cache_dir).expanduser() / key
        self.key = key

    def meta(self) -> dict:
        p = self.dir / "meta.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def write_meta(self, meta: dict) -> None:
        self._atomic("meta.json", lambda f: f.write(json.dumps(meta, indent=1).encode()))

    def load(self, name: str) -> dict | None:
        p = self.dir / f"{name}.npz"
        if not p.exists():
            return None
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def save(self, name: str, arrays: dict) -> None:
        self._atomic(f"{name}.npz", lambda f: np.savez(f, **arrays))

    def remove(self, name: str) -> None:
        (self.dir / f"{name}.npz").unlink(missing_ok=True)

    def _atomic(self, name: str, write) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{name}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, self.dir / name)
