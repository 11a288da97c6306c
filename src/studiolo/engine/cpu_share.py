"""How many threads llama.cpp should use now: fewer while other programs keep the cores busy.

llama.cpp's CPU backend splits every graph operation over its OpenMP threads, which wait for each
other at a barrier after each one: hundreds of barriers per token. libgomp spins there. When
another program keeps the cores busy, the kernel takes one of the threads off its core for a
whole time slice while its partner spins at the barrier, again and again. Measured on 2 cores
beside two CPU-bound processes, SmolLM2 decoded 1.0 tok/s with 2 threads and 14.3 tok/s with 1
(61 tok/s with 2 threads on the idle machine). So the compute thread asks, before each step, how
many cores the rest of the machine leaves free, measured from /proc/stat over the last half
second, and runs llama.cpp with that many threads (at least one, at most the configured number).
After an idle time the window would mostly hold what others did while this process waited (another
server's request in a benchmark taken in turns cost the next image prompt 0.7 s at one thread), so the
first step after idle keeps the last estimate and a fresh window starts.

The thread count does not change results: each output value is computed whole by one thread
(checked bit for bit on both default models, prefill and decode), so it may change between steps.
Where /proc/stat cannot be read (not Linux), the configured number is always used.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

SAMPLE_SECONDS = 0.5  # how often the machine's load is read again
# a window longer than this in which this process hardly ran spans a time it did not compute: the load
# then was another program's turn (another server between two requests, say), not the load now
STALE_SECONDS = 2 * SAMPLE_SECONDS
IDLE_CORES = 0.5  # a window in which this process used less than this was mostly idle (a slow step is not)
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # /proc/stat's cpu line: user nice system (idle iowait) irq softirq steal


def _machine_busy_ticks() -> int | None:
    """Clock ticks every core of the machine has spent running something since boot."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    values = [int(value) for value in first[1:]]
    return sum(values[i] for i in _BUSY_FIELDS if i < len(values))


def _own_ticks() -> int:
    """Clock ticks this process has run (all its threads)."""
    times = os.times()
    return round((times.user + times.system) * _CLOCK_TICKS)


class CpuShare:
    def __init__(self) -> None:
        self.cores = os.cpu_count() or 1  # /proc/stat counts every core of the machine
        self._free = float(self.cores)  # cores the rest of the machine leaves free
        self._last: tuple[float, int, int] | None = self._sample()

    def threads(self, configured: int) -> int:
        """The threads to compute with now: ``configured``, or fewer while the cores are busy elsewhere.

        Called by the compute thread before each step; reads the load at most every SAMPLE_SECONDS.
        """
        if self._last is None:  # the load cannot be read here
            return configured
        if time.monotonic() - self._last[0] >= SAMPLE_SECONDS:
            self._update()
        return max(1, min(configured, int(self._free + 0.5)))

    def _sample(self) -> tuple[float, int, int] | None:
        busy = _machine_busy_ticks()
        return None if busy is None else (time.monotonic(), busy, _own_ticks())

    def _update(self) -> None:
        now = self._sample()
        if now is None or self._last is None:
            self._last, self._free = None, float(self.cores)
            return
        seconds = now[0] - self._last[0]
        own = now[2] - self._last[2]
        if seconds > STALE_SECONDS and own / _CLOCK_TICKS / seconds < IDLE_CORES:
            self._last = now  # back from idle: keep the last estimate, measure afresh from now
            return
        others = (now[1] - self._last[1]) - own  # ticks of other processes
        self._free = self.cores - max(0.0, others / _CLOCK_TICKS / seconds)
        self._last = now
