"""Fixtures for the real-browser tests (Playwright sync API + the system Chromium).

Nothing here downloads a browser: Chromium is Debian's (``apt-get install chromium``), launched with
``executable_path``. Network access is never needed: JupyterLab runs with news, update checks and the
PyPI extension manager disabled, and static exports are tested with every non-local request aborted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(Path(__file__).parent) not in sys.path:  # `from mvbrowser import ...` also under --import-mode=importlib
    sys.path.insert(0, str(Path(__file__).parent))
ARTIFACTS = REPO / "test-artifacts"

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
INSTALL_HINT = "install Debian's Chromium: `apt-get install -y chromium` (never `playwright install`)"


def _need(ok: bool, why: str) -> None:
    """Fail in CI (a missing prerequisite there is a broken pipeline), skip locally."""
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/browser" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """``test-artifacts/`` at the repo root: screenshots land here."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def _playwright():
    # module scope, not session: Playwright's sync API keeps an asyncio loop running on the main
    # thread while it is open, and tests elsewhere (the Lab's live loop) must not see that loop
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - depends on the environment
        _need(False, "the `playwright` Python package is missing: pip install 'mechviz-lab[test]'")
    with sync_playwright() as p:
        yield p


@pytest.fixture
def chromium_context(_playwright):
    """A fresh headless Chromium context (new user-data-dir) that the test owns."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    _need(exe is not None, f"chromium not found on PATH: {INSTALL_HINT}")
    user_dir = tempfile.mkdtemp(prefix="mv-chromium-")
    ctx = _playwright.chromium.launch_persistent_context(
        user_dir, executable_path=exe, headless=True, args=CHROMIUM_ARGS,
        viewport={"width": 1280, "height": 1000})
    ctx.set_default_timeout(30_000)
    try:
        yield ctx
    finally:
        ctx.close()
        shutil.rmtree(user_dir, ignore_errors=True)


@pytest.fixture
def page(chromium_context):
    """A page whose uncaught errors are collected in ``page.mv_errors``."""
    pg = chromium_context.pages[0] if chromium_context.pages else chromium_context.new_page()
    pg.mv_errors = []
    pg.on("pageerror", lambda e: pg.mv_errors.append(str(e)))
    return pg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def jupyter_lab(tmp_path_factory):
    """A throwaway JupyterLab server (same Python as the tests) -> ``(url, token, root_dir)``.

    Its kernels inherit this environment plus ``PYTHONPATH=<repo>``, so they import this checkout's
    ``mechviz``. Config, data, IPython, workspace and settings dirs are all temporary, so user settings
    never leak in; news, update checks and the PyPI extension manager are off, so nothing hits the network.
    """
    pytest.importorskip("jupyterlab")
    base = tmp_path_factory.mktemp("lab")
    root, cfg, data, ipy, ws, settings = (base / n for n in ("root", "config", "data", "ipython", "ws", "settings"))
    for d in (root, cfg, data, ipy, ws, settings):
        d.mkdir()
    (cfg / "labconfig").mkdir()
    (cfg / "labconfig" / "page_config.json").write_text(json.dumps({"disabledExtensions": {
        "@jupyterlab/apputils-extension:announcements": True,
        "@jupyterlab/extensionmanager-extension": True,
    }}))
    # the kernel must run this very interpreter: a kernelspec in the private data dir
    kdir = data / "kernels" / "python3"
    kdir.mkdir(parents=True)
    (kdir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (mechviz tests)", "language": "python"}))
    port, token = _free_port(), uuid.uuid4().hex
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(cfg), "JUPYTER_DATA_DIR": str(data),
           "JUPYTER_PATH": str(data), "IPYTHONDIR": str(ipy), "JUPYTER_PLATFORM_DIRS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--ServerApp.token={token}", "--ServerApp.password=",
           f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
           f"--LabApp.workspaces_dir={ws}", f"--LabApp.user_settings_dir={settings}",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.news_url=None",
           "--LabApp.extension_manager=readonly", "--allow-root"]
    url = f"http://127.0.0.1:{port}"
    proc = _serve(cmd, env, root, base / "server.log", f"{url}/api/status?token={token}", "jupyter lab")
    try:
        yield url, token, root
    finally:
        _stop(proc)


def _serve(cmd, env, cwd, log_path, ready_url, what):
    """Start ``cmd`` (its own process group) and wait until ``ready_url`` answers; -> the Popen."""
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.mv_log = log
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{Path(log_path).read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(ready_url, timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if time.monotonic() > deadline:
            _stop(proc)
            raise TimeoutError(f"{what} did not answer {ready_url}:\n{Path(log_path).read_text()[-3000:]}")
        time.sleep(0.25)


def _stop(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # our own process group (server + its kernels)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.mv_log.close()


def _private_env(base: Path) -> dict:
    """This environment with private Jupyter/IPython/home dirs and ``PYTHONPATH=<repo>``."""
    dirs = {n: base / n for n in ("config", "data", "ipython", "home")}
    for d in dirs.values():
        d.mkdir(exist_ok=True)
    return {**os.environ, "JUPYTER_CONFIG_DIR": str(dirs["config"]), "JUPYTER_DATA_DIR": str(dirs["data"]),
            "JUPYTER_PATH": str(dirs["data"]), "IPYTHONDIR": str(dirs["ipython"]), "JUPYTER_PLATFORM_DIRS": "1",
            "HOME": str(dirs["home"]), "XDG_CONFIG_HOME": str(dirs["home"] / ".config"),
            "XDG_STATE_HOME": str(dirs["home"] / ".state"), "XDG_CACHE_HOME": str(dirs["home"] / ".cache"),
            "MARIMO_SKIP_UPDATE_CHECK": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


@pytest.fixture(scope="module")
def notebook7(tmp_path_factory):
    """A throwaway Notebook 7 server (``jupyter notebook``, same Python) -> ``(url, token, root_dir)``;
    private config/data dirs as in :func:`jupyter_lab`, nothing reaches the network."""
    pytest.importorskip("notebook")
    base = tmp_path_factory.mktemp("nb7")
    root = base / "root"
    root.mkdir()
    env = _private_env(base)
    kdir = Path(env["JUPYTER_DATA_DIR"]) / "kernels" / "python3"
    kdir.mkdir(parents=True)
    (kdir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (mechviz tests)", "language": "python"}))
    port, token = _free_port(), uuid.uuid4().hex
    cmd = [sys.executable, "-m", "jupyter", "notebook", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--ServerApp.token={token}", "--ServerApp.password=",
           f"--ServerApp.root_dir={root}", "--expose-app-in-browser",
           # the JupyterLab extension the server also loads: no update check, news or PyPI manager
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.news_url=None",
           "--LabApp.extension_manager=readonly", "--allow-root"]
    url = f"http://127.0.0.1:{port}"
    proc = _serve(cmd, env, root, base / "server.log", f"{url}/api/status?token={token}", "jupyter notebook")
    try:
        yield url, token, root
    finally:
        _stop(proc)


@pytest.fixture
def marimo_app(tmp_path):
    """``marimo_app(source, mode="run")`` serves the marimo app ``source`` (``marimo run``, or ``"edit"``)
    headless on a free local port, no token, no update check -> its URL; stopped after the test."""
    import importlib.util

    # only whether it is installed: the app runs in its own process, and importing marimo here would fail once
    # nnsight is imported in this process (nnsight 0.8.1 then marimo 0.25.2: a TypeError in marimo's config)
    if importlib.util.find_spec("marimo") is None:
        pytest.skip("marimo is not installed (pip install 'mechviz-lab[marimo]')")
    procs = []

    def start(source: str, mode: str = "run") -> str:
        app = tmp_path / "app.py"
        app.write_text(source)
        port = _free_port()
        cmd = [sys.executable, "-m", "marimo", "-y", mode, str(app), "--headless", f"--port={port}",
               "--host=127.0.0.1", "--no-token", "--no-sandbox"]
        url = f"http://127.0.0.1:{port}"
        procs.append(_serve(cmd, _private_env(tmp_path), tmp_path, tmp_path / f"marimo-{port}.log",
                            f"{url}/health", f"marimo {mode}"))
        return url

    yield start
    for p in procs:
        _stop(p)
