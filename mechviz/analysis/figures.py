"""Static matplotlib figures of the analysis arrays (for papers, reports and headless use).

Each function returns a :class:`matplotlib.figure.Figure` built without pyplot (no global state, no
display), so it works under any backend. The colour maps are the widgets' own (:data:`CMAPS`, the stops
of ``widgets_js/src/lib/colormap.js``), and every figure is sized to its text (:func:`fit`): a plain
``fig.savefig("lens.png")`` or ``fig.savefig("lens.svg")`` keeps every title, tick and colourbar label.
"""

from __future__ import annotations

import numpy as np

#: the widgets' colour maps (widgets_js/src/lib/colormap.js: evenly spaced stops, linear between them)
STOPS = {
    "blues": [(255, 255, 255), (222, 235, 247), (158, 202, 225), (66, 146, 198), (33, 113, 181), (8, 48, 107)],
    "oranges": [(255, 255, 255), (254, 230, 206), (253, 174, 107), (241, 105, 19), (166, 54, 3), (127, 39, 4)],
    "viridis": [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)],
    "rdbu": [(33, 102, 172), (103, 169, 207), (209, 229, 240), (255, 255, 255), (253, 219, 199), (239, 138, 98),
             (178, 24, 43)],
}


def cmap(name: str):
    """The widget colour map ``name`` ("blues", "oranges", "viridis", "rdbu") as a matplotlib colormap
    (NaN cells drawn light grey).

    >>> [float(x) for x in cmap("blues")(0.0)[:3]], cmap("blues")(1.0)[:3] == tuple(c / 255 for c in STOPS["blues"][-1])
    ([1.0, 1.0, 1.0], True)
    """
    from matplotlib.colors import LinearSegmentedColormap

    m = LinearSegmentedColormap.from_list(f"mechviz_{name}", [tuple(c / 255 for c in rgb) for rgb in STOPS[name]], 256)
    return m.with_extremes(bad="#e2e8f0")


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # a renderer to measure text with (savefig still picks its format's backend)
    return fig


def _clip(text: str, n: int = 8) -> str:
    text = "".join(c if c.isprintable() else ("\\n" if c == "\n" else f"\\x{ord(c):02x}") for c in str(text))
    return text if len(text) <= n else text[: n - 1] + "…"


def heading(fig, what: str, prompt: str = "", metric: str = "", fontsize: float = 10.0) -> None:
    """The figure's title: ``what`` and the ``metric`` on the first line, the prompt (clipped to the
    figure's width, control characters escaped) on the second."""
    chars = max(20, int(fig.get_figwidth() * 72 / (0.6 * fontsize)))
    lines = [_clip(" · ".join(x for x in (what, metric) if x), chars)]
    if prompt:
        lines.append(_clip(f"prompt: {prompt}", chars))
    fig.suptitle("\n".join(lines), fontsize=fontsize)


def fit(fig, pad: float = 0.05, tries: int = 4):
    """Grow ``fig`` until everything it draws lies inside it (constrained layout then re-lays it out), so
    ``savefig`` with default arguments clips nothing; returns ``fig``."""
    for _ in range(tries):
        renderer = fig.canvas.get_renderer()
        box = fig.get_tightbbox(renderer)          # inches
        w, h = fig.get_size_inches()
        over_w = max(0.0, -box.x0) + max(0.0, box.x1 - w)
        over_h = max(0.0, -box.y0) + max(0.0, box.y1 - h)
        if over_w <= 1e-3 and over_h <= 1e-3:
            break
        fig.set_size_inches(w + 2 * over_w + (pad if over_w else 0), h + 2 * over_h + (pad if over_h else 0))
    fig.draw_without_rendering()
    return fig


def _text_on(rgba) -> str:
    """Black or white text on a cell of colour ``rgba`` (as the widgets' ``textOn``)."""
    r, g, b = rgba[:3]
    return "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.55 else "black"


def _outline(ax, x: int, y: int, w: int = 1, h: int = 1, colour: str = "#f59e0b") -> None:
    """The selection's box around cells ``[x, x + w) x [y, y + h)`` of an ``imshow`` grid."""
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor=colour, linewidth=2, clip_on=False))


def _heat(fig, ax, data, name: str, vmin: float, vmax: float, label: str):
    """``data [rows, cols]`` as cells (row 0 at the top, cell (r, c) centred on (c, r)), vector in SVG/PDF
    (a mesh, not an image), with its colourbar."""
    R, C = np.shape(data)
    mesh = ax.pcolormesh(np.arange(C + 1) - 0.5, np.arange(R + 1) - 0.5, data, cmap=cmap(name), vmin=vmin, vmax=vmax)
    ax.set_xlim(-0.5, C - 0.5)
    ax.set_ylim(R - 0.5, -0.5)
    bar = fig.colorbar(mesh, ax=ax, label=label, shrink=0.9)
    bar.solids.set_rasterized(False)      # the colourbar vector too
    return mesh


def lens_scale(lens, by: str):
    """What the logit-lens widget colours by ``by``: ``(values [rows, tokens], colour map, vmin, vmax,
    label)``, as ``scaleFor`` in widgets_js/src/logit_lens.js (top/target probability 0..1 on blues,
    entropy 0..its maximum on viridis, target rank ``1 - log1p(rank) / log1p(max(max rank, 10))``
    on blues, no target = NaN)."""
    values = np.asarray(lens.colour(by), dtype=float)
    if by == "entropy":
        mx = float(np.nanmax(values)) if np.isfinite(values).any() else 0.0
        return values, "viridis", 0.0, (mx if mx > 0 else 1.0), "entropy (nats)"
    if by == "target_rank":
        mx = max(float(np.nanmax(values)) if values.size else 0.0, 10.0)
        scaled = np.where(values >= 0, 1 - np.log1p(np.maximum(values, 0)) / np.log1p(mx), np.nan)
        return scaled, "blues", 0.0, 1.0, f"target rank (dark = 0, white = {mx:g}+; log scale)"
    return values, "blues", 0.0, 1.0, {"top_prob": "top-1 probability", "target_prob": "target probability"}.get(by, by)


def logit_lens_figure(lens, by: str = "top_prob", annotate: bool = True, max_tokens: int = 60, prompt: str = "",
                      selected: tuple[int, int] = (-1, -1), what: str = "Logit lens"):
    """The logit-lens grid as the widget draws it (rows = residual points from the top, columns = tokens),
    coloured by ``by`` (``"top_prob"``, ``"target_prob"``, ``"target_rank"`` or ``"entropy"``, see
    :func:`lens_scale`), each cell labelled with its top token; ``selected`` = (row, token) outlined."""
    values, name, lo, hi, label = lens_scale(lens, by)
    data = values[:, -max_tokens:]
    R, T = data.shape
    off = values.shape[1] - T
    fig = _figure(max(5.0, 0.55 * T + 2.5), max(3.0, 0.4 * R + 1.8))
    ax = fig.add_subplot()
    im = _heat(fig, ax, data, name, lo, hi, label)
    ax.set_yticks(range(R), [_clip(r, 16) for r in lens.rows])
    ax.set_xticks(range(T), [_clip(t) for t in lens.token_strs[-T:]], rotation=90)
    ax.set_xlabel("token (prediction for the next one)")
    if annotate and lens.top_strs is not None:
        strs = lens.top_strs[:, -T:, 0]
        for r in range(R):
            for t in range(T):
                rgba = im.cmap(im.norm(data[r, t])) if np.isfinite(data[r, t]) else (1, 1, 1, 1)
                ax.text(t, r, _clip(strs[r, t], 6), ha="center", va="center", fontsize=6, color=_text_on(rgba))
    row, tok = selected
    if 0 <= row < R and off <= tok < off + T:
        _outline(ax, tok - off, row)
    heading(fig, what, prompt, by)
    return fit(fig)


def feature_heatmap_figure(acts: np.ndarray, features, token_strs, max_tokens: int = 80, labels=None,
                           vmax: float | None = None, prompt: str = "", selected: int = -1, what: str = "SAE features"):
    """Features x tokens heatmap of SAE activations, as the feature view draws it (rows = ``features`` in
    their order, white = 0 to dark orange = ``vmax``, default the largest activation): ``acts [T, d_sae]``
    restricted to ``features`` (e.g. ``top_features(acts, 20)``); ``labels`` names the rows (default: the
    feature ids); row ``selected`` outlined."""
    features = np.asarray(features, dtype=np.int64)
    data = np.asarray(acts, dtype=float)[-max_tokens:, features].T          # [n_features, T]
    F, T = data.shape
    if vmax is None:
        vmax = float(np.nanmax(data)) if data.size and np.nanmax(data) > 0 else 1.0
    fig = _figure(max(5.0, 0.3 * T + 2.5), max(3.0, 0.25 * F + 1.8))
    ax = fig.add_subplot()
    _heat(fig, ax, data, "oranges", 0.0, vmax, "activation")
    ax.set_yticks(range(F), [str(f) for f in (features if labels is None else labels)])
    ax.set_xticks(range(T), [_clip(t) for t in list(token_strs)[-T:]], rotation=90)
    ax.set_ylabel("feature")
    if 0 <= selected < F:
        _outline(ax, 0, selected, T, 1, "#2563eb")
    heading(fig, what, prompt, "activation")
    return fit(fig)


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
    return fit(fig)


def attention_figure(pattern: np.ndarray, token_strs, title: str = "Attention", signed: bool = False,
                     scale: float | None = None, prompt: str = ""):
    """One head's attention ``[T_dst, T_src]`` as a heatmap (rows: destination, columns: source), white = 0
    to dark blue = 1 as in the widget; ``signed``: a difference of two patterns, on the diverging scale
    ``-scale .. scale`` (default, as the widget: the largest ``|difference|``)."""
    pattern = np.asarray(pattern, dtype=float)
    T = pattern.shape[0]
    fig = _figure(max(4.5, 0.25 * T + 2.5), max(4.0, 0.25 * T + 2.0))
    ax = fig.add_subplot()
    if signed:
        if scale is None:
            scale = float(np.nanmax(np.abs(pattern))) if pattern.size else 0.0
        scale = scale or 1.0
        _heat(fig, ax, pattern, "rdbu", -scale, scale, "attention difference (A - B)")
    else:
        _heat(fig, ax, pattern, "blues", 0.0, 1.0, "attention weight")
    labels = [_clip(t) for t in token_strs]
    ax.set_xticks(range(T), labels, rotation=90)
    ax.set_yticks(range(T), labels)
    ax.set_xlabel("source token")
    ax.set_ylabel("destination token")
    heading(fig, title, prompt, "A - B" if signed else "attention weight")
    return fit(fig)


def patch_grid_figure(grid, normalized: bool = True, prompt: str = "", what: str = "",
                      selected: tuple[int, int] = (-1, -1)):
    """A patching grid (:class:`~mechviz.analysis.patching.PatchGrid`) as the widget draws it: the
    normalised values (share of the clean-corrupted gap the patch moves) on the diverging scale -1 .. 1
    (clipped there, as the widget), or with ``normalized=False`` the metric change ``v - receiving
    metric`` on +-its largest size; rows and columns as :meth:`PatchGrid.matrix` lays them out."""
    if normalized:
        values, label = grid.normalized(), "share of the clean-corrupted gap"
    else:
        values, label = grid.values - grid.receiving_metric, "metric change"
    mat, rows, cols = grid.matrix(values)
    mat = np.asarray(mat, dtype=float)
    fig = _figure(max(5.0, 0.3 * len(cols) + 3), max(3.5, 0.3 * len(rows) + 2.0))
    ax = fig.add_subplot()
    if normalized:
        lim = 1.0
    else:
        lim = float(np.nanmax(np.abs(mat))) if np.isfinite(mat).any() else 1.0
        lim = lim or 1.0
    _heat(fig, ax, np.clip(mat, -lim, lim), "rdbu", -lim, lim, label)
    ax.set_xticks(range(len(cols)), [_clip(c, 14) for c in cols], rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)), [_clip(r, 16) for r in rows], fontsize=7)
    ax.set_xlabel(grid.layout.xlabel)
    ax.set_ylabel(grid.layout.ylabel)
    if 0 <= selected[0] < len(rows) and 0 <= selected[1] < len(cols):
        _outline(ax, selected[1], selected[0])
    state = "" if grid.complete else " (incomplete)"
    head = what or f"{grid.method} patching, {grid.site} by {grid.by}, {grid.direction}{state}"
    heading(fig, head, prompt, label)
    return fit(fig)
