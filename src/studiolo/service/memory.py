"""Where the server's memory goes, and giving back what is freed.

``MemoryMonitor`` gathers the figures ``GET /studiolo/memory`` and ``studiolo ps`` show: resident
memory, each loaded instance's weights, KV cache and compute buffers (what llama.cpp allocated at
load), its live sequences, and every cache that grows with traffic with its used bytes and
budget. Caches are providers registered at startup, each a function returning
``(used_bytes, budget_bytes)``; the prompt cache and the log queues are registered here, other
parts register theirs (``register``). Each figure is a number under a fixed name, so that each
maps to one Prometheus gauge (``studiolo_cache_used_bytes{cache="prompt_cache"}``).

Its janitor gives freed memory back to the system (engine/process_memory.py): glibc keeps what
the server frees in its arenas, so after a burst of traffic resident memory stays high though
nothing uses it. Once the models have been idle for ``IDLE_TRIM_SECONDS``, or when allocated
memory grew by ``GROWTH_TRIM_BYTES`` while they were idle (requests refused before reaching a
model still allocate), it calls ``malloc_trim``, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict

from studiolo.engine import process_memory
from studiolo.engine.constraints import tokenizer_bytes as constraint_tokenizer_bytes
from studiolo.engine.grammar_cache import GRAMMAR_CACHE
from studiolo.models.instance import Instance
from studiolo.models.manager import ModelManager
from studiolo.service.model_log import LogHub

log = logging.getLogger(__name__)

MIB = 2**20
MALLOC_ARENAS = 2  # the event loop's and the compute thread's; worker threads share them
JANITOR_SECONDS = 1.0  # how often the janitor looks
IDLE_TRIM_SECONDS = 2.0  # idle this long after work, the models' freed memory goes back
GROWTH_TRIM_BYTES = 32 * MIB  # allocated memory grown this much while idle: trim again

CacheProvider = Callable[[], tuple[int, int | None]]  # -> (used_bytes, budget_bytes or None)


class CacheFigures(TypedDict):
    used_bytes: int
    budget_bytes: int | None  # None: the cache has no budget of its own


@dataclass
class Trim:
    at: float  # time.time()
    released_bytes: int  # how much anonymous resident memory went down


class MemoryMonitor:
    def __init__(self, manager: ModelManager, log_hub: LogHub | None = None):
        self.manager = manager
        process_memory.limit_arenas(MALLOC_ARENAS)
        self._providers: dict[str, CacheProvider] = {}
        self.register("prompt_cache", manager.prompt_cache_usage)
        self.register("grammar_cache", lambda: (GRAMMAR_CACHE.bytes, GRAMMAR_CACHE.budget))
        if log_hub is not None:
            self.register("log_queues", lambda: (log_hub.pending_bytes(), log_hub.budget_bytes))
        self.last_trim: Trim | None = None
        self._task: asyncio.Task | None = None

    def register(self, name: str, provider: CacheProvider) -> None:
        """Show a cache's figures under ``name``; ``provider`` is called at each report, from the
        event loop, so it must be quick and must not block."""
        self._providers[name] = provider

    # --- figures ----------------------------------------------------------------------

    def caches(self) -> dict[str, CacheFigures]:
        figures: dict[str, CacheFigures] = {}
        for name, provider in self._providers.items():
            try:
                used, budget = provider()
            except Exception:  # one broken figure must not hide the others
                log.exception("memory figure %s failed", name)
                continue
            figures[name] = {"used_bytes": int(used), "budget_bytes": None if budget is None else int(budget)}
        return figures

    def report(self) -> dict[str, Any]:
        memory = process_memory.resident()
        instances = [instance_figures(instance) for instance in self.manager.loaded()]
        caches = self.caches()
        held = sum(i["weights_bytes"] + i["kv_cache_bytes"] + i["compute_bytes"] + i["token_pieces_bytes"]
                   + i["constraint_tokenizer_bytes"] for i in instances)
        return {
            "resident_bytes": memory.rss,
            "resident_anonymous_bytes": memory.anonymous,
            "resident_file_bytes": memory.file,
            "peak_resident_bytes": memory.peak,
            "allocator_free_bytes": process_memory.allocator_free_bytes(),
            # what loaded models hold at most plus what caches hold now; the rest of resident
            # memory is the server itself (Python, libraries, requests in flight)
            "accounted_bytes": held + sum(cache["used_bytes"] for cache in caches.values()),
            "instances": instances,
            "caches": caches,
            "last_trim": None if self.last_trim is None else {
                "at": self.last_trim.at, "released_bytes": self.last_trim.released_bytes},
        }

    # --- janitor ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the janitor; call on the event loop, once."""
        self._task = asyncio.create_task(self._janitor())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _janitor(self) -> None:
        trimmed_at = busy_at = time.monotonic()
        baseline = process_memory.resident().anonymous
        while True:
            await asyncio.sleep(JANITOR_SECONDS)
            loaded = self.manager.loaded()
            if any(instance.busy() for instance in loaded):
                busy_at = time.monotonic()
                continue
            # a request touches its instance when it starts; one that ran past a look was busy then
            active = max([busy_at, *(instance.last_active for instance in loaded)])
            settled = trimmed_at < active <= time.monotonic() - IDLE_TRIM_SECONDS
            grown = process_memory.resident().anonymous - baseline >= GROWTH_TRIM_BYTES
            if settled or grown:
                await asyncio.to_thread(self.trim)
                trimmed_at = time.monotonic()
                baseline = process_memory.resident().anonymous

    def trim(self) -> Trim:
        """Give the allocator's free memory back now (blocking: call it in a thread)."""
        before = process_memory.resident().anonymous
        process_memory.trim()
        released = max(0, before - process_memory.resident().anonymous)
        self.last_trim = Trim(time.time(), released)
        if released >= MIB:
            log.debug("gave %.0f MiB of freed memory back to the system", released / MIB)
        return self.last_trim


def instance_figures(instance: Instance) -> dict[str, Any]:
    running, queued = instance.engine.request_counts()
    footprint = instance.footprint
    return {
        "id": instance.id,
        "model_key": instance.key,
        "weights_bytes": footprint.weights,
        "kv_cache_bytes": footprint.kv_cache,
        "compute_bytes": footprint.compute,
        "token_pieces_bytes": instance.model.pieces_bytes,
        "constraint_tokenizer_bytes": constraint_tokenizer_bytes(instance.model),
        # of weights and compute above: the vision projector's, as libmtmd logged them (0: none)
        "vision_projector_bytes": _projector_bytes(instance),
        "running_sequences": running,
        "queued_sequences": queued,
    }


def _projector_bytes(instance: Instance) -> int:
    vision = getattr(instance.engine, "vision", None)
    return sum(vision.memory_bytes.values()) if vision is not None else 0
