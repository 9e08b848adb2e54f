"""Packaging: the wheel holds the widget bundles and the static export's JS, the export finds its JS
in the installed package, the version has one source, and scripts/check_export.py reads pages."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import mechviz
from mechviz import export

REPO = Path(__file__).resolve().parents[1]
NODE_MODULES = REPO / "widgets_js" / "node_modules"
CHECK_EXPORT = REPO / "scripts" / "check_export.py"
MANIFEST = json.loads((REPO / "mechviz" / "static" / "export" / "assets.json").read_text())["files"]
BUNDLES = sorted(p.stem for p in (REPO / "widgets_js" / "src").glob("*.js"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel built from this checkout, offline: hatchling from this environment, no index."""
    pytest.importorskip("hatchling", reason="hatchling (in the test extra) builds the wheel offline")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(out), str(REPO)], check=True)
    (path,) = out.glob("mechviz_lab-*.whl")
    with zipfile.ZipFile(path) as zf:
        yield zf


def _metadata(wheel: zipfile.ZipFile) -> tuple[str, dict[str, list[str]]]:
    info = f"mechviz_lab-{mechviz.__version__}.dist-info"
    fields: dict[str, list[str]] = {}
    for line in wheel.read(f"{info}/METADATA").decode().split("\n\n")[0].splitlines():
        key, _, value = line.partition(": ")
        fields.setdefault(key, []).append(value)
    return info, fields


def test_wheel_holds_the_bundles_and_the_export_assets(wheel):
    names = set(wheel.namelist())
    assert BUNDLES == ["attention", "dashboard", "features", "generation", "graph", "head_grid", "logit_lens", "panel", "patch_grid", "prompt"]
    for b in BUNDLES:
        assert wheel.read(f"mechviz/static/{b}.js") == (REPO / "mechviz" / "static" / f"{b}.js").read_bytes()
    assert sorted(MANIFEST) == ["anywidget.js", "embed-amd.js", "require.js"]
    for name, npm_path in MANIFEST.items():
        data = wheel.read(f"mechviz/static/export/{name}")
        if NODE_MODULES.is_dir():  # the build copied exactly the npm file
            assert data == (NODE_MODULES / npm_path).read_bytes(), name
        assert len(data) > 10_000, name
    assert b'define(["@jupyter-widgets/base"], widget_default);' in wheel.read("mechviz/static/export/anywidget.js")
    assert "mechviz/static/export/assets.json" in names
    assert "mechviz/zoo/default/model/model.safetensors" in names   # the bundled model ships too
    assert not [n for n in names if n.startswith(("tests/", "widgets_js/", "scripts/")) or "__pycache__" in n]


def test_wheel_metadata(wheel):
    info, meta = _metadata(wheel)
    assert meta["Name"] == ["mechviz-lab"] and meta["Version"] == [mechviz.__version__]
    assert meta["License-Expression"] == ["MIT"] and meta["License-File"] == ["LICENSE"]
    assert wheel.read(f"{info}/licenses/LICENSE").decode().startswith("MIT License")
    assert "Copyright (c) 2026 the mechviz developers" in wheel.read(f"{info}/licenses/LICENSE").decode()
    entry_points = wheel.read(f"{info}/entry_points.txt").decode()
    assert re.search(r"^mechviz-export = mechviz\.export:main$", entry_points, re.M), entry_points
    requires = meta["Requires-Dist"]
    for req in ("transformers>=5.0", "anywidget<0.12,>=0.11", "transformer-lens<4,>=3.8; extra == 'tl'",
                "nbclient>=0.10; extra == 'export'", "sae-lens>=6.37.2; extra == 'saelens'"):
        assert req in requires, (req, requires)
    assert {"tl", "saelens", "export", "lab", "test"} <= set(meta["Provides-Extra"])


def test_build_hook_copies_keeps_or_explains(tmp_path, monkeypatch):
    """hatch_build.ensure_export_assets on a tree with node_modules (copies), without it but with the
    copies (an sdist: keeps them), and with neither and no npm (says what to do)."""
    pytest.importorskip("hatchling")
    sys.path.insert(0, str(REPO))
    try:
        import hatch_build
    finally:
        sys.path.remove(str(REPO))
    out = tmp_path / "mechviz" / "static" / "export"
    out.mkdir(parents=True)
    (out / "assets.json").write_bytes((REPO / "mechviz" / "static" / "export" / "assets.json").read_bytes())
    for name, npm_path in MANIFEST.items():
        src = tmp_path / "widgets_js" / "node_modules" / npm_path
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text(f"// {npm_path}\n")
    assert hatch_build.ensure_export_assets(tmp_path) == "copied from widgets_js/node_modules"
    assert {n: (out / n).read_text() for n in MANIFEST} == {n: f"// {p}\n" for n, p in MANIFEST.items()}

    shutil.rmtree(tmp_path / "widgets_js" / "node_modules")
    assert hatch_build.ensure_export_assets(tmp_path).startswith("already in mechviz/static/export")

    (out / "embed-amd.js").unlink()
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    with pytest.raises(RuntimeError) as e:
        hatch_build.ensure_export_assets(tmp_path)
    assert "missing (mechviz/static/export/embed-amd.js) and cannot be fetched: npm is not installed" in str(e.value)
    assert "npm ci --prefix widgets_js" in str(e.value)


def test_export_reads_its_assets_from_the_installed_package(monkeypatch):
    monkeypatch.delenv("MECHVIZ_NODE_MODULES", raising=False)
    pkg = Path(mechviz.__file__).resolve().parent
    assert export.ASSET_DIR == pkg / "static" / "export"
    paths = export.asset_paths()
    assert paths == {name: pkg / "static" / "export" / name for name in MANIFEST}
    assert all(p.is_file() and p.stat().st_size > 10_000 for p in paths.values()), "run `make js`"


def test_node_modules_override_reads_the_npm_files(monkeypatch):
    if not NODE_MODULES.is_dir():
        pytest.skip("widgets_js/node_modules missing: run `make js`")
    monkeypatch.setenv("MECHVIZ_NODE_MODULES", str(NODE_MODULES))
    paths = export.asset_paths()
    assert paths == {name: NODE_MODULES / npm_path for name, npm_path in MANIFEST.items()}
    for name, p in paths.items():  # node widgets_js/build.mjs copied these very files into the package
        assert p.read_bytes() == (export.ASSET_DIR / name).read_bytes(), name


def test_missing_assets_error_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("MECHVIZ_NODE_MODULES", str(tmp_path))
    with pytest.raises(FileNotFoundError) as e:
        export.inline_cdn_assets("<html></html>")
    msg = str(e.value)
    assert str(tmp_path / "requirejs" / "require.js") in msg
    assert "MECHVIZ_NODE_MODULES must name a node_modules folder" in msg and "--no-inline" in msg


def test_inlined_anywidget_is_the_version_the_python_side_declares():
    """The saved state names anywidget's module version (``~0.11.*``); the inlined JS must be that one."""
    from anywidget._version import _ANYWIDGET_SEMVER_VERSION

    js = (export.ASSET_DIR / "anywidget.js").read_text()
    (js_version,) = re.findall(r'var version = "([^"]+)";', js)
    major, minor = js_version.split(".")[:2]
    assert _ANYWIDGET_SEMVER_VERSION == f"~{major}.{minor}.*", (_ANYWIDGET_SEMVER_VERSION, js_version)


def test_one_version():
    from importlib.metadata import version

    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^dynamic = \["version"\]$', pyproject, re.M) and not re.search(r"^version\s*=", pyproject, re.M)
    assert re.search(r'^\[tool\.hatch\.version\]\npath = "mechviz/__init__\.py"$', pyproject, re.M)
    package = json.loads((REPO / "widgets_js" / "package.json").read_text())
    lock = json.loads((REPO / "widgets_js" / "package-lock.json").read_text())
    assert package["version"] == lock["version"] == lock["packages"][""]["version"] == mechviz.__version__
    assert version("mechviz-lab") == mechviz.__version__


def test_export_kernel_is_this_python_and_imports_this_mechviz(tmp_path):
    km = export._kernel_manager()
    assert km.kernel_spec.argv[:3] == [sys.executable, "-m", "ipykernel_launcher"]
    env = export._kernel_env(tmp_path)
    probe = "import importlib.util as u; print(u.find_spec('mechviz').submodule_search_locations[0])"
    found = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                           check=True).stdout.strip()
    assert Path(found).resolve() == Path(mechviz.__file__).resolve().parent


def test_cli_is_mechviz_export(capsys):
    with pytest.raises(SystemExit) as e:
        export.main(["--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("usage: mechviz-export [-h]")


# --- scripts/check_export.py on pages made here (no kernel) --------------------------------------

def _page(tmp_path, widgets, *, inline: bool) -> Path:
    """nbconvert's HTML for a notebook whose saved widget state holds ``widgets`` (inlined or CDN)."""
    import ipywidgets
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("saved state only")]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json":
                              ipywidgets.Widget.get_manager_state(widgets=widgets)}
    html, _ = HTMLExporter().from_notebook_node(nb)
    if inline:
        html = export.inline_cdn_assets(html, keep_mathjax=False)
    path = tmp_path / ("inline.html" if inline else "cdn.html")
    path.write_text(html)
    return path


def _check(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK_EXPORT), *map(str, args)], capture_output=True, text=True)


def test_check_export_reads_the_selection_and_counts_models(tmp_path):
    from mechviz.widgets.prompt import PromptBox
    from mechviz.widgets.selection import Selection

    sel = Selection(layer=2, head=0, token=5)
    page = _page(tmp_path, [sel, PromptBox(), PromptBox()], inline=True)
    r = _check(page, "--expect-selection", "layer=2,head=0,token=5",
               "--expect-model", "mechviz.widgets.prompt.PromptBox")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "   2  mechviz.widgets.prompt.PromptBox" in r.stdout
    assert "   1  @jupyter-widgets/base.WidgetModel" in r.stdout
    assert "Selection(layer=2, head=0, token=5, feature=-1)" in r.stdout and r.stdout.endswith("ok\n")

    r = _check(page, "--expect-selection", "layer=1,head=0",
               "--expect-model", "mechviz.widgets.attention.AttentionView")
    assert r.returncode == 1
    assert "FAIL: Selection holds {'layer': 2}, expected {'layer': 1}" in r.stderr
    assert "FAIL: no mechviz.widgets.attention.AttentionView model in the widget state" in r.stderr


def test_check_export_flags_cdn_scripts_and_missing_state(tmp_path):
    from mechviz.widgets.selection import Selection

    cdn = _page(tmp_path, [Selection()], inline=False)
    r = _check(cdn)
    assert r.returncode == 1
    failed = r.stderr.splitlines()
    assert any("cdnjs.cloudflare.com/ajax/libs/require.js" in f for f in failed), failed
    assert any("unpkg.com/@jupyter-widgets/html-manager@" in f for f in failed), failed
    assert _check(cdn, "--allow-cdn").returncode == 0

    bare = tmp_path / "bare.html"
    bare.write_text("<html><body><p>no widgets</p></body></html>")
    r = _check(bare, "--expect-selection", "layer=2")
    assert r.returncode == 1 and "FAIL: no saved widget state" in r.stderr


def test_readme_installs_the_distribution_by_its_name():
    """The README's user install lines name the distribution pyproject builds (not PyPI's unrelated `mechviz`),
    and every extra they name exists."""
    import re
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    readme = (REPO / "README.md").read_text()
    assert project["name"] == "mechviz-lab" and f"pip install {project['name']}" in readme
    extras = re.findall(r"pip install '" + re.escape(project["name"]) + r"\[(\w+)\]'", readme)
    assert extras and set(extras) <= set(project["optional-dependencies"])
