"""Lab.patching: the grid widget gets the engine's values, an instant estimate, streaming and
cancel from a worker thread, and a clicked cell's run agrees with the grid's value."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import mechviz
from mechviz.analysis import patching as P

CLEAN = "And Moses and Aaron went unto the king, and Moses said unto"
CORRUPTED = "And Moses and Aaron went unto the king, and Aaron said unto"
ANSWERS = (" Aaron", " Moses")


@pytest.fixture(scope="module")
def lab():
    return mechviz.Lab.default(prompt="The cat", threads=1, sae=False)


@pytest.mark.parametrize("site,by", [("resid_pre", "position"), ("z", "head"), ("v", "head_position"),
                                     ("attn_pattern", "head"), ("attn_pattern", "head_position")])
def test_grid_view_shows_engine_values_and_a_clicked_cell_agrees(lab, site, by):
    view = lab.patching(CLEAN, CORRUPTED, site=site, by=by, answers=ANSWERS)
    ref = P.activation_patching(lab.model, CLEAN, CORRUPTED, site, by=by, answers=ANSWERS)
    est = P.attribution_patching(lab.model, CLEAN, CORRUPTED, site, by=by, answers=ANSWERS)
    assert view.status == "done" and view.done == view.total == ref.values.size
    np.testing.assert_allclose(view.data["values"], ref.matrix()[0], atol=1e-6, rtol=2e-6)  # float32: batch sizes vary with load
    np.testing.assert_allclose(view.data["estimate"], est.matrix()[0], atol=1e-6)
    assert view.clean_metric == pytest.approx(ref.clean_metric) and view.row_labels == ref.matrix()[1]
    # click the cell with the largest effect: its patched run's metric is that cell's value
    mat = view.data["values"]
    r, c = np.unravel_index(np.nanargmax(np.abs(mat - view.corrupted_metric)), mat.shape)
    view.cell = [int(r), int(c)]
    assert view.detail_cell == [r, c]  # the answer names its cell
    assert len(view.detail_strs) == 8 and view.lens_rows[-1] == "resid_post.3"
    assert view.detail_metric == pytest.approx(float(mat[r, c]), abs=1e-4)  # same run as the grid's cell
    probs = view.data["detail_probs"]
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
            assert view.status == "running" and np.isnan(view.data["values"]).all()  # only the estimate so far
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
    assert np.isnan(view2.data["values"]).any()


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


def test_the_pair_is_built_once_per_grid(lab):
    """The estimate, the exact job and every clicked cell share one PromptPair: 2 prompt passes, one
    estimate pass (forward + backward), the batched exact passes, then ONE pass per click."""
    calls = []
    h = lab.model.blocks[0].register_forward_pre_hook(lambda *a: calls.append(1))  # every pass enters block 0
    try:
        view = lab.patching(CLEAN, CORRUPTED, site="resid_pre", answers=ANSWERS, exact=False)
        assert len(calls) == 3 and view.status == "estimate"
        view.cell = [1, 3]
        assert len(calls) == 4 and view.detail_cell == [1, 3]
    finally:
        h.remove()


def test_paced_batches_give_the_same_grid(lab):
    batches = {"free": 0, "paced": 0}

    def counter(key):
        def on_progress(grid, done, total):
            batches[key] += 1
        return on_progress
    ref = P.activation_patching(lab.model, CLEAN, CORRUPTED, "z", by="head_position", answers=ANSWERS,
                                on_progress=counter("free"))
    paced = P.activation_patching(lab.model, CLEAN, CORRUPTED, "z", by="head_position", answers=ANSWERS,
                                  batch_seconds=1e-4, on_progress=counter("paced"))
    assert batches["paced"] > 2 * batches["free"]  # smaller batches ...
    np.testing.assert_allclose(paced.values, ref.values, atol=1e-5)  # ... the same numbers (float32 rounding)


REPEAT = " and Moses said unto Aaron, Go in unto Pharaoh king of Egypt, and speak unto him"


def test_kernel_loop_stays_responsive_during_a_patching_job():
    """A cell click and a prompt edit during an exact patching job are both served while the job
    still runs, and a heartbeat on the kernel's loop never stalls more than 0.2 s."""
    async def scenario():
        lab = mechviz.Lab.default(prompt="In the beginning God created the heaven", threads=1)
        attn, lens = lab.attention(), lab.logit_lens()
        loop, gaps, last = asyncio.get_running_loop(), [], [0.0]

        async def heartbeat():
            last[0] = loop.time()
            while True:
                await asyncio.sleep(0.01)
                gaps.append(loop.time() - last[0])
                last[0] = loop.time()
        beat = asyncio.ensure_future(heartbeat())
        grid = lab.patching("Moses" + REPEAT * 6, "Aaron" + REPEAT * 6, site="q", by="head_position",
                            answers=ANSWERS)
        await asyncio.sleep(0.3)
        events = {}
        grid.cell = [5, 10]                                   # as a click in the browser
        lab.prompt_box.value = "And God said, Let there be light"   # as typing in the box
        for _ in range(2000):
            await asyncio.sleep(0.005)
            if grid.detail_cell == [5, 10] and "detail" not in events:
                events["detail"] = grid.status
            if attn.prompt == lens.prompt == "And God said, Let there be light" and "edit" not in events:
                events["edit"] = grid.status
            if len(events) == 2:
                break
        await grid.finished()
        beat.cancel()
        return events, max(gaps), grid, lab
    events, stall, grid, lab = asyncio.run(scenario())
    assert events == {"detail": "running", "edit": "running"}  # both answered before the job ended
    assert grid.status == "done" and grid.done == grid.total
    assert stall < 0.2, f"the kernel's loop stalled {stall:.3f} s"
    ref = P.activation_patching(lab.model, "Moses" + REPEAT * 6, "Aaron" + REPEAT * 6, "q", by="head_position",
                                answers=ANSWERS)
    np.testing.assert_allclose(grid.data["values"], ref.matrix()[0], atol=1e-5)


@pytest.mark.parametrize("cell,phrase", [([1], r"a cell is \[row, col\]"), ([True, 0], r"a cell is \[row, col\]"),
                                         ([0.5, 1], "expected an int")])
def test_a_malformed_cell_is_refused_and_the_click_kept(lab, cell, phrase):
    """``grid.cell = [1]`` raised "not enough values to unpack" from inside the observer, after the trait
    had taken the bad value."""
    grid = lab.patching("The cat", "The dog", exact=False, answers=(5, 6))
    grid.cell = [0, 1]
    with pytest.raises(Exception, match=phrase):
        grid.cell = cell
    assert grid.cell == [0, 1] and grid.detail_cell == [0, 1]


def test_a_cell_outside_the_grid_is_refused_when_set():
    """It was taken, and only the detail worker said (in the error banner) that it is outside the grid."""
    lab = mechviz.Lab.default(prompt="The cat", threads=1, sae=False)
    grid = lab.patching("The cat", "The dog", exact=False, answers=(5, 6))
    grid.cell = [0, 1]
    with pytest.raises(Exception, match=r"cell \[99, 0\] is outside this \d+ x \d+ grid"):
        grid.cell = [99, 0]
    assert grid.cell == [0, 1] and grid.error == ""
    grid.cell = [-1, -1]


def test_a_bad_prompt_is_not_reported_by_a_patching_grid():
    """A patching grid does not follow the prompt: a bad edit put its error in the grid's banner, where no
    good edit cleared it again."""
    lab = mechviz.Lab.default(prompt="The cat", threads=1, sae=False)
    attn = lab.attention()
    grid = lab.patching("The cat", "The dog", exact=False, answers=(5, 6))
    with pytest.raises(ValueError, match="empty"):
        lab.prompt = ""
    assert "empty" in attn.error and grid.error == ""
    lab.prompt = "The mat"
    assert attn.error == grid.error == ""


def test_a_grid_with_no_gap_says_why_its_cells_are_blank():
    """Equal clean and corrupted metrics (the same prompt twice; a zero ablation that moves nothing) leave
    every normalised value 0/0: the view says so instead of showing an unexplained blank grid."""
    import mechviz

    lab = mechviz.Lab.default()
    grid = lab.patching("The cat sat on the mat. The cat", "The cat sat on the mat. The cat",
                        answers=(" sat", " the"), exact=False)
    assert "no gap to normalise by" in grid.note
    ok = lab.patching("The cat sat on the mat. The cat", "The dog sat on the mat. The cat",
                      answers=(" sat", " the"), exact=False)
    assert ok.note == ""
