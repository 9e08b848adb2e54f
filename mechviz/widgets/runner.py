"""The live loop: newest edit wins, compute off the kernel's main thread, results applied on it."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from contextlib import contextmanager
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from ..models.base import Aborted

log = logging.getLogger(__name__)


class LatestOnlyRunner:
    """Run ``compute(arg, is_stale)`` in one worker thread; only the newest request's result counts.

    ``request(arg)`` may be called from any thread: JupyterLab 4 with ipykernel 7 delivers widget
    messages on a kernel *subshell* thread, so trait observers do not run on the event loop's
    thread, and the request is handed to the loop with ``call_soon_threadsafe``. It waits
    ``delay`` seconds for more edits (the browser already debounces typing: this only gathers messages
    that arrive together), then starts the computation unless one is running, in which
    case only the newest request waits for it. A running computation learns through
    ``is_stale()`` that a newer request arrived (the model adapter polls it between layers and
    aborts); ``is_stale`` is a :class:`Ticket`, whose ``publish(partial)`` shows a partial result
    through ``on_partial(arg, partial)``. ``apply(arg, result)`` / ``on_error(arg, exc)`` run back on the loop's thread, and only
    for the newest request; ``on_start(arg)`` runs when a computation starts.
    """

    def __init__(self, compute: Callable[[Any, Callable[[], bool]], Any], apply: Callable[[Any, Any], None],
                 on_error: Callable[[Any, BaseException], None], on_start: Callable[[Any], None] | None = None,
                 on_partial: Callable[[Any, Any], None] | None = None, delay: float = 0.01,
                 loop: asyncio.AbstractEventLoop | None = None):
        self.compute, self.apply, self.on_error, self.on_start = compute, apply, on_error, on_start
        self.on_partial = on_partial
        self.delay = delay
        self.loop = loop or _kernel_loop()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mechviz")
        self.gen = 0
        self.busy = False
        self.pending: tuple[int, Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._queued = 0  # requests handed to the loop from any thread, not yet seen by it
        self.stats = {"requested": 0, "started": 0, "applied": 0, "aborted": 0, "dropped": 0}

    def request(self, arg) -> None:
        self._queued += 1
        self.loop.call_soon_threadsafe(self._request, arg)

    def _request(self, arg) -> None:
        self._queued -= 1
        self.gen += 1
        self.stats["requested"] += 1
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(self.delay, self._fire, self.gen, arg)

    def _fire(self, gen: int, arg) -> None:
        self._timer = None
        if self.busy:
            self.pending = (gen, arg)
        else:
            self._start(gen, arg)

    def _start(self, gen: int, arg) -> None:
        self.busy = True
        self.stats["started"] += 1
        if self.on_start is not None:
            self.on_start(arg)
        fut = self.pool.submit(self.compute, arg, Ticket(self, gen, arg))
        fut.add_done_callback(lambda f: self.loop.call_soon_threadsafe(self._done, gen, arg, f))

    def _partial(self, gen: int, arg, result) -> None:
        if gen == self.gen and self.on_partial is not None:
            self.on_partial(arg, result)

    def _done(self, gen: int, arg, fut: Future) -> None:
        self.busy = False
        exc = fut.exception()
        if gen != self.gen or isinstance(exc, Aborted):
            self.stats["aborted" if isinstance(exc, Aborted) else "dropped"] += 1
        elif exc is not None:
            self.on_error(arg, exc)
        else:
            self.stats["applied"] += 1
            self.apply(arg, fut.result())
        if self.pending is not None:
            (g, a), self.pending = self.pending, None
            if g == self.gen:
                self._start(g, a)

    def supersede(self) -> None:
        """Drop every request made so far (a result computed elsewhere replaces them)."""
        self.gen += 1  # results in flight are stale from now on, whichever thread asks
        if running_loop() is self.loop:
            self._drop_pending()
        else:
            self.loop.call_soon_threadsafe(self._drop_pending)

    def _drop_pending(self) -> None:
        self.pending = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @property
    def idle(self) -> bool:
        return not self.busy and self._timer is None and self.pending is None and not self._queued

    def close(self) -> None:
        self.gen += 1
        self.pool.shutdown(wait=False, cancel_futures=True)


class Ticket:
    """What a computation holds: calling it says whether a newer request has arrived (stop then);
    ``publish(result)`` shows a partial result now (on the loop's thread, unless it is stale by then)."""

    def __init__(self, runner: LatestOnlyRunner, gen: int, arg):
        self.runner, self.gen, self.arg = runner, gen, arg

    def __call__(self) -> bool:
        return self.gen != self.runner.gen

    def publish(self, result) -> None:
        self.runner.loop.call_soon_threadsafe(self.runner._partial, self.gen, self.arg, result)


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread (a notebook cell runs in the kernel's), or None."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def live(loop: asyncio.AbstractEventLoop | None) -> bool:
    """Work can be handed to ``loop``: there is one and it has not been closed (a Lab built inside an
    ``asyncio.run`` that has since ended computes synchronously, as in a script)."""
    return loop is not None and not loop.is_closed()


def _kernel_loop() -> asyncio.AbstractEventLoop:
    loop = running_loop()
    if loop is None:
        raise RuntimeError("the live runner needs the kernel's event loop: create the Lab in a notebook cell "
                           "(or inside a running asyncio loop)")
    return loop


class ModelLock:
    """One pass at a time on a model (hooks and patching's shortened block list are shared state),
    fair to interactive work.

    ``with lock:`` is for interactive work (a live edit, a cell's detail): it waits at most for the
    pass in progress. ``with lock.background():`` is for long jobs, which take the lock once per
    batch: before each, they step aside while any interactive request is waiting. Re-entrant on
    one thread.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._count = threading.Lock()
        self._waiting = 0
        self._owner: int | None = None
        self._depth = 0

    def _acquire(self, background: bool) -> None:
        me = threading.get_ident()
        if self._owner == me:
            self._depth += 1
            return
        if background:
            while self._waiting:
                time.sleep(0.002)
        else:
            with self._count:
                self._waiting += 1
        try:
            self._lock.acquire()
        finally:
            if not background:
                with self._count:
                    self._waiting -= 1
        self._owner, self._depth = me, 1

    def _release(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._owner = None
            self._lock.release()

    def __enter__(self) -> "ModelLock":
        self._acquire(background=False)
        return self

    def __exit__(self, *exc) -> None:
        self._release()

    @contextmanager
    def background(self):
        self._acquire(background=True)
        try:
            yield self
        finally:
            self._release()

    @property
    def waiting(self) -> int:
        """Interactive requests waiting for the model now."""
        return self._waiting


_FETCH: ThreadPoolExecutor | None = None


def offload(loop: asyncio.AbstractEventLoop | None, work: Callable[[], Any], done: Callable[[Any], None]) -> None:
    """Run ``work()`` off the kernel's loop and ``done(result)`` back on it (a view fetching data it
    holds in Python, e.g. the attention of a newly picked layer). Without a loop (a script, a test)
    both run now, in this thread. ``work`` raising is logged; ``done`` is then not called."""
    global _FETCH
    if not live(loop):
        done(work())
        return
    if _FETCH is None:
        _FETCH = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mechviz-fetch")

    def finished(fut: Future) -> None:
        if fut.exception() is not None:
            log.error("mechviz: background fetch failed", exc_info=fut.exception())
        else:
            loop.call_soon_threadsafe(done, fut.result())
    _FETCH.submit(work).add_done_callback(finished)
