"""Static matplotlib figures of the analysis arrays (for papers, reports and headless use).

Each function returns a :class:`matplotlib.figure.Figure` built without pyplot (no global state, no
display), so it works under any backend; save it with ``fig.savefig("lens.png")``.
"""

from __future__ import annotations

import numpy as np


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _clip(text: str, n: int = 8) -> str:
    text = "".join(c if c.isprintable() else ("\\n" if c == "\n" else f"\\x{ord(c):02x}") for c in str(text))
    return text if len(text) <= n else text[: n - 1] + "…"


def logit_lens_figure(lens, by: str = "top_prob", annotate: bool = True, max_tokens: int = 60):
    """The logit-lens grid (rows = residual points, columns = tokens), coloured by ``by``
    (``"top_prob"``, ``"target_prob"``, ``"target_rank"`` or ``"entropy"``, see
    :meth:`LogitLens.colour`), each cell labelled with its top token."""
    values = np.asarray(lens.colour(by), dtype=float)[:, -max_tokens:]
    R, T = values.shape
    fig = _figure(max(4.0, 0.7 * T + 1.5), max(2.5, 0.4 * R + 1.2))
    ax = fig.add_subplot()
    cmap = {"entropy": "magma", "target_rank": "viridis_r"}.get(by, "Blues")
    if by == "target_rank":  # -1 (no target) -> blank
        data = np.log10(np.where(values >= 0, values, np.nan) + 1)
    else:
        data = values
    im = ax.imshow(data, aspect="auto", cmap=cmap, origin="lower", interpolation="nearest",
                   vmin=0 if by in ("top_prob", "target_prob") else None,
                   vmax=1 if by in ("top_prob", "target_prob") else None)
    fig.colorbar(im, ax=ax, label="log10(rank + 1)" if by == "target_rank" else by)
    ax.set_yticks(range(R), lens.rows)
    ax.set_xticks(range(T), [_clip(t) for t in lens.token_strs[-T:]], rotation=90)
    ax.set_xlabel("token (prediction for the next one)")
    if annotate and lens.top_strs is not None:
        strs = lens.top_strs[:, -T:, 0]
        hi = np.nanmax(data) if np.isfinite(data).any() else 1.0
        for r in range(R):
            for t in range(T):
                dark = np.isfinite(data[r, t]) and data[r, t] > 0.6 * hi
                ax.text(t, r, _clip(strs[r, t], 6), ha="center", va="center", fontsize=6,
                        color="white" if dark and cmap == "Blues" else "black")
    ax.set_title(f"Logit lens ({by})")
    return fig


def feature_heatmap_figure(acts: np.ndarray, features, token_strs, max_tokens: int = 80, labels=None):
    """Tokens x features heatmap of SAE activations: ``acts [T, d_sae]`` restricted to ``features``
    (e.g. ``top_features(acts, 20)``); ``labels`` names the rows (default: the feature ids)."""
    features = np.asarray(features, dtype=np.int64)
    data = np.asarray(acts)[-max_tokens:, features].T          # [n_features, T]
    F, T = data.shape
    fig = _figure(max(4.0, 0.3 * T + 2.0), max(2.5, 0.25 * F + 1.2))
    ax = fig.add_subplot()
    im = ax.imshow(data, aspect="auto", cmap="Reds", vmin=0, interpolation="nearest")
    fig.colorbar(im, ax=ax, label="activation")
    ax.set_yticks(range(F), [str(f) for f in (features if labels is None else labels)])
    ax.set_xticks(range(T), [_clip(t) for t in list(token_strs)[-T:]], rotation=90)
    ax.set_ylabel("feature")
    ax.set_title("SAE feature activations")
    return fig


def logit_effects_figure(effects):
    """Bar chart of a feature's most promoted and suppressed tokens (a :class:`LogitEffects`)."""
    fig = _figure(6.0, 3.0)
    ax_up, ax_down = fig.subplots(1, 2)
    k = len(effects.promoted_ids)
    ax_up.barh(range(k)[::-1], effects.promoted_values, color="tab:blue")
    ax_up.set_yticks(range(k)[::-1], [_clip(s, 12) for s in effects.promoted_strs])
    ax_up.set_title("promoted")
    ax_down.barh(range(k)[::-1], effects.suppressed_values, color="tab:red")
    ax_down.set_yticks(range(k)[::-1], [_clip(s, 12) for s in effects.suppressed_strs])
    ax_down.set_title("suppressed")
    fig.suptitle(f"Feature {effects.feature}: logit effects{' (final norm applied)' if effects.norm else ''}")
    return fig


def attention_figure(pattern: np.ndarray, token_strs, title: str = "Attention", signed: bool = False):
    """One head's attention ``[T_dst, T_src]`` as a heatmap (rows: destination, columns: source);
    ``signed``: a difference of two patterns, on a diverging scale from -1 to 1."""
    pattern = np.asarray(pattern)
    T = pattern.shape[0]
    fig = _figure(max(3.5, 0.25 * T + 1.8), max(3.0, 0.25 * T + 1.2))
    ax = fig.add_subplot()
    im = ax.imshow(pattern, cmap="RdBu_r" if signed else "Blues", vmin=-1 if signed else 0, vmax=1,
                   interpolation="nearest")
    fig.colorbar(im, ax=ax, label="attention difference (A - B)" if signed else "attention")
    labels = [_clip(t) for t in token_strs]
    ax.set_xticks(range(T), labels, rotation=90)
    ax.set_yticks(range(T), labels)
    ax.set_xlabel("source token")
    ax.set_ylabel("destination token")
    ax.set_title(title)
    return fig


def patch_grid_figure(grid, normalized: bool = True):
    """A patching grid (:class:`~mechviz.analysis.patching.PatchGrid`) as a heatmap with a diverging
    colormap centred on zero: the normalised values (share of the clean-corrupted gap the patch
    moves), or with ``normalized=False`` the metric change ``v - receiving metric``."""
    if normalized:
        values, what = grid.normalized(), "share of the clean-corrupted gap"
    else:
        values, what = grid.values - grid.receiving_metric, "metric change"
    mat, rows, cols = grid.matrix(values)
    fig = _figure(max(4.0, 0.45 * len(cols) + 2), max(3.0, 0.3 * len(rows) + 1.5))
    ax = fig.add_subplot()
    lim = float(np.nanmax(np.abs(mat))) if np.isfinite(mat).any() else 1.0
    im = ax.imshow(mat, cmap="RdBu_r", vmin=-(lim or 1.0), vmax=lim or 1.0, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(cols)), [_clip(c, 14) for c in cols], rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xlabel(grid.layout.xlabel)
    ax.set_ylabel(grid.layout.ylabel)
    state = "" if grid.complete else " (incomplete)"
    ax.set_title(f"{grid.method} patching, {grid.site} by {grid.by}, {grid.direction}{state}", fontsize=9)
    fig.colorbar(im, ax=ax, label=what)
    return fig
