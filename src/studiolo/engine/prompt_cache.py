"""Cached prompt prefixes kept in RAM, out of the KV cache.

Every cell in the unified KV cache costs every running sequence a little attention time
(flash attention walks all cells, skipping the masked ones). So a finished sequence's cells
do not stay there while other sequences run: they are saved here (llama.cpp's per-sequence
state, a few MB per thousand tokens) and restored into a slot when a new prompt starts the
same way. Least recently used entries go first when the byte budget is reached.

The budget is the process's, not each engine's: every loaded model's cache belongs to one
``PromptCachePool`` (``POOL``), whose budget (``Budgets.prompt_cache_mib``, set by the model
manager) bounds them all together, evicting the least recently used entry of any model. With
one budget per engine, each extra instance could add the whole budget again (issue 15 saw 4.2 GB
with a few instances loaded). A cache's own ``budget_bytes`` still caps it alone (engines made
without a manager, in tests and benchmarks, have only that).

Cells computed with a LoRA adapter hold other values than the bare model's for the same
tokens, so every entry records its adapter and only serves prompts decoded with that one.

Entries change on the compute thread only (closing an engine's cache aside, under the pool's
lock); other threads read snapshots (``best_match(touch=False)``, ``used_bytes``).
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass, field

import numpy as np

from studiolo.engine.llama import LoraAdapter

MIN_CACHED_TOKENS = 16  # shorter prefixes are cheaper to recompute than to keep


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:  # the usual case (a prompt resuming a cached one), compared at C speed
        return n
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class CachedPrompt:
    tokens: list[int]  # what the saved state holds, positions 0..len-1
    state: np.ndarray  # llama_state_seq_get_data's bytes
    adapter: LoraAdapter | None = None  # what the cells were computed with
    last_used: float = field(default_factory=time.monotonic)

    @property
    def nbytes(self) -> int:
        """What the entry holds in RAM: the state, and the token list (a pointer and an int each)."""
        return self.state.nbytes + 36 * len(self.tokens)


class PromptCachePool:
    """Every engine's prompt cache, under one budget in bytes (None: each cache's own only)."""

    def __init__(self, budget_bytes: int | None = None):
        self.budget_bytes = budget_bytes
        self._caches: weakref.WeakSet[PromptCache] = weakref.WeakSet()
        self.lock = threading.Lock()

    def join(self, cache: PromptCache) -> None:
        with self.lock:
            self._caches.add(cache)

    def caches(self) -> list[PromptCache]:
        return list(self._caches)

    @property
    def used_bytes(self) -> int:
        return sum(cache.used_bytes for cache in self.caches())

    @property
    def entry_count(self) -> int:
        return sum(len(cache.entries) for cache in self.caches())

    def limit(self, cache: PromptCache) -> int:
        """What ``cache`` may hold at most: its own budget, within the pool's."""
        return cache.budget_bytes if self.budget_bytes is None else min(cache.budget_bytes, self.budget_bytes)

    def shrink(self) -> None:
        """Evict the least recently used entries of any cache until the pool is within its budget;
        called with ``lock`` held."""
        if self.budget_bytes is None:
            return
        caches = self.caches()
        while sum(cache.used_bytes for cache in caches) > self.budget_bytes:
            owner, oldest = min(((cache, entry) for cache in caches for entry in cache.entries),
                                key=lambda pair: pair[1].last_used)
            owner.drop(oldest)


POOL = PromptCachePool()  # the process's; ModelManager sets its budget from Budgets.prompt_cache_mib


class PromptCache:
    def __init__(self, budget_bytes: int, pool: PromptCachePool = POOL):
        self.budget_bytes = budget_bytes
        self.entries: list[CachedPrompt] = []
        self.used_bytes = 0  # kept with entries, so that readers need not walk them
        self.pool = pool
        pool.join(self)

    def best_match(
        self, prompt: list[int], adapter: LoraAdapter | None = None, *, touch: bool = True
    ) -> tuple[CachedPrompt | None, int]:
        """The entry of ``adapter`` sharing the longest prefix with ``prompt``, and that length."""
        best, length = None, 0
        for entry in self._of(adapter):
            shared = common_prefix_length(entry.tokens, prompt)
            if shared > length:
                best, length = entry, shared
        if best is not None and touch:
            best.last_used = time.monotonic()
        return best, length

    def _of(self, adapter: LoraAdapter | None) -> list[CachedPrompt]:
        return [entry for entry in list(self.entries) if entry.adapter is adapter]

    def covers(self, tokens: list[int], adapter: LoraAdapter | None = None) -> bool:
        """Whether an entry already holds ``tokens`` (or more), so saving them adds nothing."""
        return any(len(e.tokens) >= len(tokens) and e.tokens[: len(tokens)] == tokens for e in self._of(adapter))

    def wants(self, tokens: list[int], adapter: LoraAdapter | None = None) -> bool:
        return (self.pool.limit(self) > 0 and len(tokens) >= MIN_CACHED_TOKENS
                and not self.covers(tokens, adapter))

    def put(self, tokens: list[int], state: np.ndarray, adapter: LoraAdapter | None = None) -> None:
        entry = CachedPrompt(list(tokens), state, adapter)
        with self.pool.lock:
            limit = self.pool.limit(self)
            if entry.nbytes > limit:
                return
            # an entry that is a prefix of the new one is superseded by it
            for old in [e for e in self.entries if e.adapter is adapter and e.tokens == tokens[: len(e.tokens)]]:
                self.drop(old)
            self.entries.append(entry)
            self.used_bytes += entry.nbytes
            while self.used_bytes > limit:
                self.drop(min(self.entries, key=lambda e: e.last_used))
            self.pool.shrink()

    def drop(self, entry: CachedPrompt) -> None:
        self.entries.remove(entry)
        self.used_bytes -= entry.nbytes

    def clear(self) -> None:
        with self.pool.lock:
            self.entries.clear()
            self.used_bytes = 0
