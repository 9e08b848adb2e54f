"""Arrays travel as binary buffers, never as JSON lists of floats."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ipywidgets.widgets.widget import _remove_buffers

from mechviz import AttentionView
from mechviz.widgets.transport import pack, unpack


@pytest.mark.parametrize("dtype", ["float16", "float32", "int32"])
def test_pack_roundtrip(dtype):
    a = (np.arange(24).reshape(2, 3, 4) / 7).astype(dtype)
    p = pack(a, dtype)
    assert p["shape"] == [2, 3, 4] and len(p["data"]) == a.size * np.dtype(dtype).itemsize
    np.testing.assert_array_equal(unpack(p), a)


def test_uint8_quantises_unit_interval_and_clips():
    p = pack(np.array([0.0, 0.25, 1.0, 1.7, -0.2, np.nan]), "uint8")
    assert list(p["data"]) == [0, 64, 255, 255, 0, 0]
    np.testing.assert_allclose(unpack(p)[:3], [0.0, 64 / 255, 1.0])


def test_widget_state_carries_one_binary_buffer_not_json_floats():
    rng = np.random.default_rng(0)
    pattern = rng.dirichlet(np.ones(40), size=(2, 3, 40)).astype(np.float32)
    view = AttentionView()
    view.show(pattern, [f"t{i}" for i in range(40)], prompt="p")
    state, buffer_paths, buffers = _remove_buffers(view.get_state())
    assert sorted(buffer_paths) == [["detail", "data"], ["overview", "data"]]
    detail = buffers[buffer_paths.index(["detail", "data"])]
    assert bytes(detail) == view.get_state("detail")["detail"]["data"]
    assert len(detail) == pattern[0].size  # the selected layer, 1 byte per attention weight
    text = json.dumps(state)  # the JSON part is small: traits and token strings only
    assert len(text) < 2000 + len(view._esm)


def test_uint8_packing_memory_is_about_the_payload():
    """Packing attention to uint8 allocates about the payload (one byte per value), not float32 copies of
    the whole array (it was about 3x the float pattern: 4.2 GB to send 144 MB at 1,024 tokens)."""
    import tracemalloc

    a = np.random.default_rng(0).random((4, 12, 512, 512), dtype=np.float32)   # 48 MB of float32
    ref = np.rint(np.clip(a, 0, 1) * 255).astype(np.uint8)
    tracemalloc.start()
    packed = pack(a, "uint8")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert packed["data"] == ref.tobytes()
    payload = a.size  # bytes
    assert peak < 2.2 * payload + 8 * 2**20, f"peak {peak / 2**20:.0f} MB for a {payload / 2**20:.0f} MB payload"
