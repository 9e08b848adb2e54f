"""Memory at a realistic size, end to end: one prompt edit of a GPT-2-small-shaped Lab (12 layers x 12
heads, d_model 768, vocab 50,257; random weights; float32) with the dashboard (attention, logit lens, SAE
features) at 1,024 tokens takes at most about what the pass itself must hold in extra memory: no copy of
the attention stack, no [rows, T, vocab] lens, no float32 copy per payload.

tracemalloc does not see torch's allocations, so the peak is the process's resident set: the kernel's
high-water mark (VmHWM), reset just before the edit (``echo 5 > /proc/self/clear_refs``), after freed
memory is handed back to the system (``malloc_trim``) so that the edit cannot hide in pages a former pass
left resident.

    PYTHONPATH=. python -m pytest -q -s tests/test_memory_long.py
"""

from __future__ import annotations

import ctypes
import gc
import sys
import time
from pathlib import Path

import pytest

MB = 2**20
T, L, H, D, V = 1024, 12, 12, 768, 50257


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> int:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def _can_reset_peak() -> bool:
    try:
        _reset_peak()
        return _status("VmHWM") <= _status("VmRSS") + 8 * MB
    except (OSError, KeyError):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _can_reset_peak(),
                    reason="needs Linux's /proc/self/clear_refs to reset the peak resident set")
def test_an_edit_at_1024_tokens_takes_about_what_the_pass_holds():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from long_prompts import model_and_tokenizer, prompt_of, sae_for

    from mechviz import Lab

    model, tok = model_and_tokenizer()
    first, second = prompt_of(tok, T), prompt_of(tok, T).replace(" cat ", " dog ", 1)
    lab = Lab(model, tok, prompt=first, threads=1, sae=sae_for(D), allow_model_mismatch=True)
    box = lab.dashboard()
    assert len(lab.last.run.token_strs) == T and box is not None

    base = _reset_peak()
    t0 = time.perf_counter()
    lab.prompt = second
    seconds = time.perf_counter() - t0
    extra = _status("VmHWM") - base
    attn, lens, feats = lab.views
    assert attn.prompt == lens.prompt == feats.prompt == second and len(lab.last.run.token_strs) == T

    # what the pass must hold while the former one is still shown (it is freed once the new one is applied)
    stack = L * H * T * T * 4                       # the attention patterns, float32: 604 MB
    logits = T * V * 4                              # the run's logits, float32: 206 MB
    resid = (L + 1) * T * D * 4 * 2                 # the residual streams the lens and features read: 82 MB
    lens_buffer = 256 * MB                          # the lens' one logits buffer (mechviz.analysis.logit_lens._chunk)
    layer_temps = 4 * H * T * T * 4                 # one block's attention scores/softmax temporaries in HF: 201 MB
    payloads = 64 * MB                              # what the views send (attention: one layer at one byte a weight)
    bound = stack + logits + resid + lens_buffer + layer_temps + payloads
    print(f"\nmemory, one edit at {T} tokens (GPT-2-small shape, dashboard + SAE): peak extra resident "
          f"{extra / MB:.0f} MB over {base / MB:.0f} MB before it; the pass holds the attention stack "
          f"{stack / MB:.0f} MB + logits {logits / MB:.0f} MB + residual streams {resid / MB:.0f} MB; bound "
          f"{bound / MB:.0f} MB (with the lens buffer, one block's temporaries and the payloads); {seconds:.1f} s")
    assert extra <= bound, f"peak extra {extra / MB:.0f} MB > bound {bound / MB:.0f} MB"
    assert extra >= stack * 0.8, "the measurement cannot miss the attention stack itself"
