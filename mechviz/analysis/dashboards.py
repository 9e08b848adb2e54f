"""Feature dashboards over a corpus, computed in the kernel (what SAEDashboard / Neuronpedia show per feature):
top activating contexts, contexts sampled across activation intervals, activation density and histogram,
and the feature's logit effects (``W_dec[f] @ W_U``: histogram, most promoted and suppressed tokens).

One streaming pass (:mod:`mechviz.analysis.dashboard_cache`): the model runs in batches only up to the SAE's
site, the SAE encodes, and per-feature state is folded in; with ``cache_dir`` the result is stored per
(model, SAE, corpus, parameters) and an interrupted run resumes where it stopped, with identical results.

>>> import mechviz, mechviz.zoo
>>> from mechviz.saes import load_sae
>>> adapter = mechviz.wrap(*mechviz.zoo.load_default_model())
>>> sae = load_sae(mechviz.zoo.SAE_DIR)
>>> dash = feature_dashboards(adapter, sae, features=range(8), progress=False)
>>> dash
Dashboards(mechviz-default · resid_post.1 · topk · 1024 features: 8 features over 66 rows x 128 tokens, ...)
>>> fd = dash.feature(3)
>>> len(fd.top.acts) <= 10, bool((fd.top.acts[:-1] >= fd.top.acts[1:]).all())
(True, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..models.base import Run
from ..saes.load import check_sae_fits
from ..saes.sae import SAE, SAEError
from .dashboard_cache import (HIST_EDGES, INTERVAL_EDGES, N_INTERVALS, Accumulator, DiskCache, cache_key,
                              corpus_rows, histogram_rows, top_k_rows)
from .features import _like_model, feature_activations, top_features


def default_corpus() -> list[str]:
    """The bundled model's held-out text: ``heldout_sample.txt`` (Brown corpus prose) and the four held-out
    Python documentation topics (``pydoc_data.topics``, every 20th, as the training script holds them
    out): about 8,500 tokens the model and SAE never saw, in both of its domains."""
    from ..zoo import DEFAULT_DIR

    texts = [(DEFAULT_DIR / "heldout_sample.txt").read_text()]
    try:
        import pydoc_data.topics as pt
    except ImportError:  # a Python built without its docs: the prose only
        return texts
    return texts + [pt.topics[k].strip() for i, k in enumerate(sorted(pt.topics)) if i % 20 == 0]


@dataclass
class Contexts:
    """Token windows around chosen activations of one feature: ``acts`` float32 ``[n]`` (the activation
    at the centre), ``rows``/``positions`` int64 ``[n]`` (where in the corpus), ``tokens`` int64
    ``[n, W]`` (-1 beyond the row's ends), ``token_strs`` and ``window_acts`` float32 ``[n, W]`` (the
    feature over the window, for highlighting; ignored positions such as BOS read 0). The centre is
    column ``left``. For an interval sample, ``lo``/``hi`` bound it and ``count`` is how many tokens of
    the corpus fall in it."""

    acts: np.ndarray
    rows: np.ndarray
    positions: np.ndarray
    tokens: np.ndarray
    token_strs: list[list[str]]
    window_acts: np.ndarray
    left: int
    lo: float = 0.0
    hi: float = float("inf")
    count: int = 0

    def __len__(self) -> int:
        return len(self.acts)

    def text(self, i: int, mark: str = "[[{}]]") -> str:
        """Window ``i`` as text with its centre token marked."""
        s = self.token_strs[i]
        return "".join(mark.format(t) if j == self.left else t for j, t in enumerate(s))


@dataclass
class FeatureDashboard:
    """Everything the dashboard shows for one feature (see :func:`feature_dashboards`)."""

    feature: int
    density: float
    mean_active: float
    max_act: float
    top: Contexts
    intervals: list[Contexts]
    hist_edges: np.ndarray
    hist_counts: np.ndarray
    promoted_ids: np.ndarray | None = None
    promoted_values: np.ndarray | None = None
    promoted_strs: list[str] = field(default_factory=list)
    suppressed_ids: np.ndarray | None = None
    suppressed_values: np.ndarray | None = None
    suppressed_strs: list[str] = field(default_factory=list)
    logit_hist_edges: np.ndarray | None = None
    logit_hist_counts: np.ndarray | None = None

    def __repr__(self) -> str:
        top = repr(self.top.text(0)) if len(self.top) else "none"
        up = f", promotes {self.promoted_strs[:5]}" if self.promoted_strs else ""
        return (f"FeatureDashboard(feature {self.feature}: density {self.density:.3%}, max {self.max_act:.3g}, "
                f"top context {top}{up})")


@dataclass
class Hits:
    """Features found by a search, best first: ``features`` int64 and ``scores`` float32 ``[n]``."""

    query: str
    features: np.ndarray
    scores: np.ndarray

    def __repr__(self) -> str:
        body = ", ".join(f"{f}: {s:.3g}" for f, s in zip(self.features.tolist(), self.scores.tolist()))
        return f"Hits({self.query}: {body})"


class Dashboards:
    """The result of :func:`feature_dashboards`: per-feature arrays over ``features`` (int64 ``[F]``,
    the SAE's feature ids), the corpus ``rows`` int64 ``[S, T]``, and the model and SAE (for searches).
    ``arrays`` holds the raw accumulated state (what the cache stores)."""

    def __init__(self, adapter, sae: SAE, rows: np.ndarray, features: np.ndarray, arrays: dict, params: dict,
                 key: str, computed: bool):
        self.adapter, self.sae, self.rows, self.features = adapter, sae, rows, features
        self.arrays, self.params, self.key, self.computed = arrays, params, key, computed
        self._col = {int(f): i for i, f in enumerate(features)}
        self._vocab: list[str] | None = None

    # -- one feature ---------------------------------------------------------------------------
    def _strs(self, ids) -> list[str]:
        if self._vocab is None:
            self._vocab = self.adapter.to_str_tokens(torch.arange(self.adapter.d_vocab))
        return ["" if i < 0 else self._vocab[i] for i in np.asarray(ids).reshape(-1).tolist()]

    def _contexts(self, g: np.ndarray, acts: np.ndarray, win: np.ndarray, **kw) -> Contexts:
        S, T = self.rows.shape
        left = self.params["left"]
        rows, pos = g // T, g % T
        cols = pos[:, None] + np.arange(win.shape[-1])[None, :] - left
        inside = (cols >= 0) & (cols < T)
        tokens = np.where(inside, self.rows[rows[:, None], np.clip(cols, 0, T - 1)], -1)
        strs = [self._strs(t) for t in tokens]
        return Contexts(acts=acts.astype(np.float32), rows=rows, positions=pos, tokens=tokens, token_strs=strs,
                        window_acts=win, left=left, **kw)

    def feature(self, feature: int) -> FeatureDashboard:
        """The :class:`FeatureDashboard` of SAE feature ``feature`` (one of :attr:`features`)."""
        if int(feature) not in self._col:
            raise KeyError(f"feature {feature} is not in these dashboards (features {_ranges(self.features)})")
        a, j = self.arrays, self._col[int(feature)]
        n_tok = max(int(a["n_tokens"]), 1)
        n_act = int(a["n_active"][j])
        ok = a["top_idx"][j] >= 0
        top = self._contexts(a["top_idx"][j][ok], a["top_act"][j][ok], a["top_win"][j][ok])
        intervals = []
        per_interval = a["hist"][j].reshape(N_INTERVALS, -1).sum(1)
        for b in range(N_INTERVALS):
            ok = a["iv_idx"][j, b] >= 0
            if ok.any():
                lo = float(INTERVAL_EDGES[b]) if b else 0.0
                hi = float(INTERVAL_EDGES[b + 1]) if b < N_INTERVALS - 1 else float("inf")
                intervals.append(self._contexts(a["iv_idx"][j, b][ok], a["iv_act"][j, b][ok], a["iv_win"][j, b][ok],
                                                lo=lo, hi=hi, count=int(per_interval[b])))
        fd = FeatureDashboard(feature=int(feature), density=n_act / n_tok,
                              mean_active=float(a["act_sum"][j] / n_act) if n_act else 0.0,
                              max_act=float(a["act_max"][j]), top=top, intervals=intervals[::-1],
                              hist_edges=HIST_EDGES, hist_counts=a["hist"][j])
        if "logit_top_ids" in a:
            lo, hi = a["logit_range"][j]
            fd.promoted_ids, fd.promoted_values = a["logit_top_ids"][j], a["logit_top_val"][j]
            fd.suppressed_ids, fd.suppressed_values = a["logit_bot_ids"][j], a["logit_bot_val"][j]
            fd.promoted_strs, fd.suppressed_strs = self._strs(fd.promoted_ids), self._strs(fd.suppressed_ids)
            fd.logit_hist_counts = a["logit_hist"][j]
            fd.logit_hist_edges = np.linspace(lo, hi, len(fd.logit_hist_counts) + 1)
        return fd

    # -- prompt-centric and search ---------------------------------------------------------------
    def _acts(self, prompt) -> tuple[list[str], np.ndarray]:
        """``prompt``: text, token ids, or a :class:`~mechviz.models.Run` that holds the SAE's site (reused)."""
        run = prompt if isinstance(prompt, Run) else self.adapter.run(prompt, capture=[self.sae.site])
        return run.token_strs, feature_activations(self.sae, run)[:, self.features]

    def prompt_features(self, prompt, n: int = 5) -> list[tuple[str, Hits]]:
        """For each token of ``prompt`` (text, ids or a :class:`~mechviz.models.Run` holding the SAE's site): the
        ``n`` features (of these dashboards) most active there,
        ``[(token, Hits), ...]``: the prompt-centric entry point into the dashboards."""
        strs, acts = self._acts(prompt)
        out = []
        for t, row in zip(strs, acts):
            idx = top_features(row[None], n)
            idx = idx[row[idx] > 0]
            out.append((t, Hits(repr(t), self.features[idx], row[idx].astype(np.float32))))
        return out

    def search_by_span(self, prompt, start: int, stop: int, n: int = 10, by: str = "mean") -> Hits:
        """The ``n`` features most active over tokens ``start:stop`` of ``prompt`` (``by`` = ``"mean"`` or
        ``"max"`` over the span; ties: lower id first)."""
        strs, acts = self._acts(prompt)
        span = acts[start:stop]
        if not len(span):
            raise ValueError(f"the span {start}:{stop} holds no tokens of the {len(strs)}-token prompt")
        idx = top_features(span, n, by=by)
        score = span.max(0) if by == "max" else span.mean(0)
        return Hits(f"{by} over {''.join(strs[start:stop])!r}", self.features[idx], score[idx].astype(np.float32))

    def _token_id(self, token) -> int:
        if isinstance(token, (int, np.integer)):
            return int(token)
        ids = self.adapter.tokenizer(token, add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"{token!r} is {len(ids)} tokens ({self._strs(ids)}): search by one token "
                             "(or by a prompt span with search_by_span)")
        return int(ids[0])

    def search_by_token(self, token, by: str = "activation", n: int = 10, batch_size: int = 32) -> Hits:
        """Features for one token (text or id). ``by="activation"``: those with the largest mean activation
        over the token's occurrences in the corpus (the rows holding it are re-run, up to the SAE's site);
        ``by="logit"``: those whose decoder direction promotes it most (``W_dec[f] @ W_U[:, token]``)."""
        t = self._token_id(token)
        if by == "logit":
            if "logit_top_ids" not in self.arrays:
                raise SAEError(f"no logit effects: the SAE's site {self.sae.site} is not d_model wide")
            d = self.sae.directions()[torch.from_numpy(self.features)].float()
            with torch.inference_mode():
                x = _like_model(self.adapter, torch.cat([d, torch.zeros_like(d[:1])]))
                out = self.adapter.unembed_tokens(x, [t]).float().cpu()[:, 0]
            score = (out[:-1] - out[-1]).numpy()
        elif by == "activation":
            counted = _counted(self.rows, self.adapter, self.params["ignore_bos"], self.params["ignore_positions"])
            hit = (self.rows == t) & counted
            rows = np.nonzero(hit.any(1))[0]
            if not rows.size:
                raise ValueError(f"token {self._strs([t])[0]!r} does not occur in the corpus")
            total = np.zeros(len(self.features), np.float64)
            for i in range(0, len(rows), batch_size):
                r = rows[i:i + batch_size]
                acts = _encode_rows(self.adapter, *_feature_encoder(self.sae, self.features), self.rows[r])
                total += acts[torch.from_numpy(hit[r])].double().sum(0).numpy()
            score = (total / hit.sum()).astype(np.float32)
        else:
            raise ValueError(f"by must be 'activation' or 'logit', got {by!r}")
        idx = top_features(score[None], n)
        return Hits(f"{by} on {self._strs([t])[0]!r}", self.features[idx], score[idx])

    def __repr__(self) -> str:
        S, T = self.rows.shape
        a = self.arrays
        dead = int((a["n_active"] == 0).sum())
        return (f"Dashboards({getattr(self.adapter, 'name', '?')} · {self.sae.site} · {self.sae.architecture} · "
                f"{self.sae.d_sae} features: {len(self.features)} features over {S} rows x {T} tokens, "
                f"{int(a['n_tokens'])} counted, {dead} never active, top {self.params['k']}, "
                f"{'computed' if self.computed else 'from cache'}; .feature(i), .search_by_token(...))")


def _ranges(ids: np.ndarray) -> str:
    ids = np.asarray(ids)
    return f"{ids.min()}..{ids.max()} ({len(ids)})" if len(ids) else "none"


def _counted(rows: np.ndarray, adapter, ignore_bos: bool, ignore_positions=()) -> np.ndarray:
    """Which tokens count: not BOS (with ``ignore_bos``) and not at ``ignore_positions``."""
    bos = adapter.bos_id() if ignore_bos else None
    counted = np.ones(rows.shape, bool) if bos is None else rows != bos
    counted[:, list(ignore_positions)] = False
    return counted


def _feature_encoder(sae: SAE, features: np.ndarray) -> tuple[SAE, np.ndarray | None]:
    """``(encoder, columns)``: an SAE whose ``encode`` gives ``features``' activations, and the columns of its
    output to keep (None: all). ReLU and JumpReLU features are each a function of their own encoder row, so
    the encoder is cut to ``features`` (a subset costs its share of the encoding); TopK needs every feature."""
    if len(features) == sae.d_sae and (features == np.arange(sae.d_sae)).all():
        return sae, None
    if sae.architecture == "topk":
        return sae, features
    idx = torch.from_numpy(features).to(sae.W_enc.device)
    sub = replace(sae, W_enc=sae.W_enc[:, idx], b_enc=sae.b_enc[idx], W_dec=sae.W_dec[idx],
                  threshold=None if sae.threshold is None else sae.threshold[idx])
    return sub, None


def _encode_rows(adapter, sae: SAE, columns: np.ndarray | None, rows: np.ndarray) -> torch.Tensor:
    """The SAE's activations (``columns`` of them; None: all) on token rows ``[B, T]``: float32
    ``[B, T, F]`` on the CPU."""
    x = adapter.capture_batch(torch.from_numpy(rows), sae.site)
    x = x.to(sae.W_enc.device, sae.W_enc.dtype)
    acts = sae.encode(x.reshape(-1, *x.shape[2:]))
    if columns is not None:
        acts = acts[:, torch.from_numpy(columns).to(acts.device)]
    return acts.float().cpu().reshape(rows.shape[0], rows.shape[1], -1)


def _logit_effects(adapter, sae: SAE, features: np.ndarray, k: int, n_bins: int) -> dict:
    """Per feature: ``d_f @ W_U`` (``unembed_linear(d_f) - unembed_linear(0)``, as
    :func:`~mechviz.analysis.features.feature_logit_effects`): top/bottom ``k`` token ids and values (ties:
    lower id first) and a histogram over the vocabulary in ``n_bins`` equal bins between its min and max
    (exactly ``np.histogram``'s binning), a few thousand vocabulary rows at a time."""
    F, V = len(features), adapter.d_vocab
    k = min(k, V)
    out = {"logit_top_ids": np.zeros((F, k), np.int64), "logit_top_val": np.zeros((F, k), np.float32),
           "logit_bot_ids": np.zeros((F, k), np.int64), "logit_bot_val": np.zeros((F, k), np.float32),
           "logit_hist": np.zeros((F, n_bins), np.int64), "logit_range": np.zeros((F, 2), np.float32)}
    d = sae.directions()
    chunk = max(1, min(256, (1 << 22) // V))
    for i in range(0, F, chunk):
        part = d[torch.from_numpy(features[i:i + chunk]).to(d.device)].float()
        with torch.inference_mode():
            x = _like_model(adapter, torch.cat([part, torch.zeros_like(part[:1])]))
            y = adapter.unembed_linear(x).float().cpu()
        vals = y[:-1] - y[-1]
        rows = slice(i, i + len(vals))
        for name, sign in (("top", 1.0), ("bot", -1.0)):
            ids = top_k_rows(vals * sign, k)
            out[f"logit_{name}_ids"][rows] = ids
            out[f"logit_{name}_val"][rows] = np.take_along_axis(vals.numpy(), ids, 1)
        v = vals.double().numpy()
        lo, hi = v.min(1), v.max(1)
        out["logit_range"][rows] = np.stack([lo, hi], 1)
        out["logit_hist"][rows] = histogram_rows(v, lo, hi, n_bins)
    return out


def feature_dashboards(adapter, sae: SAE, corpus=None, *, features=None, k: int = 10, samples_per_interval: int = 5,
                       context: tuple[int, int] = (10, 5), seq_len: int = 128, batch_size: int = 16,
                       ignore_bos: bool = True, ignore_positions=(), n_logit_bins: int = 40, cache_dir=None,
                       save_every: int = 8, progress=True, allow_model_mismatch: bool = False) -> Dashboards:
    """Dashboards of the SAE's ``features`` (default: all) over ``corpus``.

    ``corpus``: texts (packed into rows of ``seq_len`` tokens, each starting with BOS; see
    :func:`~mechviz.analysis.dashboard_cache.corpus_rows`) or token ids (``[B, T]``, used as they are);
    default :func:`default_corpus`. With ``ignore_bos`` positions holding the BOS token do not count
    (its residual is an outlier that would top every feature); ``ignore_positions``: positions in
    every row (negative: from the end) that do not count either, as SAEDashboard's option of that name.
    Per feature, over counted tokens:

    * ``top``: the ``k`` largest activations > 0, largest first, ties to the earlier (row, position);
      each with the token window ``context = (left, right)`` around it and the feature over the window;
    * ``intervals``: log-spaced activation intervals (2 per decade), each with up to
      ``samples_per_interval`` contexts drawn uniformly at random (a fixed hash of the token's place:
      the same on any run) and the number of tokens in it; highest interval first;
    * ``density`` (fraction of tokens > 0), mean activation when active, max, and ``hist_counts`` over
      fixed log bins ``hist_edges`` (8 per decade, 1e-3..1e4, end bins open);
    * logit effects ``W_dec[f] @ W_U`` (SAEs on d_model-wide sites): the ``k`` most promoted and
      suppressed tokens and a histogram over the vocabulary in ``n_logit_bins`` bins.

    ``cache_dir``: store the result there, keyed by the model's weights fingerprint, the SAE's weights,
    the corpus ids and these parameters; a finished entry is returned without running the model, an
    interrupted one (exception, KeyboardInterrupt) resumes from its last saved batch (saved every
    ``save_every`` batches and on interruption) with results identical to an uninterrupted run.
    ``progress``: True for a tqdm bar, False for none, or a callable ``fn(rows_done, rows_total)``
    called after each batch (a widget's bar).
    """
    check_sae_fits(sae, adapter, allow_model_mismatch=allow_model_mismatch)
    rows = corpus_rows(adapter, default_corpus() if corpus is None else corpus, seq_len)
    S, T = rows.shape
    feats = np.arange(sae.d_sae, dtype=np.int64) if features is None else \
        np.asarray(list(dict.fromkeys(int(f) for f in features)), np.int64)
    if feats.size == 0 or feats.min() < 0 or feats.max() >= sae.d_sae:
        raise IndexError(f"features must be ids in [0, {sae.d_sae}) and not empty")
    left, right = (int(c) for c in context)
    if k < 1 or samples_per_interval < 1 or left < 0 or right < 0 or batch_size < 1:
        raise ValueError("k, samples_per_interval and batch_size must be >= 1, context sides >= 0")
    params = {"features": "all" if features is None else feats.tolist(), "k": int(k), "q": int(samples_per_interval),
              "left": left, "right": right, "ignore_bos": bool(ignore_bos),
              "ignore_positions": sorted({int(p) % T for p in ignore_positions}), "batch_size": int(batch_size),
              "n_logit_bins": int(n_logit_bins)}
    key = cache_key(adapter, sae, rows, params)
    disk = DiskCache(cache_dir, key) if cache_dir is not None else None
    if disk is not None:
        done = disk.load("result")
        if done is not None:
            return Dashboards(adapter, sae, rows, feats, done, params, key, computed=False)
    acc = Accumulator(len(feats), int(k), int(samples_per_interval), left, right, T)
    meta = {"key": key, "params": params, "rows": S, "seq_len": T, "runs": []}
    if disk is not None:
        state = disk.load("state")
        if state is not None and set(state) == set(acc.state):
            acc.state = state
        meta = disk.meta() or meta
        meta["runs"].append([])
    counted = _counted(rows, adapter, ignore_bos, params["ignore_positions"])
    encoder, columns = _feature_encoder(sae, feats)
    start = int(acc.state["next_row"])
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=S, initial=start, desc=f"dashboards {sae.site}", unit="row")
    saved = start
    try:
        for n_batch, r0 in enumerate(range(start, S, batch_size), start=1):
            r = slice(r0, min(r0 + batch_size, S))
            acc.update(_encode_rows(adapter, encoder, columns, rows[r]), torch.from_numpy(counted[r]), r0)
            if disk is not None:
                meta["runs"][-1].append(r0)
                if n_batch % save_every == 0:
                    disk.save("state", acc.state)
                    disk.write_meta(meta)
                    saved = int(acc.state["next_row"])
            if bar is not None:
                bar.update(r.stop - r.start)
            elif callable(progress):
                progress(r.stop, S)
    except BaseException:
        if disk is not None and int(acc.state["next_row"]) > saved:  # keep what is done: the state is consistent
            disk.save("state", acc.state)
            disk.write_meta(meta)
        raise
    finally:
        if bar is not None:
            bar.close()
    arrays = dict(acc.state)
    if sae.d_in == adapter.d_model:
        arrays.update(_logit_effects(adapter, sae, feats, int(k), int(n_logit_bins)))
    if disk is not None:
        disk.save("result", arrays)
        disk.write_meta({**meta, "complete": True})
        disk.remove("state")
    return Dashboards(adapter, sae, rows, feats, arrays, params, key, computed=True)
