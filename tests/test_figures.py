"""Figures for papers (issue 15): every view's ``figure()`` draws its current state on the widget's colour
scale and row order, titled with the prompt and the metric, and nothing it draws falls outside the figure,
so a plain ``savefig`` clips nothing (long prompts and long token strings included); ``save_figure`` writes
PNG at the chosen DPI and vector SVG, read back from the files."""

import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib.text
import numpy as np
import pytest
import torch

import mechviz
from mechviz.analysis import figures as F

ROOT = Path(__file__).resolve().parents[1]
LONG = ("The supercalifragilisticexpialidocious cat sat on the antidisestablishmentarianism mat.\n"
        "The supercalifragilisticexpialidocious cat")
CLEAN = "And Moses and Aaron went unto the king, and Moses said unto"
CORRUPTED = "And Moses and Aaron went unto the king, and Aaron said unto"


@pytest.fixture(scope="module")
def lab():
    torch.set_num_threads(2)
    return mechviz.Lab.default(prompt=LONG, sae="all")


@pytest.fixture(scope="module")
def views(lab):
    v = {"attention": lab.attention(layer=1, head=3),
         "logit_lens": lab.logit_lens(color_by="entropy"),
         "features": lab.features(),
         "head_grid": lab.add(mechviz.HeadGridView(), answer=" sat", wrong=" the"),
         "dashboard": lab.add(mechviz.DashboardView()),
         "steering": lab.add(mechviz.SteeringView(), n=3, specs=[(67, 4.0)]),
         "patching": lab.patching(CLEAN, CORRUPTED, site="resid_pre", by="position", answers=(" Aaron", " Moses")),
         "graph": lab.add(mechviz.GraphView(), max_features=30)}
    v["logit_lens"].token = 5
    v["features"].feature = int(v["features"].result.features[2])
    return v


def drawn_texts(fig, monkeypatch):
    """Every text the renderer actually draws (matplotlib keeps tick labels outside the axis limits as
    artists it skips), with its extent in display pixels."""
    seen = []
    real = matplotlib.text.Text.draw

    def draw(self, renderer):
        if self.get_visible() and self.get_text().strip():
            seen.append(self)
        return real(self, renderer)
    monkeypatch.setattr(matplotlib.text.Text, "draw", draw)
    fig.canvas.draw()
    monkeypatch.undo()
    renderer = fig.canvas.get_renderer()
    return [(t.get_text(), t.get_window_extent(renderer)) for t in seen]


def assert_inside(fig, monkeypatch):
    texts = drawn_texts(fig, monkeypatch)
    assert len(texts) > 5
    W, H = fig.bbox.width, fig.bbox.height
    out = [(s[:40], [round(x) for x in b.extents]) for s, b in texts
           if b.x0 < -0.5 or b.y0 < -0.5 or b.x1 > W + 0.5 or b.y1 > H + 0.5]
    assert not out, f"text outside the {W:.0f}x{H:.0f} figure: {out}"
    return texts


@pytest.mark.parametrize("name", ["attention", "logit_lens", "features", "head_grid", "dashboard", "steering",
                                  "patching", "graph"])
def test_every_view_figure_keeps_its_text_inside(views, name, monkeypatch):
    view = views[name]
    fig = view.figure()
    texts = assert_inside(fig, monkeypatch)
    title = fig._suptitle.get_text()
    assert view.title.split()[0] in title
    if view.prompt:                                   # the prompt (escaped, clipped to the width) in the title
        assert "prompt: " + view.prompt.replace("\n", "\\n")[:30] in title
    assert any(s == title for s, _ in texts)


def test_position_mode_and_a_narrow_figure_still_fit(views, monkeypatch):
    grid = views["head_grid"]
    grid.mode = "position"
    try:
        assert_inside(grid.figure(), monkeypatch)
    finally:
        grid.mode = "heads"
    # text far wider than the figure asked for: fit() grows the figure until it all lies inside
    fig = F.attention_figure(np.eye(3), ["x" * 200, "y", "z"], title="T" * 300, prompt="p" * 500)
    assert_inside(fig, monkeypatch)


def js_stops():
    """The colour stops of widgets_js/src/lib/colormap.js, parsed from the JS source."""
    src = (ROOT / "widgets_js/src/lib/colormap.js").read_text()
    body = src[src.index("const STOPS"):src.index("};")]
    return {m.group(1): [tuple(int(x) for x in t) for t in re.findall(r"\[(\d+), (\d+), (\d+)\]", m.group(2))]
            for m in re.finditer(r"(\w+): \[(\[.*?\])\],?\n", body, re.S)}


def test_colour_maps_are_the_widgets():
    stops = js_stops()
    assert set(stops) == set(F.STOPS)
    for name, rgb in stops.items():
        m = F.cmap(name)
        n = len(rgb) - 1
        for i in range(256):            # colormap.js's 256-entry table: evenly spaced stops, linear between them
            x = i / 255 * n
            k = min(n - 1, int(x))
            want = [round(rgb[k][c] + (rgb[k + 1][c] - rgb[k][c]) * (x - k)) for c in range(3)]
            np.testing.assert_allclose(np.array(m(i / 255)[:3]) * 255, want, atol=1.0)


def image(fig):
    """The figure's heatmap (a QuadMesh in its first axes)."""
    from matplotlib.collections import QuadMesh

    meshes = [c for c in fig.axes[0].collections if isinstance(c, QuadMesh)]
    assert len(meshes) == 1
    return meshes[0]


def test_same_scale_and_row_order_as_the_widget(views):
    attn = views["attention"]
    im = image(attn.figure())
    np.testing.assert_allclose(im.get_array(), attn.result[1, 3])       # row = destination, from the top
    assert im.get_clim() == (0.0, 1.0) and im.axes.yaxis_inverted()

    lens = views["logit_lens"]
    im = image(lens.figure())
    ent = lens.result.colour("entropy")
    np.testing.assert_allclose(im.get_array(), ent)                     # row 0 (resid_pre 0) at the top, as the widget
    assert im.get_clim() == (0.0, pytest.approx(float(np.max(ent)))) and im.axes.yaxis_inverted()
    assert [t.get_text() for t in im.axes.get_yticklabels()] == [F._clip(r, 16) for r in lens.rows]
    rank = image(lens.figure(by="target_rank")).get_array()
    r = lens.result.colour("target_rank")
    top = max(float(r.max()), 10.0)
    np.testing.assert_allclose(rank[0, 0], 1 - np.log1p(r[0, 0]) / np.log1p(top))

    feat = views["features"]
    im = image(feat.figure())
    np.testing.assert_allclose(im.get_array(), feat.result.acts.T)
    assert im.get_clim() == (0.0, pytest.approx(feat.vmax))
    assert [t.get_text() for t in im.axes.get_yticklabels()] == [str(f) for f in feat.result.features]

    grid = views["head_grid"]
    im = image(grid.figure())
    np.testing.assert_allclose(im.get_array(), np.clip(np.concatenate([grid.values, grid.extra], 1), grid.vmin, grid.vmax))
    assert im.get_clim() == (pytest.approx(grid.vmin), pytest.approx(grid.vmax))

    patch = views["patching"]
    im = image(patch.figure())
    g = patch.result
    gap = g.clean_metric - g.corrupted_metric
    want = np.clip((g.values - g.corrupted_metric) / gap, -1, 1)        # denoise share of the gap, the widget's norm()
    np.testing.assert_allclose(im.get_array(), want, rtol=1e-5)
    assert im.get_clim() == (-1.0, 1.0)


def test_selection_is_outlined(views):
    from matplotlib.patches import Rectangle

    lens = views["logit_lens"]
    boxes = [p for p in lens.figure().axes[0].patches if isinstance(p, Rectangle)]
    assert [(b.get_x() + 0.5, b.get_y() + 0.5) for b in boxes] == [(lens.token, lens.layer)]
    feat = views["features"]
    row = feat.result.features.tolist().index(feat.feature)
    boxes = [p for p in feat.figure().axes[0].patches if isinstance(p, Rectangle)]
    assert [(b.get_y() + 0.5, b.get_width()) for b in boxes] == [(row, len(feat.tokens))]


def png_size(path):
    head = Path(path).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


@pytest.mark.parametrize("name", ["logit_lens", "graph"])
def test_save_figure_png_at_dpi_and_vector_svg(views, name, tmp_path):
    view = views[name]
    w, h = view.figure().get_size_inches()
    for dpi in (72, 200):
        out = view.save_figure(tmp_path / f"f{dpi}.png", dpi=dpi)
        assert png_size(out) == pytest.approx((w * dpi, h * dpi), abs=1)
    svg = ET.parse(view.save_figure(tmp_path / "f.svg")).getroot()
    assert svg.tag.endswith("svg")
    assert not list(svg.iter("{http://www.w3.org/2000/svg}image"))     # vector: no embedded raster
    assert float(svg.get("width").rstrip("pt")) == pytest.approx(w * 72, abs=1)
    with pytest.raises(ValueError, match=r"\.png, \.svg or \.pdf"):
        view.save_figure(tmp_path / "f.jpeg")


def test_no_data_yet_says_so():
    with pytest.raises(ValueError, match="no data"):
        mechviz.HeadGridView().figure()


def test_a_difference_draws_on_the_widgets_signed_scale(lab, monkeypatch):
    """Compare's A - B attention: red-blue around 0, its ends the selected layer's largest |A - B| (the widget's)."""
    b = LONG.replace("cat", "dog")
    assert len(lab.model.to_tokens(b)) == len(lab.model.to_tokens(LONG))
    cmp = mechviz.Compare(lab, b)
    diff = cmp.difference(mechviz.AttentionView)
    diff.layer, diff.head = 2, 1
    fig = diff.figure()
    assert_inside(fig, monkeypatch)
    mesh = image(fig)
    d = diff.result
    np.testing.assert_allclose(mesh.get_array(), d[2, 1])
    lim = float(np.max(np.abs(d[2])))
    assert lim > 0 and mesh.get_clim() == (pytest.approx(-lim), pytest.approx(lim))
    np.testing.assert_allclose(np.array(mesh.cmap(0.5)[:3]) * 255, (255, 255, 255), atol=1)   # 0 is white
