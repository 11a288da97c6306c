"""The one thread per process that runs llama.cpp computations, for every loaded model.

Why one: llama.cpp's CPU backend parallelises each graph with OpenMP, and libgomp gives every
host thread that starts a parallel region its own team of worker threads. Once the process
holds more such threads than there are cores, libgomp stops letting them spin between
operations and they sleep on futexes instead, at every barrier of every graph. Measured on
2 cores: SmolLM2's bare decode loop fell from 132 to 100 tok/s as soon as a second model's
engine thread existed, idle or not (bench/NOTES.md). With one computing thread there is one
team, however many models are loaded; the engines take turns step by step, which is all two
cores could give them anyway.

Engines attach themselves; the thread runs a step of every engine that has work, and also
runs one-off calls (``call``) such as the benchmark's bare decode loop.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol, TypeVar

from studiolo.engine.cpu_share import CpuShare

T = TypeVar("T")
log = logging.getLogger(__name__)


class Steppable(Protocol):
    def ready(self) -> bool:
        """Whether a step has something to do (called with ``ComputeThread.wake`` held)."""

    def run_step(self) -> None:
        """One step, called on the compute thread without the lock."""


class ComputeThread:
    def __init__(self) -> None:
        # Engines guard their inboxes with this same condition, so a post can never slip in
        # between the loop's check for work and its wait.
        self.wake = threading.Condition()
        self._engines: list[Steppable] = []
        self._calls: deque[tuple[Callable[[], object], Future]] = deque()
        self._thread: threading.Thread | None = None
        self._cpu_share = CpuShare()

    def threads(self, configured: int) -> int:
        """How many threads a step should compute with now (engine/cpu_share.py); compute thread only."""
        return self._cpu_share.threads(configured)

    def attach(self, engine: Steppable) -> None:
        with self.wake:
            self._engines.append(engine)
            self._start()
            self.wake.notify()

    def detach(self, engine: Steppable) -> None:
        with self.wake:
            if engine in self._engines:
                self._engines.remove(engine)

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the compute thread between steps and return its result (blocking)."""
        if threading.current_thread() is self._thread:
            return fn()
        future: Future = Future()
        with self.wake:
            self._calls.append((fn, future))
            self._start()
            self.wake.notify()
        return future.result()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="llama-compute", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self.wake:
                while not self._calls and not any(engine.ready() for engine in self._engines):
                    self.wake.wait()
                calls = list(self._calls)
                self._calls.clear()
                ready = [engine for engine in self._engines if engine.ready()]
            for fn, future in calls:
                try:
                    future.set_result(fn())
                except BaseException as exc:  # handed to the caller
                    future.set_exception(exc)
            for engine in ready:
                try:
                    engine.run_step()
                except Exception:  # one engine's bug must not stop every model
                    log.exception("engine step failed")


COMPUTE = ComputeThread()
