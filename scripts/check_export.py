#!/usr/bin/env python3
"""Check a static HTML export (``mechviz-export``): no CDN scripts, saved widget state, expected values.

    python scripts/check_export.py tour.html
    python scripts/check_export.py tour.html --expect-selection layer=2,head=0 \
        --expect-model mechviz.widgets.attention.AttentionView

Prints the page's widget models counted per class: an anywidget view by its Python class (anywidget
saves it as ``_anywidget_id``), any other model as ``<model_module>.<model_name>``. mechviz's
``Selection`` (the linked layer/head/token/feature of one Lab) is a plain ``@jupyter-widgets/base``
``WidgetModel``; it is recognised by holding those four traits. Exit status 1, with a line
per problem, when a check fails. Standard library only: runs in any Python.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

STATE_MIME = "application/vnd.jupyter.widget-state+json"
CDN_HOSTS = ("unpkg.com", "cdn.jsdelivr.net", "cdnjs.cloudflare.com")
SELECTION_TRAITS = ("layer", "head", "token", "feature")

_STATE_TAG = re.compile(r'<script\s+type="' + re.escape(STATE_MIME) + r'"\s*>(.*?)</script>', re.S | re.I)
_SCRIPT_SRC = re.compile(r"<script\b[^>]*?\bsrc\s*=\s*[\"']?([^\"'\s>]+)", re.I)
# nbconvert's widget loader adds html-manager's <script> from JS: var widgetRendererSrc = '<url>';
_RENDERER_SRC = re.compile(r"widgetRendererSrc\s*=\s*'([^']*)'")


def widget_state(html: str) -> dict:
    """The ``{model_id: model}`` widget state saved in the page (nbconvert puts it in one script tag)."""
    tags = _STATE_TAG.findall(html)
    if len(tags) != 1:
        raise ValueError(f"expected one <script type=\"{STATE_MIME}\"> in the page, found {len(tags)}")
    return json.loads(tags[0])["state"]


def cdn_scripts(html: str) -> list[str]:
    """Scripts the page loads from a CDN (so it needs the network to render): ``<script src=...>``
    tags and nbconvert's widget-renderer loader."""
    return [src for src in _SCRIPT_SRC.findall(html) + _RENDERER_SRC.findall(html)
            if re.match(r"(https?:)?//(" + "|".join(map(re.escape, CDN_HOSTS)) + r")/", src, re.I)]


def model_class(model: dict) -> str:
    anywidget_id = model.get("state", {}).get("_anywidget_id")
    return anywidget_id or f"{model.get('model_module')}.{model.get('model_name')}"


def is_selection(model: dict) -> bool:
    return (model.get("model_module") == "@jupyter-widgets/base" and model.get("model_name") == "WidgetModel"
            and set(SELECTION_TRAITS) <= set(model.get("state", {})))


def parse_expectation(text: str) -> dict[str, int]:
    """``"layer=2,head=0"`` -> ``{"layer": 2, "head": 0}`` (names from layer, head, token, feature)."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in SELECTION_TRAITS:
            raise argparse.ArgumentTypeError(
                f"{item!r}: expected NAME=INT with NAME one of {', '.join(SELECTION_TRAITS)}")
        out[name.strip()] = int(value)
    return out


def check(html: str, *, expect_selection: dict[str, int] | None = None, expect_models=(),
          allow_cdn: bool = False, out=sys.stdout) -> list[str]:
    """Print a summary of the page to ``out`` and return the problems found (empty: all good)."""
    problems = []
    if not allow_cdn:
        problems += [f"<script src> loads from a CDN: {u}" for u in cdn_scripts(html)]
    try:
        state = widget_state(html)
    except ValueError as e:
        return problems + [f"no saved widget state: {e}"]
    buffers = [b for m in state.values() for b in m.get("buffers", [])]
    print(f"widget state: {len(state)} models, {len(buffers)} binary buffers "
          f"({sum(len(b.get('data', '')) for b in buffers) / 1e6:.2f} MB base64)", file=out)
    counts = Counter(model_class(m) for m in state.values())
    for name, n in sorted(counts.items()):
        print(f"  {n:4d}  {name}", file=out)
    selections = [m["state"] for m in state.values() if is_selection(m)]
    for s in selections:
        print("  Selection(" + ", ".join(f"{k}={s[k]}" for k in SELECTION_TRAITS) + ")", file=out)
    for name in expect_models:
        if not counts.get(name):
            problems.append(f"no {name} model in the widget state")
    if expect_selection:
        if not selections:
            problems.append("no mechviz Selection model (WidgetModel with layer/head/token/feature) in the state")
        for s in selections:
            wrong = {k: s.get(k) for k, v in expect_selection.items() if s.get(k) != v}
            if wrong:
                problems.append(f"Selection holds {wrong}, expected {({k: expect_selection[k] for k in wrong})}")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="check_export.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("html", type=Path, help="the exported page")
    ap.add_argument("--expect-selection", type=parse_expectation, metavar="NAME=INT,...",
                    help="every Selection model holds these values, e.g. layer=2,head=0")
    ap.add_argument("--expect-model", action="append", default=[], metavar="CLASS",
                    help="at least one model of this class (as printed), e.g. mechviz.widgets.attention.AttentionView")
    ap.add_argument("--allow-cdn", action="store_true", help="do not fail on <script src> from a CDN")
    a = ap.parse_args(argv)
    html = a.html.read_text(encoding="utf-8")
    print(f"{a.html}: {len(html.encode()) / 1e6:.1f} MB", file=sys.stdout)
    problems = check(html, expect_selection=a.expect_selection, expect_models=a.expect_model, allow_cdn=a.allow_cdn)
    for p in problems:
        print(f"FAIL: {p}", file=sys.stderr)
    if not problems:
        print("ok")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
