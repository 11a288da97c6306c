"""KV-cache slots and prefix reuse.

The context holds ``parallel`` llama.cpp sequence ids, one per slot. A slot remembers
which tokens its cells hold, and keeps them after its sequence finishes, so the next
request that starts the same way (the next turn of a chat resends the whole history)
prefills only what is new.

A new sequence takes a free slot. It reuses the longest token prefix found in any slot,
free or busy: in a free slot by taking that slot; in a busy one by sharing its cells
(the unified KV cache lets one cell belong to several sequences, so this copies no data).

Each slot holds at most ``context_length`` tokens, so all slots together never need more
cells than the context has: ``parallel * context_length``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from studiolo.engine.llama import LlamaContext


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # what the KV cells of seq_id hold, by position
    busy: bool = False
    last_used: float = 0.0


class SlotPool:
    def __init__(self, context: LlamaContext, count: int, n_swa: int):
        self._context = context
        self._n_swa = n_swa
        self.slots = [Slot(seq_id) for seq_id in range(count)]

    def has_free(self) -> bool:
        return any(not slot.busy for slot in self.slots)

    def acquire(self, prompt: list[int], reuse: bool = True) -> tuple[Slot, int]:
        """Take a free slot for ``prompt``; return it and how many prompt tokens it reuses.

        At least one prompt token is always left to prefill, since sampling needs the
        logits of the last prompt position.
        """
        free = [slot for slot in self.slots if not slot.busy]
        if not free:
            raise RuntimeError("no free KV slot")  # the scheduler checks has_free() first
        if not reuse:  # take the slot whose cache is least likely to be wanted again
            target = min(free, key=lambda slot: slot.last_used)
            self._truncate(target, 0)
            target.busy = True
            return target, 0
        matches = {slot.seq_id: common_prefix_length(slot.tokens, prompt) for slot in self.slots}
        source = max(self.slots, key=lambda slot: (matches[slot.seq_id], not slot.busy))
        if not source.busy:
            target = source
        else:
            target = max(free, key=lambda slot: (matches[slot.seq_id], -slot.last_used))
        reused = matches[target.seq_id]
        if matches[source.seq_id] > reused:
            reused = matches[source.seq_id]
            self._context.copy_prefix(source.seq_id, target.seq_id, reused)
            target.tokens = prompt[:reused]
        reused = self._check_window(target, min(reused, len(prompt) - 1))
        reused = self._truncate(target, reused)
        target.busy = True
        return target, reused

    def _truncate(self, slot: Slot, length: int) -> int:
        """Keep the slot's first ``length`` tokens; returns how many it kept."""
        if not self._context.remove_from(slot.seq_id, length):
            self._context.remove_from(slot.seq_id, 0)  # cannot cut part-way: start afresh
            length = 0
        del slot.tokens[length:]
        return length

    def forget(self, slot: Slot) -> None:
        """Drop everything the slot holds (its cells may no longer match its tokens)."""
        self._truncate(slot, 0)

    def _check_window(self, slot: Slot, reuse: int) -> int:
        """Sliding-window layers must still hold the window before the resume point."""
        if reuse == 0 or self._n_swa <= 0:
            return reuse
        needed_from = max(0, reuse - self._n_swa)
        lowest = self._context.min_position(slot.seq_id)
        return reuse if 0 <= lowest <= needed_from else 0

    def release(self, slot: Slot) -> None:
        slot.busy = False
        slot.last_used = time.monotonic()

    def forget_all(self) -> None:
        self._context.clear()
        for slot in self.slots:
            slot.tokens.clear()
