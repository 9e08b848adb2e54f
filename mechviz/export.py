"""Export a notebook with live mechviz views to one HTML file that renders with no kernel.

Widget state (including the binary arrays, stored base64, and each view's ES module) is saved into
the notebook by nbclient (``store_widget_state=True``); nbconvert's HTML then draws the views with
``@jupyter-widgets/html-manager``. That page normally loads three scripts from CDNs: require.js
(cdnjs), html-manager's ``embed-amd.js`` (unpkg) and anywidget's AMD build (jsDelivr). With
``inline_assets=True`` (the default) those are copied into the file from ``mechviz/static/export/``
(shipped in the wheel; in a checkout ``make js`` puts them there), so the page works offline and
forever, at the cost of about 4 MB.

    mechviz-export notebooks/tour.ipynb tour.html                 # execute, then export
    mechviz-export tour.ipynb tour.html --no-execute --no-inline  # saved state, CDN scripts

(``python -m mechviz.export`` is the same command.) Needs the ``export`` extra:
``pip install 'mechviz-lab[export]'``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

__all__ = ["ASSET_DIR", "DEFAULT_BUDGET", "asset_paths", "export_html", "inline_cdn_assets"]

#: where the inlined JS lives in the installed package; ``assets.json`` there lists each file with the
#: npm path it is copied from (by ``widgets_js/build.mjs`` and, for wheels, ``hatch_build.py``)
ASSET_DIR = Path(str(resources.files("mechviz").joinpath("static", "export")))
_REQUIRE, _EMBED, _ANYWIDGET = "require.js", "embed-amd.js", "anywidget.js"

_REQUIRE_TAG = re.compile(r'<script\s+src="[^"]*/require(?:\.min)?\.js"\s*>\s*</script>', re.I)
# the renderer's loader, and its fallback for pre-2.0 widget state (jupyter-js-widgets' embed.js)
_RENDERER_SRC = re.compile(
    r"(var\s+widgetRendererSrc\s*=\s*)'[^']*(?:html-manager[^']*embed-amd|jupyter-js-widgets[^']*embed)\.js'")
_MATHJAX_TAG = re.compile(r'<script\s+src="[^"]*mathjax[^"]*"\s*>\s*</script>', re.I)
_ANYWIDGET_DEFINE = 'define(["@jupyter-widgets/base"], widget_default);'
_SOURCEMAP = re.compile(r"^//# sourceMappingURL=.*$", re.M)
_MATH = re.compile(r"\$|\\\(|\\\[|\\begin\{")


def asset_paths() -> dict[str, Path]:
    """The JS files the export inlines, by name: ``mechviz/static/export/<name>``, or, when the
    environment variable ``MECHVIZ_NODE_MODULES`` names an npm ``node_modules`` folder, the files
    of the npm packages there.

    >>> sorted(asset_paths())
    ['anywidget.js', 'embed-amd.js', 'require.js']
    """
    files = json.loads((ASSET_DIR / "assets.json").read_text(encoding="utf-8"))["files"]
    nm = os.environ.get("MECHVIZ_NODE_MODULES")
    if nm:
        return {name: Path(nm) / npm_path for name, npm_path in files.items()}
    return {name: ASSET_DIR / name for name in files}


def _read_assets() -> dict[str, str]:
    paths = asset_paths()
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        if os.environ.get("MECHVIZ_NODE_MODULES"):
            how = ("MECHVIZ_NODE_MODULES must name a node_modules folder holding the npm packages "
                   "requirejs, @jupyter-widgets/html-manager and anywidget (unset it to use the copies "
                   "shipped in mechviz)")
        else:
            how = ("an installed mechviz wheel ships them, so reinstall it; in a source checkout run "
                   "`make js` (npm ci --prefix widgets_js && node widgets_js/build.mjs)")
        raise FileNotFoundError(
            f"cannot inline the widget renderer: missing {', '.join(missing)}. {how}. Or export "
            "with inline_assets=False (--no-inline) to load these scripts from their CDNs.")
    return {name: p.read_text(encoding="utf-8") for name, p in paths.items()}


def _script(js: str) -> str:
    """An inline <script> holding ``js`` (no ``</script`` can end it early)."""
    js = _SOURCEMAP.sub("", js)
    js = re.sub(r"</(script)", r"<\\/\1", js, flags=re.I)
    return f"<script>\n{js}\n</script>"


def inline_cdn_assets(html: str, *, keep_mathjax: bool = True) -> str:
    """Replace the CDN script loads in nbconvert's HTML with inlined copies from npm packages.

    * require.js: the ``<script src=".../require.min.js">`` tag becomes an inline script, followed by
      anywidget's AMD build registered under the name ``"anywidget"`` (html-manager's loader first
      asks require.js for ``"anywidget"`` and only falls back to jsDelivr when that fails);
    * ``embed-amd.js``: inlined at the end of the page (all its modules are named ``define``s; it
      renders on ``load``) and the template's loader (also its fallback for pre-2.0 widget state,
      which would load jupyter-js-widgets from unpkg) is pointed at an empty ``data:`` script;
    * MathJax (cdnjs) is dropped when ``keep_mathjax`` is false.
    """
    assets = _read_assets()
    if _ANYWIDGET_DEFINE not in assets[_ANYWIDGET]:
        raise RuntimeError("unexpected anywidget build: no `define([\"@jupyter-widgets/base\"], ...)` to name")
    anywidget_js = assets[_ANYWIDGET].replace(_ANYWIDGET_DEFINE, 'define("anywidget", ["@jupyter-widgets/base"], widget_default);')

    head = _script(assets[_REQUIRE]) + "\n" + _script(anywidget_js)
    html, n = _REQUIRE_TAG.subn(lambda _m: head, html, count=1)
    if n != 1:
        raise RuntimeError("no require.js <script> found in the HTML (did nbconvert's template change?)")
    html, n = _RENDERER_SRC.subn(lambda m: m.group(1) + "'data:text/javascript,'", html)
    if n == 0:
        raise RuntimeError("no html-manager loader found in the HTML (did nbconvert's template change?)")
    if not keep_mathjax:
        html = _MATHJAX_TAG.sub("", html)
    tail = _script(assets[_EMBED])
    idx = html.rfind("</html>")
    return html[:idx] + tail + "\n" + html[idx:] if idx >= 0 else html + tail


def _has_math(nb) -> bool:
    return any(c.cell_type == "markdown" and _MATH.search(c.source) for c in nb.cells)


def _kernel_manager():
    """nbclient's kernel manager, for a kernel of this Python (``sys.executable``): not whatever
    ``python3`` kernelspec Jupyter finds first, which may belong to another environment."""
    from ipykernel.kernelspec import get_kernel_dict
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager  # nbclient's default class

    spec = get_kernel_dict()  # argv: [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]

    class ThisPython(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            return KernelSpec(resource_dir="", argv=spec["argv"], display_name=spec["display_name"],
                              language=spec["language"], metadata=spec["metadata"])

    # named "python3" so that nbclient treats it as ipykernel (in-memory history, no sqlite file)
    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=ThisPython())


_FIND_MECHVIZ = ("import importlib.util as u; s = u.find_spec('mechviz'); "
                 "print(s.submodule_search_locations[0] if s else '')")


def _kernel_env(cwd) -> dict[str, str]:
    """The kernel's environment: this process's, so the kernel (same Python, started in ``cwd``)
    imports mechviz from where this process did (an installed wheel, an editable install,
    PYTHONPATH). Only when it would not (a source checkout run without installing it, found
    through the current directory) is this package's folder put first on PYTHONPATH."""
    env = dict(os.environ)
    here = Path(__file__).resolve().parent
    found = subprocess.run([sys.executable, "-c", _FIND_MECHVIZ], cwd=cwd, env=env, capture_output=True,
                           text=True, check=True).stdout.strip()
    if not found or Path(found).resolve() != here:
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([str(here.parent), *paths])
    return env


#: the default size budget of an exported page (bytes): what a repository or notebook viewer will host
DEFAULT_BUDGET = 25_000_000


def export_html(notebook_path, out_path, *, execute: bool = True, inline_assets: bool = True,
                timeout: int = 600, executed_path=None, budget: int | None = DEFAULT_BUDGET) -> Path:
    """Execute ``notebook_path`` (unless ``execute=False``) and write a static HTML page to ``out_path``.

    The notebook runs in a kernel of this Python (``sys.executable``) that imports this mechviz.
    The views render in the page from their saved widget state: no kernel. ``inline_assets=True``
    makes the page self-contained (no network at all; the scripts come from
    ``mechviz/static/export/``, see :func:`asset_paths`); ``False`` keeps nbconvert's standard CDN
    script tags. ``executed_path``: also save the executed notebook (outputs + widget state) there,
    e.g. to export it again with ``execute=False``. ``budget``: the page's size limit in bytes
    (default 25 MB; ``None``: no limit): a page over it has its largest views' saved data trimmed (an
    attention view keeps the selected head at full resolution, then only its 64x64 overview), each
    trimmed view saying so in a note on the page (see :mod:`mechviz.export_budget`). Returns ``out_path``.
    """
    import nbformat
    from nbconvert import HTMLExporter

    nb_path = Path(notebook_path).resolve()
    out = Path(out_path)
    if inline_assets:
        _read_assets()  # fail before spending minutes executing
    nb = nbformat.read(nb_path, as_version=4)
    if execute:
        from nbclient import NotebookClient

        client = NotebookClient(nb, km=_kernel_manager(), timeout=timeout, store_widget_state=True,
                                resources={"metadata": {"path": str(nb_path.parent)}})
        # cleanup_kc: nbclient only shuts down kernels of managers it made itself
        client.execute(env=_kernel_env(nb_path.parent), cleanup_kc=True)
        if executed_path is not None:
            nbformat.write(nb, str(executed_path))
    if "widgets" not in nb.metadata:
        print(f"mechviz.export: {nb_path.name} has no saved widget state; views will not render "
              "(execute it, or save it from JupyterLab with widget state)", file=sys.stderr)
    def render():
        body, _ = HTMLExporter().from_notebook_node(nb)
        return inline_cdn_assets(body, keep_mathjax=_has_math(nb)) if inline_assets else body

    body = render()
    size = len(body.encode("utf-8"))
    if budget is not None and size > budget:
        from .export_budget import fit_budget

        report = fit_budget(nb, size, budget)
        if report.notes:
            body = render()
        print(f"mechviz.export: {report}", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(body, encoding="utf-8")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="mechviz-export", description=__doc__.split("\n\n")[0])
    ap.add_argument("notebook")
    ap.add_argument("out")
    ap.add_argument("--no-execute", action="store_true", help="use the widget state already saved in the notebook")
    ap.add_argument("--no-inline", action="store_true", help="keep nbconvert's CDN <script> tags (smaller file)")
    ap.add_argument("--timeout", type=int, default=600, help="per-cell timeout in seconds")
    ap.add_argument("--budget-mb", type=float, default=DEFAULT_BUDGET / 1e6,
                    help="size budget of the page in MB (default 25; 0: no limit): larger views are trimmed, "
                         "with a note on the page")
    ap.add_argument("--save-executed", metavar="NB", help="also write the executed notebook (with widget state) here")
    a = ap.parse_args(argv)
    out = export_html(a.notebook, a.out, execute=not a.no_execute, inline_assets=not a.no_inline, timeout=a.timeout,
                      executed_path=a.save_executed, budget=int(a.budget_mb * 1e6) or None)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
