"""The save control in every view's header, in a bare page (no kernel, as in a static export): its PNG
button downloads a PNG of the view as drawn (devicePixelRatio x the chosen scale), its SVG button an SVG
(the view's own drawing where it draws SVG, the PNG wrapped with the title as text where it draws canvas);
the files are read back and checked."""

from __future__ import annotations

import io
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

from mvbrowser import mount_bare as mount

pytestmark = pytest.mark.browser
SVG = "{http://www.w3.org/2000/svg}"
PROMPT = "The cat sat on the mat. The cat"
CLEAN = "And Moses and Aaron went unto the king, and Moses said unto"
CORRUPTED = "And Moses and Aaron went unto the king, and Aaron said unto"
ROOTS = {"attention": ".mechviz-attention", "logit_lens": ".mechviz-logit-lens", "features": ".mechviz-features",
         "head_grid": ".mechviz-head-grid", "dashboard": ".mechviz-dashboard", "steering": ".mechviz-generation",
         "patching": ".mechviz-patch-grid", "graph": ".mechviz-graph"}
DRAWS_SVG = {"steering", "graph"}


@pytest.fixture(scope="module")
def views():
    import mechviz

    torch.set_num_threads(2)
    lab = mechviz.Lab.default(prompt=PROMPT, sae="all")
    v = {"attention": lab.attention(), "logit_lens": lab.logit_lens(), "features": lab.features(),
         "head_grid": lab.add(mechviz.HeadGridView(), answer=" sat", wrong=" the"),
         "dashboard": lab.add(mechviz.DashboardView()),
         "steering": lab.add(mechviz.SteeringView(), n=3, specs=[(67, 4.0)]),
         "patching": lab.patching(CLEAN, CORRUPTED, site="resid_pre", by="position", answers=(" Aaron", " Moses")),
         "graph": lab.add(mechviz.GraphView(), max_features=30)}
    for _ in range(600):                                         # the dashboards compute in a worker
        if v["dashboard"].features is not None:
            break
        time.sleep(0.1)
    v["dashboard"].feature = int(v["dashboard"].features[0])   # a dashboard is drawn for a selected feature
    return v


def save(page, root, fmt, scale):
    page.select_option(f"{root} .mv-save-scale", str(scale))
    with page.expect_download() as info:
        page.click(f"{root} .mv-save-{fmt}")
    d = info.value
    return d.suggested_filename, Path(d.path()).read_bytes()


@pytest.mark.parametrize("name", list(ROOTS))
def test_save_buttons_download_png_and_svg(views, page, name, artifacts):  # views first: no Playwright loop yet
    from PIL import Image

    view, root = views[name], ROOTS[name]
    mount(page, view)
    page.wait_for_function("""(root) => { const el = document.querySelector(root);
        return el && [...el.querySelectorAll('svg, canvas')].some((c) => { const r = c.getBoundingClientRect();
                                                                          return r.width * r.height > 4000; }); }""", arg=root)
    stem = root.removeprefix(".mechviz-")
    sizes = {}
    for scale in (1, 2):
        fname, data = save(page, root, "png", scale)
        (artifacts / f"figure_button_{stem}.png").write_bytes(data)   # to look at
        assert fname == f"{stem}.png" and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
        img = Image.open(io.BytesIO(data)).convert("RGB")
        sizes[scale] = img.size
        band = ((2 if view.prompt else 1) * 16 + 10) * scale      # below the title band
        px = np.asarray(img)[band:].reshape(-1, 3)
        assert len(np.unique(px, axis=0)) > 8                     # a drawing, not a blank page
        assert (px.min(axis=1) < 200).mean() > 0.02               # with ink on it
    assert sizes[2][0] == pytest.approx(2 * sizes[1][0], abs=2)   # the chosen scale multiplies the pixels
    assert sizes[2][1] == pytest.approx(2 * sizes[1][1], abs=2)
    fname, data = save(page, root, "svg", 2)
    (artifacts / f"figure_button_{stem}.svg").write_bytes(data)
    assert fname == f"{stem}.svg" and len(data) > 1000
    doc = ET.fromstring(data)
    assert doc.tag == f"{SVG}svg"
    texts = [t.text or "" for t in doc.iter(f"{SVG}text")]
    assert any(view.title in t for t in texts)                    # the header's title travels with the figure
    if view.prompt:
        assert any(t.startswith("prompt: ") for t in texts)
    images = list(doc.iter(f"{SVG}image"))
    if name in DRAWS_SVG:                                         # its own vector drawing, styles inlined
        assert not images and len(list(doc.iter())) > 30
    else:                                                         # the canvas drawing as an embedded PNG
        assert len(images) == 1 and images[0].get("href").startswith("data:image/png;base64,")
    assert page.mv_errors == []
