"""What a patching grid is: its metric, its layout (what each cell patches), and the result object.

A grid patches one site. Its ``by`` names a :class:`Layout`, the one place that knows the grid's
shape, which activation each cell patches, how the grid is drawn in two dimensions and how a drawn
``(row, col)`` maps back to a cell:

======================  ====================  ===========================  ==========================
``by``                   ``values`` shape      a cell patches               drawn as (rows x cols)
======================  ====================  ===========================  ==========================
``"position"``           ``[layer, pos]``      one position of the site     layers x positions
``"head"``               ``[layer, head]``     one head at every position   layers x heads
``"head_position"``      ``[layer, pos, head]`` one head at one position    layer/head x positions
======================  ====================  ===========================  ==========================

>>> import numpy as np
>>> grid = PatchGrid(values=np.arange(12.0).reshape(2, 3, 2), site="z", by="head_position",
...                  direction="denoise", layers=[0, 1], tokens=["a", "b", "c"], heads=[0, 1],
...                  clean_metric=1.0, corrupted_metric=0.0)
>>> mat, rows, cols = grid.matrix()
>>> mat.shape, rows[:3], cols[0]
((4, 3), ['L0H0', 'L0H1', 'L1H0'], "0 'a'")
>>> grid.cell(3, 2)          # drawn row 3 = layer 1 head 1, column 2 = position 2
Cell(layer=1, pos=2, head=1, index=(1, 2, 1))
>>> bool(grid.values[grid.cell(3, 2).index] == mat[3, 2])
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


# -- metrics ----------------------------------------------------------------------------------
class LogitDiff:
    """``logits[..., pos, correct] - logits[..., pos, wrong]``: one value per batch row.

    Declares what it reads (``positions``, ``token_ids``) so that patching computes only those
    logits; :meth:`from_subset` takes ``logits[:, positions][..., token_ids]``.
    """

    def __init__(self, correct_id: int, wrong_id: int, pos: int = -1):
        self.correct_id, self.wrong_id, self.pos = int(correct_id), int(wrong_id), int(pos)
        self.positions = (self.pos,)
        self.token_ids = (self.correct_id, self.wrong_id)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[..., self.pos, self.correct_id] - logits[..., self.pos, self.wrong_id]

    def from_subset(self, sub: torch.Tensor) -> torch.Tensor:
        return sub[:, 0, 0] - sub[:, 0, 1]

    def __repr__(self) -> str:
        return f"logit_diff(correct_id={self.correct_id}, wrong_id={self.wrong_id}, pos={self.pos})"


def logit_diff(correct_id: int, wrong_id: int, pos: int = -1) -> LogitDiff:
    """The default metric: logit of the correct answer minus that of the wrong one, at ``pos``."""
    return LogitDiff(correct_id, wrong_id, pos)


# -- layouts ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """One cell of a grid: the activation it patches (``layer``; ``pos`` None = every position;
    ``head`` None = the site has no head axis) and its ``index`` into ``PatchGrid.values``."""

    layer: int
    pos: int | None
    head: int | None
    index: tuple


class Layout:
    """How a grid of one ``by`` is shaped, enumerated, drawn and read back (see the module docs)."""

    by: str
    dims: tuple[str, ...]
    xlabel: str = "position"
    ylabel: str = "layer"

    def shape(self, n_layers: int, n_pos: int, n_heads: int) -> tuple[int, ...]:
        sizes = {"layer": n_layers, "pos": n_pos, "head": n_heads}
        return tuple(sizes[d] for d in self.dims)

    def layer_cells(self, li: int, n_pos: int, n_heads: int) -> list[tuple[tuple, int | None, int | None]]:
        """The cells of layer index ``li``: ``(index, pos or None, head index or None)``."""
        raise NotImplementedError

    def matrix(self, values: np.ndarray) -> np.ndarray:
        """``values`` as the 2-D array that is drawn."""
        return values

    def labels(self, layers, tokens, heads) -> tuple[list[str], list[str]]:
        raise NotImplementedError

    def index(self, row: int, col: int, n_heads: int) -> tuple:
        """The ``values`` index of drawn cell ``(row, col)``."""
        return (row, col)


class _ByPosition(Layout):
    by, dims = "position", ("layer", "pos")

    def layer_cells(self, li, n_pos, n_heads):
        return [((li, p), p, None) for p in range(n_pos)]

    def labels(self, layers, tokens, heads):
        return [f"L{lay}" for lay in layers], _pos_labels(tokens)


class _ByHead(Layout):
    by, dims, xlabel = "head", ("layer", "head"), "head"

    def layer_cells(self, li, n_pos, n_heads):
        return [((li, h), None, h) for h in range(n_heads)]

    def labels(self, layers, tokens, heads):
        return [f"L{lay}" for lay in layers], [f"H{h}" for h in heads]


class _ByHeadPosition(Layout):
    by, dims, ylabel = "head_position", ("layer", "pos", "head"), "layer / head"

    def layer_cells(self, li, n_pos, n_heads):
        return [((li, p, h), p, h) for p in range(n_pos) for h in range(n_heads)]

    def matrix(self, values):
        L, T, H = values.shape
        return values.transpose(0, 2, 1).reshape(L * H, T)

    def labels(self, layers, tokens, heads):
        return [f"L{lay}H{h}" for lay in layers for h in heads], _pos_labels(tokens)

    def index(self, row, col, n_heads):
        return (row // n_heads, col, row % n_heads)


def _pos_labels(tokens) -> list[str]:
    return [f"{i} {t!r}" for i, t in enumerate(tokens)]


#: The layout of each ``by``.
LAYOUTS: dict[str, Layout] = {lay.by: lay for lay in (_ByPosition(), _ByHead(), _ByHeadPosition())}
BYS = tuple(LAYOUTS)


def layout(by: str) -> Layout:
    """The :class:`Layout` for ``by`` (``"position"``, ``"head"`` or ``"head_position"``)."""
    try:
        return LAYOUTS[by]
    except KeyError:
        raise ValueError(f"by must be one of {', '.join(map(repr, BYS))}; got {by!r}") from None


# -- the result -------------------------------------------------------------------------------
def normalized(values: np.ndarray, clean_metric: float, corrupted_metric: float, direction: str) -> np.ndarray:
    """The share of the clean-corrupted metric gap a patch moves: denoising
    ``(v - corrupted) / (clean - corrupted)`` (1 = fully restored), noising
    ``(clean - v) / (clean - corrupted)`` (1 = fully destroyed); 0 = no effect either way.

    >>> normalized(np.array([1.0, 3.0]), 3.0, 1.0, "denoise").tolist()
    [0.0, 1.0]
    """
    gap = clean_metric - corrupted_metric
    if gap == 0:
        raise ZeroDivisionError("clean and corrupted metrics are equal: nothing to normalise by")
    if direction == "denoise":
        return (values - corrupted_metric) / gap
    return (clean_metric - values) / gap


@dataclass
class PatchGrid:
    """One patching grid. ``values`` holds the patched metric (NaN where not computed yet), shaped
    by its :attr:`layout` (``[layer, pos]``, ``[layer, head]`` or ``[layer, pos, head]``).
    ``tokens`` label positions (clean token, ``clean/corrupted`` where they differ)."""

    values: np.ndarray
    site: str
    by: str
    direction: str
    layers: list[int]
    tokens: list[str]
    heads: list[int]
    clean_metric: float
    corrupted_metric: float
    method: str = "activation"
    complete: bool = True

    @property
    def layout(self) -> Layout:
        return layout(self.by)

    @property
    def dims(self) -> tuple[str, ...]:
        return self.layout.dims

    @property
    def n_done(self) -> int:
        return int(np.isfinite(self.values).sum())

    @property
    def receiving_metric(self) -> float:
        """The metric of the run that receives the patches (corrupted when denoising)."""
        return self.corrupted_metric if self.direction == "denoise" else self.clean_metric

    def normalized(self) -> np.ndarray:
        """:func:`normalized` of the grid's values."""
        return normalized(self.values, self.clean_metric, self.corrupted_metric, self.direction)

    def matrix(self, values: np.ndarray | None = None) -> tuple[np.ndarray, list[str], list[str]]:
        """``(2-D array, row labels, column labels)`` as drawn; ``values`` defaults to the grid's."""
        lay = self.layout
        rows, cols = lay.labels(self.layers, self.tokens, self.heads)
        return lay.matrix(self.values if values is None else values), rows, cols

    def cell(self, row: int, col: int) -> Cell:
        """The cell drawn at ``(row, col)`` of :meth:`matrix`."""
        mat = self.layout.matrix(self.values)
        if not (0 <= row < mat.shape[0] and 0 <= col < mat.shape[1]):
            raise IndexError(f"cell ({row}, {col}) is outside this {mat.shape[0]} x {mat.shape[1]} grid")
        idx = self.layout.index(int(row), int(col), len(self.heads))
        named = dict(zip(self.dims, idx))
        head = named.get("head")
        return Cell(layer=self.layers[named["layer"]], pos=named.get("pos"),
                    head=None if head is None else self.heads[head], index=idx)

    def figure(self, normalized: bool = True, prompt: str = ""):
        """The grid as a matplotlib Figure, the widget's colour scale, ``prompt`` in the title (see
        :func:`mechviz.analysis.figures.patch_grid_figure`)."""
        from .figures import patch_grid_figure

        return patch_grid_figure(self, normalized=normalized, prompt=prompt)

    def __repr__(self) -> str:
        shape = " x ".join(f"{n} {d}" for n, d in zip(self.values.shape, self.dims))
        done = "" if self.n_done == self.values.size else f", {self.n_done}/{self.values.size} cells done"
        state = "" if self.complete else ", INCOMPLETE (cancelled)"
        lo = np.nanmin(self.values) if self.n_done else float("nan")
        hi = np.nanmax(self.values) if self.n_done else float("nan")
        return (f"PatchGrid({self.method} patching of {self.site} by {self.by}, {self.direction}: "
                f"{shape}{done}{state}; clean metric {self.clean_metric:.4g}, corrupted "
                f"{self.corrupted_metric:.4g}; values range {lo:.4g}..{hi:.4g})")
