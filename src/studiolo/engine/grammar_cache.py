"""The process's cache of checked and compiled grammars, bounded in bytes (``Budgets.grammar_cache_mib``).

Two kinds of entries share it: a definition that passed validation (its size: the definition's
text, which the cache keeps as its key) and a grammar compiled for a model (its size: what the
heap grew by while llguidance compiled it, at least a floor proportional to the grammar). The
heap is read with glibc's ``mallinfo2``, which llguidance's Rust allocations go through; other
threads allocating at the same time can only make an entry look larger, so it is evicted sooner.
Measured with SmolLM2's vocabulary: a small schema 130 KiB, 5,000 enum values (64 kB of grammar)
1.8 MiB, 5,000 choices (114 kB) 13.5 MiB.

``GRAMMAR_CACHE.bytes`` is the cache's current size, for memory figures.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from studiolo.config import load_budgets

MIB = 2**20
ENTRY_OVERHEAD = 512  # the key, the entry's bookkeeping

Key = TypeVar("Key", bound=Hashable)


class ByteBoundedCache(Generic[Key]):
    """An LRU whose entries carry a size; the least recently used go once the total passes the budget.

    An entry larger than the whole budget is not kept. Thread-safe.
    """

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self.bytes = 0
        self._entries: OrderedDict[Key, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Key) -> Any | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: Key, value: Any, size: int) -> Any:
        """Keep ``value`` under ``key`` (unless an entry is already there: that one is returned)."""
        size += ENTRY_OVERHEAD
        with self._lock:
            present = self._entries.get(key)
            if present is not None:
                self._entries.move_to_end(key)
                return present[0]
            if size > self.budget:
                return value
            self._entries[key] = (value, size)
            self.bytes += size
            while self.bytes > self.budget:
                _, (_, freed) = self._entries.popitem(last=False)
                self.bytes -= freed
            return value

    def discard_where(self, doomed: Callable[[Key], bool]) -> None:
        with self._lock:
            for key in [key for key in self._entries if doomed(key)]:
                self.bytes -= self._entries.pop(key)[1]

    def count_where(self, chosen: Callable[[Key], bool]) -> int:
        with self._lock:
            return sum(1 for key in self._entries if chosen(key))

    def resize(self, budget_bytes: int) -> None:
        with self._lock:
            self.budget = budget_bytes
            while self.bytes > self.budget and self._entries:
                _, (_, freed) = self._entries.popitem(last=False)
                self.bytes -= freed

    def __len__(self) -> int:
        return len(self._entries)


# keys: ("valid", spec) for a checked definition, (compiler, spec) for a compiled grammar
GRAMMAR_CACHE: ByteBoundedCache[tuple[Any, ...]] = ByteBoundedCache(load_budgets().grammar_cache_mib * MIB)
