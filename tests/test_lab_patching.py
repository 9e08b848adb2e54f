"""Lab.patching: the grid widget gets the engine's values, an instant estimate, streaming and
cancel from a worker thread, and a clicked cell's run agrees with the grid's value."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import mechviz
from mechviz.analysis import patching as P
from mechviz.widgets.transport import unpack

CLEAN = "And Moses and Aaron went unto the king, and Moses said unto"
CORRUPTED = "And Moses and Aaron went unto the king, and Aaron said unto"
ANSWERS = (" Aaron", " Moses")


@pytest.fixture(scope="module")
def lab():
    return mechviz.Lab.default(prompt="The cat", threads=1, sae=False)


@pytest.mark.parametrize("site,by", [("resid_pre", "position"), ("z", "head"), ("v", "head_position")])
def test_grid_view_shows_engine_values_and_a_clicked_cell_agrees(lab, site, by):
    view = lab.patching(CLEAN, CORRUPTED, site=site, by=by, answers=ANSWERS)
    ref = P.activation_patching(lab.model, CLEAN, CORRUPTED, site, by=by, answers=ANSWERS)
    est = P.attribution_patching(lab.model, CLEAN, CORRUPTED, site, by=by, answers=ANSWERS)
    assert view.status == "done" and view.done == view.total == ref.values.size
    np.testing.assert_allclose(view.matrix, ref._matrix(ref.values)[0], atol=1e-6)
    np.testing.assert_allclose(unpack(view.estimate), est._matrix(est.values)[0], atol=1e-6)
    assert view.clean_metric == pytest.approx(ref.clean_metric) and view.row_labels == ref._matrix(ref.values)[1]
    # click the cell with the largest effect: its patched run's metric is that cell's value
    mat = view.matrix
    r, c = np.unravel_index(np.nanargmax(np.abs(mat - view.corrupted_metric)), mat.shape)
    view.cell = [int(r), int(c)]
    assert view.detail_cell == [int(r), int(c)]  # the answer names the cell it answers
    assert len(view.detail_strs) == 8 and view.lens_rows[-1] == "resid_post.3"
    assert view.detail_metric == pytest.approx(float(mat[r, c]), abs=1e-4)  # same run as the grid's cell
    probs = unpack(view.detail_probs)
    assert probs[0] >= probs[-1] > 0 and view.error == ""
    detail_top1 = view.detail_strs[0]
    assert view.lens_strs[-1][0] == detail_top1  # the lens' last row is the run's own output


def test_exact_values_stream_and_cancel_in_the_kernel_loop(lab):
    async def scenario():
        lab._loop = asyncio.get_running_loop()
        try:
            view = lab.patching(CLEAN, CORRUPTED, site="v", by="head_position", answers=ANSWERS)
            seen = []
            view.observe(lambda ch: seen.append(ch["new"]), names="done")
            assert view.status == "running" and np.isnan(view.matrix).all()  # only the estimate so far
            for _ in range(1000):
                await asyncio.sleep(0.01)
                if view.status in ("done", "cancelled", "error"):
                    break
            view2 = lab.patching(CLEAN, CORRUPTED, site="q", by="head_position", answers=ANSWERS)
            view2.cancel_requests += 1  # as the view's cancel button does
            for _ in range(1000):
                await asyncio.sleep(0.01)
                if view2.status in ("done", "cancelled", "error"):
                    break
            return view, seen, view2
        finally:
            lab._loop = None

    view, seen, view2 = asyncio.run(scenario())
    assert view.status == "done" and view.done == view.total and seen[-1] == view.total
    assert view2.status == "cancelled" and view2.done < view2.total
    assert np.isnan(view2.matrix).any()


def test_unequal_lengths_are_a_clear_error(lab):
    with pytest.raises(ValueError, match=r"clean has \d+ tokens, corrupted has \d+"):
        lab.patching("Moses said unto", "And Mary said unto", answers=ANSWERS)


def test_a_failing_exact_job_reports_in_the_view(lab):
    def broken_metric(logits):
        if logits.shape[0] != 2:  # fine for the clean/corrupted pair, fails inside the batched job
            raise RuntimeError("metric exploded")
        return logits[:, -1, 0] - logits[:, -1, 1]

    view = lab.patching(CLEAN, CORRUPTED, site="resid_pre", metric=broken_metric)
    assert view.status == "error" and "metric exploded" in view.error
