"""The README's pictures: one screenshot per view, each rendered in a real browser from the state of a real Lab
on the bundled model (the README's own prompts), written to test-artifacts/readme/. With
MECHVIZ_UPDATE_SCREENSHOTS=1 they also replace docs/img/, which the README shows (tests/test_readme.py checks
that every view has one there)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mvbrowser import mount_bare

pytestmark = pytest.mark.browser
DOCS = Path(__file__).resolve().parents[2] / "docs" / "img"
LIST = " house fire world book voice light night house fire world"


@pytest.fixture(scope="module")
def views():
    import mechviz

    lab = mechviz.Lab.default(prompt=LIST, sae="all")
    lab.selection.layer, lab.selection.head = 2, 0
    lab.selection.dictionary = "resid_post.1"
    lab.selection.feature = 692
    book = lab.model.tokenizer(" book", add_special_tokens=False)["input_ids"][0]
    return {
        "AttentionView": (".mechviz-attention", lab.attention()),
        "LogitLensView": (".mechviz-logit-lens", lab.logit_lens(k=5)),
        "FeatureView": (".mechviz-features", lab.features(n=10)),
        "HeadGridView": (".mechviz-head-grid", lab.add(mechviz.HeadGridView(), answer=book)),
        "PatchGridView": (".mechviz-patch-grid", lab.patching(LIST, LIST.replace(" book", " king"), site="resid_pre",
                                                            by="position", answers=(" book", " king"))),
        "DashboardView": (".mechviz-dashboard", lab.add(mechviz.DashboardView())),
        "SteeringView": (".mechviz-generation", lab.add(mechviz.SteeringView(), n=10, specs=[(692, 6.0)])),
        "GraphView": (".mechviz-graph", lab.add(mechviz.GraphView(), max_features=300)),
    }


NAMES = ["AttentionView", "LogitLensView", "FeatureView", "HeadGridView", "PatchGridView", "DashboardView",
         "SteeringView", "GraphView"]


@pytest.mark.parametrize("name", NAMES)
def test_view_screenshot(page, views, artifacts, name):
    root, view = views[name]
    assert not view.error, view.error
    page.set_viewport_size({"width": 1100, "height": 900})
    mount_bare(page, view)
    el = page.locator(root).first
    el.wait_for()
    page.wait_for_timeout(300)     # one frame for canvases to paint
    out = artifacts / "readme"
    out.mkdir(exist_ok=True)
    path = out / f"{name}.png"
    el.screenshot(path=str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 8_000, (name, len(data))
    assert page.mv_errors == []
    if os.environ.get("MECHVIZ_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS / f"{name}.png")
