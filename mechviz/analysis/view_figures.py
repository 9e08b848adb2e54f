"""Static matplotlib figures of the head grid, the feature dashboard, the attribution graph and the
steering view's state (the other views' figures are in :mod:`.figures`): the widgets' colour maps and
row order, titled with the prompt and the metric, sized to their text (see :func:`.figures.fit`)."""

from __future__ import annotations

import numpy as np

from .figures import _clip, _figure, _heat, _outline, fit, heading


def head_grid_figure(values, extra=None, extra_labels=(), by_position=None, tokens=(), mode: str = "heads",
                     vmin: float = 0.0, vmax: float = 1.0, diverging: bool = False, label: str = "",
                     selected: tuple[int, int] = (-1, -1), prompt: str = "", what: str = "Heads"):
    """The head grid as the widget draws it: ``values [layers, heads]`` (rows L0.. from the top) then the
    per-layer ``extra`` columns, or with ``mode="position"`` ``by_position [layers * heads, tokens]`` (row
    ``L{l}H{h}``); colour ``vmin .. vmax`` on blues (``diverging``: red-blue); the selected (layer, head)
    outlined."""
    V = np.asarray(values, dtype=float)
    L, H = V.shape
    if mode == "position" and by_position is not None:
        data = np.asarray(by_position, dtype=float)
        rows = [f"L{i // H}H{i % H}" for i in range(L * H)]
        cols = [_clip(t, 10) for t in list(tokens)[: data.shape[1]]] + [str(j) for j in range(len(tokens), data.shape[1])]
    else:
        E = None if extra is None else np.asarray(extra, dtype=float)
        ne = E.shape[1] if E is not None and E.ndim == 2 and E.shape[0] == L else 0
        data = np.concatenate([V, E], axis=1) if ne else V
        rows = [f"L{i}" for i in range(L)]
        cols = [f"H{j}" for j in range(H)] + [_clip(extra_labels[j] if j < len(extra_labels) else f"x{j}", 12)
                                              for j in range(ne)]
    R, C = data.shape
    fig = _figure(max(4.5, 0.4 * C + 2.5), max(3.0, 0.3 * R + 1.8))
    ax = fig.add_subplot()
    _heat(fig, ax, np.clip(data, vmin, vmax), "rdbu" if diverging else "blues", vmin, vmax, _clip(label, 40))
    ax.set_xticks(range(C), cols, rotation=90 if mode == "position" else 0, fontsize=7)
    ax.set_yticks(range(R), rows, fontsize=7)
    if mode != "position" and C > H:
        ax.axvline(H - 0.5, color="#334155", lw=2)
    layer, head = selected
    if 0 <= layer < L and 0 <= head < H:
        if mode == "position":
            _outline(ax, 0, layer * H + head, C, 1, "#111827")
        else:
            _outline(ax, head, layer, colour="#111827")
    heading(fig, what, prompt, label)
    return fit(fig)


def dashboard_figure(feature: int, stats, hist_counts, hist_edges, promoted, suppressed, contexts,
                     prompt: str = "", what: str = "Feature dashboard"):
    """One feature's dashboard: its activation histogram (log bins, as the widget), the tokens it
    promotes and suppresses (``[(text, value), ...]``) and its top contexts (``[(text, activation), ...]``);
    ``stats`` = (density, mean when active, max)."""
    fig = _figure(9.0, 5.5)
    grid = fig.add_gridspec(2, 2, height_ratios=[1, 1.2])
    ax_h, ax_e, ax_c = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, :])
    counts, edges = np.asarray(hist_counts, dtype=float), np.asarray(hist_edges, dtype=float)
    if counts.size and edges.size == counts.size + 1:
        ax_h.stairs(counts, edges, fill=True, color="#f97316")
        if edges[0] > 0:
            ax_h.set_xscale("log")
    ax_h.set_xlabel("activation")
    ax_h.set_ylabel("tokens")
    density, mean, mx = (list(np.asarray(stats, dtype=float)) + [np.nan] * 3)[:3]
    ax_h.set_title(f"density {density:.3g} · mean {mean:.3g} · max {mx:.3g}", fontsize=8)
    items = [(s, v) for s, v in promoted][::-1] + [(s, v) for s, v in suppressed][::-1]
    ax_e.barh(range(len(items)), [v for _, v in items], color=["#2563eb" if v >= 0 else "#dc2626" for _, v in items])
    ax_e.set_yticks(range(len(items)), [_clip(repr(s), 14) for s, _ in items], fontsize=7)
    ax_e.set_xlabel("logit effect")
    ax_c.axis("off")
    for i, (text, act) in enumerate(contexts):
        ax_c.text(0.0, 1 - (i + 0.5) / max(len(contexts), 1), f"{act:7.3f}  {_clip(text, 110)}", fontsize=7,
                  family="monospace", va="center", transform=ax_c.transAxes)
    ax_c.set_title("top activations (the activating token in [brackets])", fontsize=8, loc="left")
    heading(fig, f"{what}: feature {feature}", prompt, "activation")
    return fit(fig)


def graph_figure(kind, layer, pos, feature, influence, src, dst, weight, tokens=(), n_layers: int = 0,
                 logit_labels=None, prompt: str = "", what: str = "Attribution graph", selected: int = -1):
    """The shown subgraph: nodes at (token position, layer) with embeddings below layer 0 and logits above
    the last layer (kinds 0 feature, 1 error, 2 embed, 3 logit, as the widget), edges red for positive and
    blue for negative weights, width by ``|weight|``; node ``selected`` ringed."""
    from matplotlib.collections import LineCollection

    kind, layer, pos = (np.asarray(a, dtype=np.int64) for a in (kind, layer, pos))
    src, dst, weight = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64), np.asarray(weight, float)
    N, T = kind.size, max(len(tokens), int(pos.max()) + 1 if pos.size else 1)
    y = np.where(kind == 2, -1, np.where(kind == 3, n_layers, layer)).astype(float)
    x = pos.astype(float).copy()
    for key in set(zip(x.tolist(), y.tolist())):          # nodes sharing a cell side by side
        same = np.flatnonzero((x == key[0]) & (y == key[1]))
        x[same] = key[0] + (np.arange(same.size) - (same.size - 1) / 2) * min(0.8 / max(same.size, 1), 0.18)
    logits = np.flatnonzero(kind == 3)                    # the logits spread along the top row, room for their labels
    if logits.size > 1:
        x[logits] = np.linspace(max(0.0, T - 1 - 1.2 * (logits.size - 1)), T - 1, logits.size)
    fig = _figure(max(6.0, 0.9 * T + 2.0), max(4.0, 0.8 * (n_layers + 2) + 2.0))
    ax = fig.add_subplot()
    if src.size:
        top = float(np.max(np.abs(weight))) or 1.0
        segs = np.stack([np.stack([x[src], y[src]], 1), np.stack([x[dst], y[dst]], 1)], 1)
        ax.add_collection(LineCollection(segs, colors=np.where(weight[:, None] >= 0, [[0.70, 0.09, 0.17, 0.55]],
                                                                [[0.13, 0.40, 0.67, 0.55]]),
                                         linewidths=0.4 + 2.6 * np.abs(weight) / top, zorder=1))
    colours = np.array(["#f97316", "#94a3b8", "#16a34a", "#7c3aed"])[np.clip(kind, 0, 3)]
    ax.scatter(x, y, s=40, c=colours, edgecolors="#1f2937", linewidths=0.5, zorder=2)
    if 0 <= selected < N:
        ax.scatter([x[selected]], [y[selected]], s=160, facecolors="none", edgecolors="#f59e0b", linewidths=2, zorder=3)
    for i in range(N):
        if kind[i] == 0:
            ax.annotate(str(int(feature[i])), (x[i], y[i]), xytext=(0, 5), textcoords="offset points", fontsize=5,
                        ha="center", annotation_clip=False)
        elif kind[i] == 3 and logit_labels is not None and i < len(logit_labels):
            ax.annotate(_clip(logit_labels[i], 10), (x[i], y[i]), xytext=(0, 6), textcoords="offset points",
                        fontsize=6, ha="center", annotation_clip=False)
    ax.set_xticks(range(T), [_clip(t, 10) for t in list(tokens)[:T]] + [str(j) for j in range(len(tokens), T)],
                  rotation=90, fontsize=7)
    ax.set_yticks(range(-1, n_layers + 1), ["embed"] + [f"L{i}" for i in range(n_layers)] + ["logits"], fontsize=7)
    ax.set_xlim(-0.7, T - 0.3)
    ax.set_ylim(-1.6, n_layers + 0.8)
    ax.set_xlabel("token position")
    ax.set_title("orange feature · grey error · green embedding · purple logit; edges red + / blue -", fontsize=7)
    heading(fig, what, prompt, f"{N} nodes, {src.size} edges (direct effect)")
    return fit(fig)


def steering_figure(sweep, current, base_text: str, steered_text: str, prompt: str = "", steering: str = "",
                    what: str = "Steering"):
    """The steering view: the strength sweep (``current`` value marked; none without one) above the
    unsteered and the steered continuations."""
    fig = _figure(7.0, 4.8 if sweep is not None else 2.6)
    if sweep is not None:
        grid = fig.add_gridspec(2, 1, height_ratios=[2.2, 1])
        ax, ax_t = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
        ax.plot(sweep.values, sweep.metric, marker="o", color="#2563eb")
        if current is not None:
            ax.axvline(float(current), color="#f59e0b", lw=1.5, label=f"current {float(current):g}")
            ax.legend(loc="best", fontsize=8)
        ax.set_xlabel(f"feature {sweep.feature}: {'clamp value' if sweep.mode == 'clamp' else 'scale'}")
        ax.set_ylabel(_clip(sweep.label, 40))
        metric = sweep.label
    else:
        ax_t, metric = fig.add_subplot(), "generated text"
    ax_t.axis("off")
    for i, (name, text) in enumerate([("unsteered", base_text), ("steered", steered_text)]):
        ax_t.text(0.0, 0.75 - 0.5 * i, f"{name}: {_clip(text, 90)}", fontsize=8, va="center", transform=ax_t.transAxes)
    heading(fig, f"{what} ({_clip(steering, 40)})" if steering else what, prompt, metric)
    return fit(fig)
