"""Long prompts stay live, statically: the dashboard (attention, logit lens, SAE features) of a GPT-2-small
shaped model (12 layers x 12 heads, d_model 768, vocab 50,257; random seeded weights) on a 1,024-token
prompt, exported the way a user does (``mechviz.export.export_html``: the notebook executed by nbclient,
widget state saved, nbconvert, scripts inlined), fits the default 25 MB budget and renders offline.

Why: at 1,024 tokens the attention pattern alone is 12 x 12 x 1,024^2 values (151 MB as uint8); a page
that saved it, or a view that choked on 1,024 columns, would be useless to share. This checks the whole
chain on the real shape, not on hand-made arrays."""

from __future__ import annotations

import base64
import json
import re
import time

import pytest

from mvbrowser import REPO, need_node_modules, route_offline, write_cells

pytestmark = pytest.mark.browser   # ~30 s on two cores (export ~24 s of it)

N = 1024
ATT, LENS, FEAT, BOX = ".mechviz-attention", ".mechviz-logit-lens", ".mechviz-features", ".mechviz-prompt"
LOCAL = ("file://", "data:", "blob:", "about:")
STATE_MIME = "application/vnd.jupyter.widget-state+json"

CELLS = [
    # the benchmark's own model, prompt and SAE (bench/long_prompts.py), one torch thread
    f"""import sys
sys.path.insert(0, {str(REPO)!r})
import torch
torch.set_num_threads(1)
import mechviz
from bench.long_prompts import model_and_tokenizer, prompt_of, sae_for
model, tokenizer = model_and_tokenizer()
prompt = prompt_of(tokenizer, {N})""",
    "lab = mechviz.Lab(model, tokenizer, prompt=prompt, threads=1, sae=sae_for(768), allow_model_mismatch=True)\n"
    "lab.dashboard()",
]


def _reference():
    """``(prompt, token count)`` of the exported prompt, here: the same tokenizer and adapter on a
    1-layer model (the tokens do not depend on the weights)."""
    import sys

    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    import mechviz.zoo as zoo
    from mechviz.models import wrap

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from bench.long_prompts import prompt_of   # the module the notebook uses

    tok = AutoTokenizer.from_pretrained(str(zoo.MODEL_DIR))
    prompt = prompt_of(tok, N)
    tiny = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50257, n_positions=2048)).eval()
    return prompt, len(wrap(tiny, tok).to_tokens(prompt))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from mechviz.export import DEFAULT_BUDGET, export_html

    need_node_modules()
    d = tmp_path_factory.mktemp("export_long")
    nb = write_cells(d / "long.ipynb", CELLS)
    t0 = time.monotonic()
    html = export_html(nb, d / "long.html", inline_assets=True, timeout=300, executed_path=d / "executed.ipynb",
                       budget=DEFAULT_BUDGET)
    took = time.monotonic() - t0
    size = html.stat().st_size
    print(f"GPT-2-small dashboard at {N} tokens: export (execute + convert + inline) {took:.1f}s, "
          f"page {size / 1e6:.2f} MB")
    return html


def _saved_state(html: str) -> dict:
    """The widget state saved in the page (what html-manager renders from), by model id."""
    m = re.search(r'<script type="application/vnd\.jupyter\.widget-state\+json">(.*?)</script>', html, re.S)
    assert m, "no widget state in the page"
    return json.loads(m.group(1))["state"]


def test_gpt2_small_dashboard_1024_tokens_exports_within_budget_and_renders_offline(page, exported, artifacts):
    from mechviz.export import DEFAULT_BUDGET

    prompt, T = _reference()
    size = exported.stat().st_size
    assert size < DEFAULT_BUDGET, f"page is {size / 1e6:.2f} MB, over the {DEFAULT_BUDGET / 1e6:.0f} MB budget"
    html = exported.read_text(encoding="utf-8")

    # every view's state is saved, for this prompt, with its data
    state = _saved_state(html)
    kinds = {}
    for mid, m in state.items():
        kind = m["state"].get("_mv_kind")
        if kind:
            kinds.setdefault(kind, []).append(m)
    assert sorted(kinds) == ["AttentionView", "FeatureView", "LogitLensView"], sorted(kinds)
    assert all(len(v) == 1 for v in kinds.values()), {k: len(v) for k, v in kinds.items()}
    views = {k: v[0] for k, v in kinds.items()}
    tokens = views["AttentionView"]["state"]["tokens"]
    assert len(tokens) == T and abs(T - N) <= 2, (len(tokens), T)   # ~1,024 tokens (BOS included)
    for kind, m in views.items():
        s = m["state"]
        assert s["prompt"] == prompt, kind
        assert s["tokens"] == tokens, kind
        assert s["error"] == "", (kind, s["error"])
        assert m.get("buffers"), f"{kind} saved no arrays"
    buffers = {k: {tuple(b["path"]): len(base64.b64decode(b["data"])) for b in m["buffers"]} for k, m in views.items()}
    att = views["AttentionView"]["state"]
    assert buffers["AttentionView"][("overview", "data")] == 12 * 12 * 64 * 64   # every head's 64x64 thumbnail
    if ("detail", "data") in buffers["AttentionView"]:                           # the selected head(s), full size
        assert buffers["AttentionView"][("detail", "data")] == len(att["detail_heads"]) * T * T
    lens = views["LogitLensView"]["state"]
    assert len(lens["rows"]) == 13                                               # 12 layers + final
    assert buffers["LogitLensView"][("top_probs", "data")] == 13 * T * 5 * 2     # k=5, float16
    F = buffers["FeatureView"][("features", "data")] // 4
    assert F > 0 and buffers["FeatureView"][("acts", "data")] == T * F * 2
    (box,) = [m["state"] for m in state.values() if {"max_tokens", "n_tokens", "shown"} <= set(m["state"])]
    assert box["shown"] == prompt and box["n_tokens"] == T and box["max_tokens"] == 2048, box
    notes = {k: m["state"].get("note", "") for k, m in views.items()}
    print(f"saved: {T} tokens; buffers {buffers}; notes {notes}")

    # offline, with every non-local request aborted: all three views render with T tokens, no error
    log = route_offline(page.context, serve_cdn=False, local_prefixes=LOCAL)
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    t0 = time.monotonic()
    page.goto(exported.resolve().as_uri(), timeout=120_000)
    for root in (ATT, LENS, FEAT):
        page.wait_for_selector(f"{root}[data-ntokens='{T}']", timeout=120_000)
    print(f"page opened and three views drawn in {time.monotonic() - t0:.1f}s")
    assert log["aborted"] == [], log
    assert [u for u in requests if not u.startswith(LOCAL)] == []
    for root in (ATT, LENS, FEAT):
        el = page.locator(root)
        assert el.count() == 1, root
        assert el.get_attribute("data-ntokens") == str(T), root
        assert el.get_attribute("data-prompt") == prompt, root
        assert "mv-has-error" not in (el.get_attribute("class") or ""), (root, el.locator(".mv-error").text_content())
        assert el.locator(".mv-error").text_content() == "", root
    # and they drew something: the attention zoom and the lens and feature grids have ink
    for sel in (f"{ATT} canvas.mv-zoom", f"{LENS} canvas.mv-grid", f"{FEAT} canvas.mv-heat"):
        ink = page.evaluate("""(sel) => { const c = document.querySelector(sel);
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
            for (let i = 0; i < d.length; i += 4) if (d[i + 3] && (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250)) n++;
            return n; }""", sel)
        assert ink > 0, sel
    labels = page.locator(f"{LENS} .mv-collabel").all_text_contents()
    assert labels and all(t in tokens for t in labels)
    page.screenshot(path=str(artifacts / "static_long_1024.png"), full_page=False)
    for root, name in ((LENS, "lens"), (FEAT, "features")):
        page.locator(root).screenshot(path=str(artifacts / f"static_long_1024_{name}.png"))
    assert page.mv_errors == []
