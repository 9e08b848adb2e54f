"""P4: the attention view's paint and hover cost in a real browser (headless Debian Chromium through
Playwright, a bare page with a stand-in model, as tests/browser/mvbrowser.py:mount_bare does).

For each prompt length T on the GPT-2-small shape (12 layers x 12 heads; random causal softmax
patterns built in numpy, ``AttentionView().show(pattern, tokens)``), with the view's state already in
the page (what the kernel sends, binary buffers included):

(a) first paint: from handing the model to the view (``render``) until the zoomed head, the
    thumbnails, the labels and the token strip are drawn and the frame holding them is painted
    (``requestAnimationFrame`` then a posted message, which runs after that frame's paint); the
    median of ``--runs`` fresh views, plus the synchronous ``render`` alone and the first (cold) run;
(b) hover: ``--moves`` mousemove events over the zoomed head, one per animation frame, each on
    another cell: the mean and p95 frame interval, the fps that makes, and the handler's mean time;
(c) the longest main-thread task (PerformanceObserver ``longtask``, which reports tasks >= 50 ms) in
    each phase.

    python bench/browser_paint.py [--tokens 128 512 1024 2048] [--runs 7] [--moves 120]

Targets: first paint < 250 ms at 512 tokens; hover >= 30 fps.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "browser"))

from mvbrowser import _state_b64  # noqa: E402  (the state the kernel would send, buffers in base64)

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LAYERS = HEADS = 12

# the page keeps the decoded state and the module; each run renders a fresh view from them
SETUP = """
async ([esm, state, paths, b64]) => {
  for (let k = 0; k < paths.length; k++) {
    const bin = Uint8Array.from(atob(b64[k]), (c) => c.charCodeAt(0));
    let o = state; const p = paths[k];
    for (let i = 0; i < p.length - 1; i++) o = o[p[i]];
    o[p[p.length - 1]] = new DataView(bin.buffer);
  }
  const url = URL.createObjectURL(new Blob([esm], {type: 'text/javascript'}));
  window.mv = {state, mod: (await import(url)).default, tasks: []};
  new PerformanceObserver((list) => { for (const e of list.getEntries()) window.mv.tasks.push([e.startTime, e.duration]); })
    .observe({type: 'longtask', buffered: true});
}
"""

# one fresh view: times from render() to the painted frame; the previous view is removed first
PAINT = """
async () => {
  const {state, mod} = window.mv;
  if (window.mv.el) { window.mv.stop && window.mv.stop(); window.mv.el.remove(); }
  const data = new Map(Object.entries(state)), handlers = new Map();
  const model = {
    get: (k) => data.get(k),
    set: (k, v) => { data.set(k, v); (handlers.get('change:' + k) || []).forEach((f) => f()); },
    on: (e, f) => handlers.set(e, [...(handlers.get(e) || []), f]),
    off: (e, f) => handlers.set(e, (handlers.get(e) || []).filter((g) => g !== f)),
    save_changes() {}, send() {},
  };
  const el = document.createElement('div');
  document.body.appendChild(el);
  await new Promise((r) => setTimeout(r, 50));            // a quiet main thread before the clock starts
  const t0 = performance.now();
  const stop = mod.render({model, el});
  const t1 = performance.now();
  await new Promise((r) => requestAnimationFrame(r));
  await new Promise((r) => { const ch = new MessageChannel(); ch.port1.onmessage = r; ch.port2.postMessage(0); });
  const t2 = performance.now();
  Object.assign(window.mv, {el, stop, model});
  const z = el.querySelector('canvas.mv-zoom');
  return {render: t1 - t0, paint: t2 - t0, t0, t2, zoom: z.width, thumbs: el.querySelectorAll('canvas.mv-thumb').length,
          drawn: el.dataset.draws === '1' && z.width > 1};
}
"""

# n mousemoves, one per animation frame, each over another cell of the zoomed head
HOVER = """
async (n) => {
  const z = window.mv.el.querySelector('canvas.mv-zoom'), info = window.mv.el.querySelector('.mv-info');
  const r = z.getBoundingClientRect();
  const stamps = [], handler = [];
  let seen = 0;
  const t0 = performance.now();
  for (let k = 0; k <= n; k++) {
    stamps.push(await new Promise((res) => requestAnimationFrame(res)));
    if (k === n) break;
    const x = (k * 37 + 11) % Math.floor(r.width), y = (k * 53 + 7) % Math.floor(r.height);
    const before = info.textContent;
    const h0 = performance.now();
    z.dispatchEvent(new MouseEvent('mousemove', {bubbles: true, clientX: Math.ceil(r.left + x), clientY: Math.ceil(r.top + y)}));
    handler.push(performance.now() - h0);
    if (info.textContent !== before) seen++;
  }
  const t1 = performance.now();
  const iv = stamps.slice(1).map((s, i) => s - stamps[i]);
  return {iv, handler, seen, t0, t1, text: info.textContent};
}
"""


def patterns(T: int, seed: int = 0) -> np.ndarray:
    """``[12, 12, T, T]`` causal softmax of 3 x N(0, 1) logits (rows sum to 1; sharp enough to draw)."""
    rng = np.random.default_rng(seed)
    out = np.empty((LAYERS, HEADS, T, T), np.float32)
    future = np.triu(np.ones((T, T), bool), 1)
    for layer in out:                     # layer by layer: small temporaries
        rng.standard_normal(out=layer, dtype=np.float32)
        layer *= 3
        layer[:, future] = -np.inf
        layer -= layer.max(-1, keepdims=True)
        np.exp(layer, out=layer)
        layer /= layer.sum(-1, keepdims=True)
    return out


def longest(tasks, t0, t1) -> float:
    """Longest long task that overlaps [t0, t1] (0: none, i.e. every task was under 50 ms)."""
    return max((d for s, d in tasks if s < t1 and s + d > t0), default=0.0)


def fmt_task(ms: float) -> str:
    return f"{ms:.0f}" if ms else "<50"


def bench(page, T: int, runs: int, moves: int) -> dict:
    from mechviz.widgets.attention import AttentionView

    t = time.perf_counter()
    pattern = patterns(T)
    v = AttentionView()
    v.show(pattern, [f" w{i}" for i in range(T)], prompt=f"{T} tokens")
    del pattern
    state, paths, b64 = _state_b64(v)
    prep = time.perf_counter() - t
    page.set_content("<!doctype html><html><body style='font-family:sans-serif'></body></html>")
    page.evaluate(SETUP, [v._esm, state, paths, b64])
    res = [page.evaluate(PAINT) for _ in range(runs)]
    assert all(r["drawn"] and r["thumbs"] == HEADS for r in res), res[0]
    paint = [r["paint"] for r in res]
    page.wait_for_timeout(100)
    hv = page.evaluate(HOVER, moves)
    assert hv["seen"] >= moves * 0.9, hv            # (nearly) every move named another cell
    page.wait_for_timeout(100)                       # long tasks are reported after they end
    tasks = page.evaluate("() => window.mv.tasks")
    iv = np.array(hv["iv"])
    return {
        "T": T, "prep_s": prep, "zoom": res[0]["zoom"], "detail": v.detail_heads,
        "paint_med": statistics.median(paint), "paint_cold": paint[0],
        "render_med": statistics.median(r["render"] for r in res),
        "paint_task": max(longest(tasks, r["t0"], r["t2"]) for r in res),
        "iv_mean": float(iv.mean()), "iv_p95": float(np.percentile(iv, 95)), "fps": 1000 / float(iv.mean()),
        "handler_mean": float(np.mean(hv["handler"])), "hover_task": longest(tasks, hv["t0"], hv["t1"]),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[128, 512, 1024, 2048])
    ap.add_argument("--runs", type=int, default=7, help="fresh views per length (the median is reported)")
    ap.add_argument("--moves", type=int, default=120, help="mousemoves in the hover phase")
    args = ap.parse_args(argv)

    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        sys.exit("chromium not found on PATH: apt-get install -y chromium")
    rows = []
    with sync_playwright() as p, tempfile.TemporaryDirectory(prefix="mv-bench-") as user_dir:
        ctx = p.chromium.launch_persistent_context(user_dir, executable_path=exe, headless=True, args=CHROMIUM_ARGS,
                                                   viewport={"width": 1400, "height": 1500})
        ctx.set_default_timeout(120_000)
        page = ctx.pages[0] if ctx.pages else ctx.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        version = ctx.browser.version if ctx.browser else "?"
        for T in args.tokens:
            rows.append(bench(page, T, args.runs, args.moves))
            r = rows[-1]
            print(f"T={T}: paint {r['paint_med']:.1f} ms, hover {r['fps']:.0f} fps (prepared in {r['prep_s']:.1f} s)",
                  file=sys.stderr, flush=True)
        ctx.close()
    if errors:
        sys.exit(f"page errors: {errors}")
    print(f"\nAttention view in headless Chromium {version} ({LAYERS} layers x {HEADS} heads, bare page; "
          f"paint: median of {args.runs} fresh views; hover: {args.moves} mousemoves, one per frame)\n")
    print("| tokens | zoom px | detail heads | first paint ms (median) | cold ms | render() ms | longest task, paint ms "
          "| hover frame ms mean / p95 | hover fps | handler ms | longest task, hover ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['T']} | {r['zoom']} | {len(r['detail'])} | {r['paint_med']:.1f} | {r['paint_cold']:.1f} "
              f"| {r['render_med']:.1f} | {fmt_task(r['paint_task'])} | {r['iv_mean']:.1f} / {r['iv_p95']:.1f} "
              f"| {r['fps']:.0f} | {r['handler_mean']:.2f} | {fmt_task(r['hover_task'])} |")
    print("\ntargets: first paint < 250 ms at 512 tokens; hover >= 30 fps")


if __name__ == "__main__":
    main()
