"""The bad-input catalogue: every careless input the issue names, from Python and live (edits through
the prompt box and the feature view's steering controls, as the browser makes them), on the bundled
model with a dashboard, a patching grid and a steering applied, all inside a running asyncio loop (a
notebook kernel's). Each case asserts

* the message: a phrase that names the problem (and says what to do);
* the state kept: ``lab.prompt``, ``lab.steering``, the prompt box's shown prompt, and every view's
  ``prompt``, ``seq`` and arrays are as before the case (the last good view), and what the user typed
  stays in the box;
* the loop stayed responsive: a ticker task on the loop never waited more than ``STALL`` seconds.

Then a good edit recovers (every error banner cleared). ``pytest -s`` prints the counts.
"""

from __future__ import annotations

import asyncio
import math
import pickle
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch

import mechviz
from mechviz import Lab
from mechviz.steering import Steering

GOOD = "The cat sat on the mat. The cat"
STALL = 0.2          # seconds the loop may go without running the ticker
STEERING = Steering(3, 4.0, "clamp", "resid_post.1")


@dataclass
class Case:
    name: str
    do: Callable       # do(ctx): raises (Python) or starts a live request
    phrase: str        # a phrase of the message, naming the problem (regex)
    live: str = ""     # "" (raises), "box" (the prompt box shows it), "feature" (the feature view)
    exc: type = Exception


class Ctx:
    def __init__(self, lab, views, grid, tmp):
        self.lab, self.views, self.grid, self.tmp = lab, views, grid, tmp
        self.attn, self.lens, self.feat = views

    def type(self, text):               # what the browser does when the user types
        self.lab.prompt_box.value = text

    def steer(self, **request):         # the feature view's steering controls: one message
        self.feat.steer_request = {"mode": "clamp", **request}


def _models():
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

    cfg = dict(n_layer=1, n_embd=16, n_head=2, vocab_size=32, bos_token_id=0, eos_token_id=0)
    headless = GPT2Model(GPT2Config(**cfg))
    with torch.device("meta"):
        meta = GPT2LMHeadModel(GPT2Config(**cfg))
    return headless, meta


def _sae(d_in, site="resid_post.0", d_sae=8):
    from mechviz.saes import SAE

    return SAE(W_enc=torch.zeros(d_in, d_sae), b_enc=torch.zeros(d_sae), W_dec=torch.zeros(d_sae, d_in),
               b_dec=torch.zeros(d_in), site=site)


def _pickled_sae_folder(tmp, how):
    from mechviz.zoo import SAE_DIR

    folder = tmp / f"sae_{how}"
    folder.mkdir(exist_ok=True)
    (folder / "cfg.json").write_text((SAE_DIR / "cfg.json").read_text())
    weights = folder / "sae_weights.safetensors"
    if how == "torch":
        torch.save({"W_enc": torch.zeros(2)}, weights)
    else:
        weights.write_bytes(pickle.dumps({"W_enc": [0.0]}, protocol=4))
    return folder


class _NaNWeights:
    """Live: NaN in block 0's attention weights while an edit runs, restored after the case."""

    saved = None

    @classmethod
    def do(cls, ctx):
        w = ctx.lab.model.model.transformer.h[0].attn.c_attn.weight
        cls.saved = w.detach().clone()
        with torch.no_grad():
            w.fill_(float("nan"))
        ctx.type("The dog sat on the mat")

    @classmethod
    def undo(cls, ctx):
        with torch.no_grad():
            ctx.lab.model.model.transformer.h[0].attn.c_attn.weight.copy_(cls.saved)


WIDTH = "k must be a whole number >= 1"
CASES = [
    # -- prompts, from Python and typed into the box --------------------------------------------------------
    *[Case(f"{how} prompt {label}", (lambda t: lambda c: setattr(c.lab, "prompt", t))(text) if how == "python"
           else (lambda t: lambda c: c.type(t))(text), phrase, live="" if how == "python" else "box")
      for how in ("python", "typed")
      for label, text, phrase in [
          ("empty", "", "the prompt is empty: type some text"),
          ("whitespace", "  \n\t ", "the prompt is empty: type some text"),
          ("over-long", "cat " * 300, r"tokens long .* takes at most 256: shorten it"),
          ("lone surrogate", "cat \ud83d dog", r"lone surrogate \(U\+D83D\) at character 4.*remove it"),
          ("NUL", "cat\x00dog", r"control character \(U\+0000 NUL\) at character 3.*remove it"),
          ("ESC", "\x1b[31mred", r"control character \(U\+001B ESC\) at character 0.*remove it"),
          ("DEL", "cat\x7f", r"control character \(U\+007F DEL\) at character 3"),
          ("NEL (cp1252 ellipsis)", "and so\x85", r"control character \(U\+0085 NEL\) at character 6.*cp1252"),
      ]],
    Case("token ids out of range", lambda c: c.lab.run([5, 10**6]), r"token ids must lie in \[0, 2048\)"),
    Case("negative token id", lambda c: c.lab.run([-1, 5]), r"token ids must lie in \[0, 2048\)"),
    Case("non-integer token ids", lambda c: c.lab.run([5, 2.5]), "token ids must be whole numbers, got 2.5"),
    Case("bool token ids", lambda c: c.lab.run([True, 5]), "token ids must be whole numbers, got True"),
    Case("float tensor of ids", lambda c: c.lab.run(torch.tensor([5.0, 6.0])), "must be integers, got a torch.float32"),
    # -- view arguments --------------------------------------------------------------------------------------
    *[Case(f"lens k={k!r}", (lambda k: lambda c: c.lab.logit_lens(k=k))(k), WIDTH)
      for k in (0, -3, 2.5, True, "3", None, math.nan)],
    *[Case(f"features n={n!r}", (lambda n: lambda c: c.lab.features(n=n))(n), "n must be a whole number >= 1")
      for n in (0, 1.5, False)],
    Case("features k=0", lambda c: c.lab.features(k=0), WIDTH),
    Case("lens target out of vocabulary", lambda c: c.lab.logit_lens(target=10**6), "outside the vocabulary"),
    Case("lens target 2.5", lambda c: c.lab.logit_lens(target=2.5), "never rounded"),
    Case("lens target of two tokens", lambda c: c.lab.logit_lens(target="The cat"), "choose a single token"),
    Case("unknown view argument", lambda c: c.lab.attention(colour="red"), "colour"),
    Case("head 99", lambda c: setattr(c.attn, "head", 99), r"head 99 is out of range: this view shows 4 heads \(0..3\)"),
    Case("head -1", lambda c: setattr(c.attn, "head", -1), "head -1 is out of range"),
    Case("head True", lambda c: setattr(c.attn, "head", True), "head must be a whole number"),
    Case("head 1.5", lambda c: setattr(c.attn, "head", 1.5), "head must be a whole number"),
    Case("layer 99", lambda c: setattr(c.attn, "layer", 99), r"layer 99 is out of range: the model has 4 layers"),
    Case("layer -1", lambda c: setattr(c.attn, "layer", -1), "layer -1 is out of range"),
    Case("layer 2.0", lambda c: setattr(c.attn, "layer", 2.0), "layer must be a whole number"),
    Case("selection token True", lambda c: setattr(c.lab.selection, "token", True), "token must be a whole number"),
    Case("unknown site", lambda c: c.lab.run(capture=["resid_sideways.0"]), "unknown site 'resid_sideways'"),
    Case("layer past the model", lambda c: c.lab.run(capture=["resid_post.9"]), "layer"),
    # -- patching ---------------------------------------------------------------------------------------------
    Case("answer id out of vocabulary", lambda c: c.lab.patching("The cat sat", "The dog sat", answers=(1, 10**6)),
         "answer id 1000000 is outside the vocabulary"),
    Case("answer id 1.5", lambda c: c.lab.patching("The cat sat", "The dog sat", answers=(1.5, 2)),
         "an answer must be a token id .* got 1.5"),
    Case("answer of two tokens", lambda c: c.lab.patching("The cat sat", "The dog sat", answers=("The cat", 2)),
         "must be exactly one token"),
    Case("patch site attn_pattern by position", lambda c: c.lab.patching("The cat sat", "The dog sat",
                                                                         site="attn_pattern"), "is per head"),
    Case("patch site router", lambda c: c.lab.patching("The cat sat", "The dog sat", site="router"),
         "cannot be patched"),
    Case("patch site unknown", lambda c: c.lab.patching("The cat sat", "The dog sat", site="resid_sideways"),
         "unknown site"),
    Case("patch direction", lambda c: c.lab.patching("The cat sat", "The dog sat", direction="sideways"),
         "direction must be"),
    Case("patch prompts of unequal length", lambda c: c.lab.patching("The cat sat", "The cat sat on the mat"),
         "tokens"),
    Case("patch prompt with a control character", lambda c: c.lab.patching("The cat\x1b", "The dog\x1b"),
         "control character"),
    Case("patch cell [1]", lambda c: setattr(c.grid, "cell", [1]), r"a cell is \[row, col\]"),
    Case("patch cell [True, 0]", lambda c: setattr(c.grid, "cell", [True, 0]), r"a cell is \[row, col\]"),
    Case("patch cell outside the grid", lambda c: setattr(c.grid, "cell", [99, 0]),
         r"cell \[99, 0\] is outside this 4 x 9 grid"),
    # -- SAEs ---------------------------------------------------------------------------------------------------
    Case("SAE of the wrong width", lambda c: c.lab.add_sae(_sae(20)), "SAE width d_in=20 does not match site"),
    Case("SAE at an unknown site", lambda c: c.lab.add_sae(_sae(128, "resid_sideways.0")), "does not exist"),
    Case("pickle renamed .safetensors (torch.save)", lambda c: c.lab.add_sae(_pickled_sae_folder(c.tmp, "torch")),
         r"is a zip archive \(torch.save's format\), not safetensors.*never unpickles"),
    Case("pickle renamed .safetensors (pickle)", lambda c: c.lab.add_sae(_pickled_sae_folder(c.tmp, "pickle")),
         "is a pickle, not safetensors"),
    Case("SAE given as a .pt file", lambda c: c.lab.add_sae(c.tmp / "sae.pt"), "safetensors only"),
    # -- steering, from Python and from the feature view's controls ----------------------------------------------
    *[Case(f"{how} steering {label}", (lambda r: lambda c: c.lab.steer(r.get("feature"), r.get("value"),
                                                                        r.get("mode", "clamp")))(req)
           if how == "python" else (lambda r: lambda c: c.steer(**r))(req), phrase,
           live="" if how == "python" else "feature")
      for how in ("python", "controls")
      for label, req, phrase in [
          ("value NaN", {"feature": 3, "value": math.nan}, "the steering value must be finite, got nan"),
          ("value inf", {"feature": 3, "value": math.inf}, "the steering value must be finite, got inf"),
          ("value 1e308", {"feature": 3, "value": 1e308}, "the steering value 1e.308 is too large"),
          ("value None (JSON's NaN)", {"feature": 3, "value": None}, "the steering value must be a number, got None"),
          ("value 'abc'", {"feature": 3, "value": "abc"}, "the steering value must be a number, got 'abc'"),
          ("feature 2.5", {"feature": 2.5, "value": 1.0}, "the feature to steer must be a whole-number id, got 2.5"),
          ("feature True", {"feature": True, "value": 1.0}, "whole-number id, got True"),
          ("feature out of range", {"feature": 10**6, "value": 1.0},
           r"feature 1000000 out of range: the SAE has 1024 features \(0..1023\)"),
          ("feature -1", {"feature": -1, "value": 1.0}, "feature -1 out of range"),
          ("unknown mode", {"feature": 3, "value": 1.0, "mode": "sideways"}, "mode must be 'clamp' or 'scale'"),
      ]],
    Case("python steering that overflows the model", lambda c: c.lab.steer(3, 1e30),
         r"NaN or inf.*a steering value can overflow", exc=FloatingPointError),
    Case("controls steering that overflows the model", lambda c: c.steer(feature=3, value=1e30),
         r"steering \(feature 3 of resid_post.1 clamped to 1e\+30\) failed, feature 3 of resid_post.1 clamped to 4 kept: .*NaN or inf", live="feature"),
    # -- models ---------------------------------------------------------------------------------------------------
    Case("a model without an LM head", lambda c: Lab(_models()[0], c.lab.model.tokenizer), "no language-model head"),
    Case("a model on the meta device", lambda c: Lab(_models()[1], c.lab.model.tokenizer), "meta device"),
    Case("not a model at all", lambda c: Lab("gpt2"), "model"),
    Case("NaN weights (live edit)", _NaNWeights.do, r"^FloatingPointError: the model's activations contain NaN or inf, "
         r"first at site attn_pattern.0: its weights", live="box"),
]
UNDO = {"NaN weights (live edit)": _NaNWeights.undo}


def _state(ctx) -> dict:
    lab, box = ctx.lab, ctx.lab.prompt_box
    out = {"lab.prompt": lab.prompt, "lab.steering": lab.steering, "box.shown": box.shown,
           "box.n_tokens": box.n_tokens, "views": list(lab.views), "sae": lab.sae,
           **{f"selection.{n}": getattr(lab.selection, n) for n in ("layer", "head", "token", "feature")}}
    for view in (*ctx.views, ctx.grid):
        name = type(view).__name__
        out[f"{name}.prompt"], out[f"{name}.seq"] = view.prompt, view.seq
        out.update({f"{name}.{k}": np.array(a, copy=True) for k, a in view.data.items()})
    out["FeatureView.steering"] = ctx.feat.steering
    out["PatchGridView.cell"] = list(ctx.grid.cell)
    return out


def _same(a: dict, b: dict) -> list[str]:
    changed = [k for k in a.keys() | b.keys() if k not in a or k not in b or (
        not np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f") if isinstance(a[k], np.ndarray)
        else a[k] != b[k])]
    return sorted(changed)


@dataclass
class Outcome:
    name: str
    message: str = ""
    named: bool = False      # the message holds the phrase
    kept: bool = False       # the prompt and the last good view are as before
    typed_kept: bool = True  # live: what the user typed is still in the box
    stall: float = 0.0       # longest the loop went without running the ticker, during the case
    recovered: bool = False  # a good edit afterwards shows it, with no error left
    note: str = ""


async def _wait(cond, timeout=10.0):
    t0 = time.perf_counter()
    while not cond():
        if time.perf_counter() - t0 > timeout:
            return False
        await asyncio.sleep(0.005)
    return True


async def _catalogue(tmp) -> list[Outcome]:
    import re

    lab = Lab.default(prompt=GOOD, threads=1)
    assert lab._loop is asyncio.get_running_loop()   # live edits go through this loop, as in a kernel
    lab.dashboard()
    views = tuple(lab.views)
    grid = lab.patching("The cat sat on the mat", "The dog sat on the mat", answers=(5, 6), exact=False)
    (tmp / "sae.pt").write_bytes(b"not read")
    lab.steer(*STEERING.to_json().values())
    ctx = Ctx(lab, views, grid, tmp)

    gaps, last = [0.0], [time.perf_counter()]

    async def ticker():
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last[0])
            last[0] = now

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    outcomes = []
    for case in CASES:
        o = Outcome(case.name)
        before = _state(ctx)
        assert lab.steering == STEERING and lab.prompt == GOOD
        await asyncio.sleep(0.01)
        gaps.clear()
        last[0] = time.perf_counter()
        try:
            if not case.live:
                try:
                    case.do(ctx)
                except case.exc as exc:
                    o.message = str(exc)
                else:
                    o.note = "did not raise"
            else:
                case.do(ctx)
                where = {"box": lambda: lab.prompt_box.error, "feature": lambda: ctx.feat.error}[case.live]
                runner_idle = lambda: lab._runner is None or lab._runner.idle   # noqa: E731
                if not await _wait(lambda: where() and runner_idle()):
                    o.note = "no message within 10 s"
                await asyncio.sleep(0.05)    # anything still to arrive arrives
                o.message = where()
                if case.live == "box":
                    o.typed_kept = lab.prompt_box.status == "error" and lab.prompt_box.value != GOOD
                if case.live == "feature" and "failed" not in o.message:   # refused: only this view says so
                    o.typed_kept = all(v.error == "" for v in views if v is not ctx.feat)
            await asyncio.sleep(0.02)
            o.stall = max(gaps)
            o.named = bool(re.search(case.phrase, o.message, re.S))
            changed = _same(before, _state(ctx))
            o.kept = not changed and lab.steering == STEERING
            if changed:
                o.note += f" changed: {changed}"
        finally:
            if case.name in UNDO:
                UNDO[case.name](ctx)
            lab.prompt = GOOD        # a good edit (from Python) recovers
            await asyncio.sleep(0.01)
        o.recovered = (lab.prompt_box.error == "" == grid.error and all(v.error == "" and v.prompt == GOOD for v in views)
                       and lab.prompt_box.value == lab.prompt_box.shown == GOOD and lab.steering == STEERING)
        outcomes.append(o)
    tick.cancel()
    return outcomes


def test_every_bad_input_gets_a_message_naming_it_keeps_the_state_and_the_loop(tmp_path):
    t0 = time.perf_counter()
    outcomes = asyncio.run(_catalogue(tmp_path))
    wall = time.perf_counter() - t0
    live = [o for o, c in zip(outcomes, CASES) if c.live]
    named = sum(o.named for o in outcomes)
    kept = sum(o.kept and o.typed_kept for o in outcomes)
    responsive = sum(o.stall < STALL for o in outcomes)
    recovered = sum(o.recovered for o in outcomes)
    print(f"\nbad-input catalogue: {len(outcomes)} cases tried ({len(live)} live, through the prompt box or the "
          f"steering controls, in a running loop); {named} with a clear message naming the "
          f"problem; {kept} with the prompt and the last good view kept; {responsive} with the loop never "
          f"stalled >= {STALL * 1000:.0f} ms (longest {max(o.stall for o in outcomes) * 1000:.0f} ms); "
          f"{recovered} recovered by a good edit; {wall:.1f} s")
    bad = [o for o in outcomes if not (o.named and o.kept and o.typed_kept and o.stall < STALL and o.recovered)]
    assert not bad, "\n".join(f"{o.name}: named={o.named} kept={o.kept} typed_kept={o.typed_kept} "
                              f"stall={o.stall:.3f} recovered={o.recovered} {o.note} message={o.message!r}"
                              for o in bad)
    assert len(outcomes) >= 80 and len(live) >= 19
