"""Hatch build hook: put the static export's JS into the package before a wheel or sdist is built.

``mechviz.export`` inlines require.js, html-manager's ``embed-amd.js`` and anywidget's AMD build
from ``mechviz/static/export/`` (listed in ``assets.json`` there). They are npm files, git-ignored,
so every build makes sure they are present (``[tool.hatch.build] artifacts`` puts them into the
archives although git ignores them):

1. ``widgets_js/node_modules`` has them: copy them (always, so they match the lockfile);
2. else they are already in ``mechviz/static/export/`` (building a wheel from an sdist): use them;
3. else run ``npm ci --prefix widgets_js`` and copy;
4. else stop with a message saying what is missing and how to get it.

Editable installs are left alone: they read the checkout, where ``make js`` puts the files.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

EXPORT_DIR = Path("mechviz", "static", "export")
BUNDLES = Path("mechviz", "static")
NODE_MODULES = Path("widgets_js", "node_modules")


def _missing(paths: dict[str, Path]) -> list[Path]:
    return [p for p in paths.values() if not p.is_file()]


def ensure_export_assets(root: Path, log=print) -> str:
    """Make ``mechviz/static/export/<name>`` exist for every file of ``assets.json``; return how."""
    files = json.loads((root / EXPORT_DIR / "assets.json").read_text(encoding="utf-8"))["files"]
    src = {name: root / NODE_MODULES / npm_path for name, npm_path in files.items()}
    dst = {name: root / EXPORT_DIR / name for name in files}
    how = "copied from widgets_js/node_modules"
    if _missing(src):
        if not _missing(dst):
            return "already in mechviz/static/export (no widgets_js/node_modules to refresh them from)"
        npm = shutil.which("npm")
        if npm is None or not (root / "widgets_js" / "package-lock.json").is_file():
            raise RuntimeError(
                "mechviz build: the static export's JS is missing ("
                + ", ".join(str(p.relative_to(root)) for p in _missing(dst)) + ") and cannot be fetched: "
                + ("npm is not installed" if npm is None else "widgets_js/package-lock.json is missing")
                + ". Install Node.js/npm and run `npm ci --prefix widgets_js` (or `make js`) in the mechviz "
                "checkout, then build again; or build from an sdist, which contains them.")
        log("mechviz build: widgets_js/node_modules is missing; running npm ci --prefix widgets_js")
        subprocess.run([npm, "ci", "--prefix", str(root / "widgets_js"), "--no-audit", "--no-fund",
                        "--loglevel=error"], check=True)
        if still := _missing(src):
            raise RuntimeError(f"mechviz build: npm ci did not provide {', '.join(map(str, still))}")
        how = "copied from widgets_js/node_modules after npm ci"
    for name in files:
        shutil.copyfile(src[name], dst[name])
    return how


class CustomBuildHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        if version == "editable":
            return
        root = Path(self.root)
        if not any((root / BUNDLES).glob("*.js")):
            raise RuntimeError("mechviz build: no widget bundles in mechviz/static/*.js; run `make js`")
        how = ensure_export_assets(root, log=self.app.display_info)
        self.app.display_info(f"mechviz build: export assets {how}")
