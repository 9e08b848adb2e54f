"""Working with the bundled model prints nothing and warns nothing: loading it (HF and TransformerLens), a Lab
with attention, logit lens and features, steering, a patching grid, activation patching on resid_pre and z.

It runs in a fresh interpreter (with the hub off) so that nothing is hidden by state an earlier test left:
transformers' warn-once caches, handlers bound to an old stderr, filters. Each step runs under
``warnings.catch_warnings(record=True)`` with ``simplefilter("always")``, with file descriptors 1 and 2
redirected to files, so progress bars, logging and prints are caught whatever stream object they hold.

No third-party warning is allowed here: none is left on this path. (TransformerLens 3's
"HookedTransformer is deprecated" DeprecationWarning, raised when the TL copy is built, is silenced
inside ``mechviz.models.tl_convert.hf_to_tl`` itself, where its docstring says so.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r'''
import contextlib, json, os, sys, tempfile, traceback, warnings

STEPS = {}


@contextlib.contextmanager
def step(name):
    out = {"warnings": [], "stdout": "", "stderr": "", "error": None}
    files = {fd: tempfile.TemporaryFile() for fd in (1, 2)}
    saved = {}
    sys.stdout.flush(); sys.stderr.flush()
    for fd, f in files.items():
        saved[fd] = os.dup(fd)
        os.dup2(f.fileno(), fd)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield
            except Exception:
                out["error"] = traceback.format_exc()
    finally:
        sys.stdout.flush(); sys.stderr.flush()
        for fd, f in files.items():
            os.dup2(saved[fd], fd)
            os.close(saved[fd])
            f.seek(0)
            out["stdout" if fd == 1 else "stderr"] = f.read().decode("utf-8", "replace")
            f.close()
        out["warnings"] = [f"{w.category.__name__} at {w.filename}:{w.lineno}: {w.message}" for w in caught]
        STEPS[name] = out


R = {}
P = "The cat sat on the mat. The cat"
C = "When Moses and Aaron went to the house, Moses gave a drink to"
X = "When Moses and Aaron went to the house, Aaron gave a drink to"
ANSWERS = (" Aaron", " Moses")

with step("import"):
    import numpy as np
    import mechviz
    from mechviz import zoo
    from mechviz.analysis.patching import activation_patching

with step("load HF"):
    model, tok = zoo.load_default_model()

with step("Lab with attention, logit lens, features"):
    lab = mechviz.Lab(model, tok, sae=zoo.SAE_DIR, prompt=P)
    attn, lens, feat = lab.attention(), lab.logit_lens(), lab.features()
    lab.prompt = "In the beginning God created the heaven and the earth."
    R["attn_shape"] = list(attn.data["pattern"].shape)
    R["lens_shape"] = list(lens.data["top_probs"].shape)
    R["feat_shape"] = list(feat.data["acts"].shape)
    R["feat_max"] = float(feat.data["acts"].max())

with step("steering"):
    before = lab.run(capture=["resid_post.1"]).logits[-1]
    lab.steer(158, 20.0)
    after = lab.run(capture=["resid_post.1"]).logits[-1]
    R["steer_changes_logits"] = float((after - before).abs().max())
    lab.steer(None)

with step("patching grid (Lab)"):
    view = lab.patching(C, X, site="z", by="head", answers=ANSWERS)
    R["grid_status"] = view.status
    R["grid"] = np.asarray(view.data["values"]).tolist()

with step("activation_patching resid_pre"):
    g = activation_patching(lab.model, C, X, "resid_pre", answers=ANSWERS)
    R["resid_pre"] = g.values.tolist()

with step("activation_patching z by head_position"):
    g = activation_patching(lab.model, C, X, "z", by="head_position", answers=ANSWERS)
    R["z_shape"] = list(g.values.shape)
    R["z_finite"] = bool(np.isfinite(g.values).all())

with step("load TransformerLens"):
    tl, tl_tok = zoo.load_default_model(backend="transformer_lens")

with step("TL Lab, views, steering, patching"):
    tlab = mechviz.Lab(tl, sae=zoo.SAE_DIR, prompt=P)
    tlab.attention(), tlab.logit_lens(), tlab.features()
    tlab.steer(158, 20.0)
    tlab.steer(None)
    tview = tlab.patching(C, X, site="z", by="head", answers=ANSWERS)
    R["tl_grid"] = np.asarray(tview.data["values"]).tolist()
    R["tl_resid_pre"] = activation_patching(tlab.model, C, X, "resid_pre", answers=ANSWERS).values.tolist()

print(json.dumps({"steps": STEPS, "results": R}))
'''


@pytest.fixture(scope="module")
def report():
    pytest.importorskip("transformer_lens")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           "MECHVIZ_TORCH_THREADS": os.environ.get("MECHVIZ_TORCH_THREADS", "1")}
    env.pop("PYTHONWARNINGS", None)
    env.pop("TQDM_DISABLE", None)  # progress bars must be off because mechviz turns them off
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=str(ROOT),
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads(proc.stdout)


def test_every_step_ran(report):
    _, rep = report
    errors = {name: s["error"] for name, s in rep["steps"].items() if s["error"]}
    assert not errors, "\n".join(f"{k}:\n{v}" for k, v in errors.items())
    assert len(rep["steps"]) == 9


def test_no_warning_and_no_output(report):
    proc, rep = report
    noisy = {name: {k: s[k] for k in ("warnings", "stdout", "stderr") if s[k]} for name, s in rep["steps"].items()}
    noisy = {name: v for name, v in noisy.items() if v}
    assert not noisy, json.dumps(noisy, indent=1)
    assert proc.stderr == ""
    assert len(proc.stdout.strip().splitlines()) == 1  # the report alone


def test_the_steps_computed_real_values(report):
    _, r = report
    r = r["results"]
    assert r["attn_shape"][:2] == [4, 4] and r["attn_shape"][2] == r["attn_shape"][3] > 10
    assert r["lens_shape"] == [5, r["attn_shape"][2], 5]  # embeddings + 4 layers, positions, top 5
    assert r["feat_shape"] == [r["attn_shape"][2], 12] and r["feat_max"] > 1.0
    assert r["steer_changes_logits"] > 0.1
    assert r["grid_status"] == "done"
    grid, tl_grid = np.array(r["grid"]), np.array(r["tl_grid"])
    assert grid.shape == (4, 4) and np.isfinite(grid).all() and np.ptp(grid) > 0.1
    resid, tl_resid = np.array(r["resid_pre"]), np.array(r["tl_resid_pre"])
    assert resid.shape == (4, 16) and np.ptp(resid) > 0.1
    assert r["z_shape"] == [4, 16, 4] and r["z_finite"]  # layer, position, head
    # the HF model and its TransformerLens copy give the same grids
    assert np.abs(grid - tl_grid).max() < 1e-4
    assert np.abs(resid - tl_resid).max() < 1e-4
