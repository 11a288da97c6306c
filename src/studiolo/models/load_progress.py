"""A model load's progress, from the thread that loads it to whoever waits for it on the event loop.

llama.cpp reports a fraction (0..1) as it loads a model's tensors, from the loading thread, often
hundreds of times within a few milliseconds (a memory-mapped file's tensors are mapped, not read).
``LoadProgress.report`` takes them from that thread and hands them to the event loop coalesced: at
most one update every ``MIN_INTERVAL`` seconds, the latest fraction always delivered (trailing edge),
each larger than the last. Any number of watchers see the same updates, also one that starts
watching once the load is under way (it gets the fraction reached so far first).

JIT loads are found by model key (``LoadBoard``): concurrent requests JIT-loading one model watch
the one load; a watcher may start before the load does (it waits behind an eviction, another load).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable

MIN_INTERVAL = 0.05  # seconds: no more than 20 updates a second reach the event loop


class LoadProgress:
    """One load's progress. Made on the event loop; ``report`` may be called from any thread."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.fraction = -1.0  # what watchers were last told; none yet
        self.ended = False
        self.started = False  # whether a load took this object on (LoadBoard)
        self._watchers: set[asyncio.Queue[float | None]] = set()
        self._lock = threading.Lock()
        self._latest = -1.0  # the loading thread's latest report, not yet told
        self._scheduled = False  # a delivery of _latest is on its way to the loop
        self._last_told = 0.0  # monotonic time of the last update watchers got

    # --- the loading thread ---------------------------------------------------------

    def report(self, fraction: float) -> None:
        """Called by the loading thread: deliver ``fraction`` to the loop, soon or with a later one."""
        with self._lock:
            self._latest = max(self._latest, min(max(fraction, 0.0), 1.0))
            if self._scheduled:
                return  # a delivery under way takes the latest value when it runs
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._deliver_in_time)
        except RuntimeError:  # the loop is closed (the server is stopping): nobody is watching
            pass

    # --- the event loop -------------------------------------------------------------

    def _deliver_in_time(self) -> None:
        wait = self._last_told + MIN_INTERVAL - time.monotonic()
        if wait > 0:
            self._loop.call_later(wait, self._deliver)
        else:
            self._deliver()

    def _deliver(self) -> None:
        with self._lock:
            latest, self._scheduled = self._latest, False
        self._tell(latest)

    def _tell(self, fraction: float | None) -> None:
        if self.ended:
            return
        if fraction is not None:
            if fraction <= self.fraction:
                return
            self.fraction = fraction
            self._last_told = time.monotonic()
        for queue in self._watchers:
            queue.put_nowait(fraction)

    def end(self) -> None:
        """The load is over (loaded or failed): watchers get what is still pending, then the end."""
        with self._lock:
            latest = self._latest
        self._tell(latest)
        self._tell(None)
        self.ended = True

    def watch(self, on_close: Callable[[], None] | None = None) -> Watch:
        queue: asyncio.Queue[float | None] = asyncio.Queue()
        if self.fraction >= 0:
            queue.put_nowait(self.fraction)  # a late watcher starts where the load is
        if self.ended:
            queue.put_nowait(None)
        else:
            self._watchers.add(queue)
        return Watch(self, queue, on_close)

    def unwatch(self, queue: asyncio.Queue[float | None]) -> None:
        self._watchers.discard(queue)

    @property
    def watched(self) -> bool:
        return bool(self._watchers)


class Watch:
    """One watcher's updates of a load: ``fractions_until`` yields them; ``close`` stops watching."""

    def __init__(self, progress: LoadProgress, queue: asyncio.Queue[float | None],
                 on_close: Callable[[], None] | None = None):
        self.progress = progress
        self._queue = queue
        self._on_close = on_close

    async def fractions_until(self, work: asyncio.Future) -> AsyncIterator[float]:
        """The load's fractions as they come, until it ends or ``work`` (what waits for the load:
        a request's start) is done; what was already delivered by then is still yielded."""
        while True:
            getting = asyncio.ensure_future(self._queue.get())
            try:
                await asyncio.wait({getting, work}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not getting.done():
                    getting.cancel()  # a queue's get cancelled takes nothing from it
            if not getting.done() or getting.cancelled():
                break
            fraction = getting.result()
            if fraction is None:
                return
            yield fraction
        while not self._queue.empty():  # work is done: what the load delivered before that
            fraction = self._queue.get_nowait()
            if fraction is None:
                return
            yield fraction

    def close(self) -> None:
        self.progress.unwatch(self._queue)
        if self._on_close is not None:
            self._on_close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LoadBoard:
    """The JIT loads under way (or awaited), by model key."""

    def __init__(self) -> None:
        self._loads: dict[str, LoadProgress] = {}

    def watch(self, key: str) -> Watch:
        """Watch the load of ``key`` under way, or the next one to start."""
        progress = self._loads.get(key)
        if progress is None or progress.ended:
            progress = self._loads[key] = LoadProgress()
        return progress.watch(on_close=lambda: self._forget_unstarted(key, progress))

    def begin(self, key: str) -> LoadProgress:
        """The progress of a load of ``key`` starting now (its watchers may be waiting already)."""
        progress = self._loads.get(key)
        if progress is None or progress.ended or progress.started:
            progress = self._loads[key] = LoadProgress()
        progress.started = True
        return progress

    def end(self, key: str, progress: LoadProgress) -> None:
        progress.end()
        if self._loads.get(key) is progress:
            del self._loads[key]

    def _forget_unstarted(self, key: str, progress: LoadProgress) -> None:
        """A watcher left before any load began (the model was there after all, the request failed)."""
        if not progress.started and not progress.watched and self._loads.get(key) is progress:
            del self._loads[key]

    def __len__(self) -> int:
        return len(self._loads)
