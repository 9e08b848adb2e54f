"""How long a live prompt edit takes while an exact patching grid computes, against an idle edit.

The patching job takes the model's lock one short batch at a time (``PatchingSession.batch_seconds``)
and steps aside while a live edit waits, so an edit during a job should cost about an idle edit
(issue: within 1.5x). Both are timed in this process, on the bundled model, with a dashboard of
attention + logit lens + SAE features, from the moment the prompt box's value changes (as typing
does) to the moment every view shows the new prompt. The heartbeat column is the longest stall of a
10 ms timer on the kernel's loop while the job runs.

    python bench/edit_during_patching.py [--edits 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import mechviz

REPEAT = " and Moses said unto Aaron, Go in unto Pharaoh king of Egypt, and speak unto him"


async def edit(lab, views, text: str) -> float:
    t0 = time.perf_counter()
    lab.prompt_box.value = text
    while any(v.prompt != text for v in views):
        await asyncio.sleep(0.002)
    return time.perf_counter() - t0


async def main(n_edits: int, threads: int) -> None:
    lab = mechviz.Lab.default(prompt="In the beginning God created the heaven", threads=threads)
    views = [lab.attention(), lab.logit_lens(), lab.features()]
    loop, gaps = asyncio.get_running_loop(), [0.0]

    async def heartbeat():
        last = loop.time()
        while True:
            await asyncio.sleep(0.01)
            gaps.append(loop.time() - last)
            last = loop.time()
    beat = asyncio.ensure_future(heartbeat())
    idle = [await edit(lab, views, f"And God said, Let there be light {i}") for i in range(n_edits)]
    grid = lab.patching("Moses" + REPEAT * 6, "Aaron" + REPEAT * 6, site="q", by="head_position",
                        answers=(" Aaron", " Moses"))
    t_job = time.perf_counter()
    gaps[:] = [0.0]  # from here on: the cell that built the grid (its estimate) has returned
    busy = []
    for i in range(n_edits):
        await asyncio.sleep(0.1)
        if grid.status != "running":
            break
        busy.append(await edit(lab, views, f"And God saw the light, that it was good {i}"))
    await grid.finished()
    job = time.perf_counter() - t_job
    beat.cancel()
    mi, mb = statistics.median(idle), statistics.median(busy)
    print(f"grid: q by head_position, {grid.total} cells, {job:.2f} s (status {grid.status})")
    print(f"idle edit      median {mi * 1e3:6.1f} ms  (n={len(idle)})")
    print(f"edit during job median {mb * 1e3:6.1f} ms  (n={len(busy)})   ratio {mb / mi:.2f}x")
    print(f"longest stall of the kernel loop: {max(gaps) * 1e3:.0f} ms")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edits", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    asyncio.run(main(a.edits, a.threads))
