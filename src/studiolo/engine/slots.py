"""KV-cache slots and prefix reuse.

The context holds ``parallel`` llama.cpp sequence ids, one per slot. A slot remembers which
tokens its cells hold, so the next request that starts the same way (the next turn of a chat
resends the whole history) prefills only what is new.

A new sequence takes a free slot and reuses the longest token prefix found anywhere:

- in a free slot, by taking that slot (nothing moves);
- in a busy slot, by sharing its cells (the unified KV cache lets one cell belong to several
  sequences, so this copies no data);
- in the RAM prompt cache, by restoring the saved state into the slot.

Cells of finished sequences slow every running sequence down (attention walks all cells), so
when a sequence is admitted, the other idle slots move their cells to the RAM prompt cache.
A single conversation going on turn after turn keeps its slot and never copies anything.

A slot also remembers the LoRA adapter its cells were computed with (None: the bare model);
only a prompt decoded with the same adapter can reuse them.

Each slot holds at most ``context_length`` tokens, so all slots together never need more
cells than the context has: ``parallel * context_length``.

Read lanes. A read (a scoring request that samples nothing: engine/prompt_scoring.py) holds its cells
for one step only, so it need not wait for one of the ``parallel`` slots: the context has ``lanes``
more sequence ids, read lanes, which the scheduler gives to waiting reads whose prompt a slot holds
most of. A lane borrows that prefix from the slot (``copy_prefix``: shared cells, no copy), decodes
the read's own tokens whole in the step it was given, and is emptied when the read ends at the end of
that step: between steps every lane is empty. Its own cells are at most the step's batch, so the
context has ``batch_size`` cells more than the slots' share (``kv_cells``), and the borrowed cells
stay its slot's until the step is over (nothing cuts a slot between planning and decoding a step):
a lane never takes a cell a slot would need. Lanes hold no cache, and no generating sequence runs
in one. A model that keeps a recurrent state has none (a state per sequence id costs memory), nor
a context of one slot (``read_lanes``).

A slot's tokens are its rows, one KV cell each; cutting or sharing cells is done by KV position.
Those are the same but past an M-RoPE image (fewer positions than rows): the operations that cut
at a row of a prompt take that prompt's map of rows to positions (``Sequence.position``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from studiolo.engine.llama import LlamaContext, LoraAdapter
from studiolo.engine.prompt_cache import MIN_CACHED_TOKENS, PromptCache, common_prefix_length

RowPositions = Callable[[int], int]  # a prompt's row -> its KV position

READ_LANES = 64  # sequence ids for reads beside the slots (a step of 512 tokens holds ~50 reads of ~10)
LLAMA_MAX_SEQ = 256  # llama.cpp's bound on a context's sequence ids


def read_lanes(parallel: int, batch_size: int, can_truncate: bool) -> int:
    """How many read lanes a context of ``parallel`` slots gets (module docstring). None for one slot:
    ``parallel=1`` asks for every sequence to run alone (the figures of a read then equal those of the
    same prompt scored by itself). llama.cpp wants no more sequence ids than a batch has tokens (it
    reserves an output row per sequence)."""
    if parallel < 2 or not can_truncate:
        return 0
    return max(0, min(READ_LANES, LLAMA_MAX_SEQ - parallel, batch_size - parallel))


def kv_cells(context_length: int, parallel: int, batch_size: int, lanes: int) -> int:
    """The context's KV cells: each slot's context, and a batch of cells for the read lanes' own tokens."""
    return context_length * parallel + (batch_size if lanes else 0)


def same_position(row: int) -> int:
    """Rows to positions for a prompt without M-RoPE images: one position per row."""
    return row


@dataclass
class Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # what the KV cells of seq_id hold, by position
    adapter: LoraAdapter | None = None  # what those cells were computed with
    busy: bool = False
    last_used: float = 0.0
    lane: bool = False  # a read lane (module docstring): empty between steps


class SlotPool:
    def __init__(self, context: LlamaContext, count: int, n_swa: int, cache: PromptCache, lanes: int = 0):
        self._context = context
        self._n_swa = n_swa
        self.cache = cache
        self.slots = [Slot(seq_id) for seq_id in range(count)]
        self.lanes = [Slot(seq_id, lane=True) for seq_id in range(count, count + lanes)]

    def has_free(self) -> bool:
        return any(not slot.busy for slot in self.slots)

    def acquire(
        self, prompt: list[int], adapter: LoraAdapter | None = None, reuse: bool = True,
        positions: RowPositions = same_position, prefill_at_least: int = 1,
    ) -> tuple[Slot, int]:
        """Take a free slot for ``prompt`` decoded with ``adapter``; return it and how many
        prompt tokens it reuses. ``positions`` maps the prompt's rows to KV positions.

        At least one prompt token is always left to prefill, since sampling needs the
        logits of the last prompt position; scoring a prompt's tail needs ``prefill_at_least``.
        """
        free = [slot for slot in self.slots if not slot.busy]
        if not free:
            raise RuntimeError("no free KV slot")  # the scheduler checks has_free() first
        if reuse:
            target, reused = self._place_longest_prefix(prompt, adapter, free, positions)
            reused = self._check_window(target, min(reused, len(prompt) - prefill_at_least), positions)
        else:  # scoring a prompt: nothing is reused; take the least recently used slot
            target, reused = min(free, key=lambda slot: slot.last_used), 0
        if len(target.tokens) - reused >= MIN_CACHED_TOKENS:
            self._save(target)  # what is about to be cut off may serve another request later
        reused = self._truncate(target, reused, positions)
        target.adapter = adapter  # what it keeps was computed with it; what follows will be
        target.busy = True
        for slot in free:
            if slot is not target:
                self._offload(slot)
        return target, reused

    def _place_longest_prefix(
        self, prompt: list[int], adapter: LoraAdapter | None, free: list[Slot], positions: RowPositions
    ) -> tuple[Slot, int]:
        """Choose the slot for ``prompt`` and bring the longest known prefix of it there."""
        matches = {
            slot.seq_id: common_prefix_length(slot.tokens, prompt) if slot.adapter is adapter else 0
            for slot in self.slots
        }
        source = max(self.slots, key=lambda slot: (matches[slot.seq_id], not slot.busy))
        # the free slot matching best; on a tie, an empty one, else the least recently used
        target = max(free, key=lambda slot: (matches[slot.seq_id], not slot.tokens, -slot.last_used))
        reused = matches[target.seq_id]
        entry, cached = self.cache.best_match(prompt, adapter)
        if entry is not None and cached > max(matches[source.seq_id], reused):
            self._offload(target)
            if self._context.load_sequence(target.seq_id, entry.state):
                target.tokens = list(entry.tokens)
                return target, cached
            self._truncate(target, 0)  # it did not fit: start afresh
            return target, 0
        if matches[source.seq_id] > reused:
            self._offload(target)
            reused = matches[source.seq_id]
            self._context.copy_prefix(source.seq_id, target.seq_id, positions(reused))
            target.tokens = prompt[:reused]
        return target, reused

    def _save(self, slot: Slot) -> None:
        """Copy the slot's cells to the RAM prompt cache, if they are worth keeping."""
        if self.cache.wants(slot.tokens, slot.adapter):
            self.cache.put(slot.tokens, self._context.save_sequence(slot.seq_id), slot.adapter)

    def _offload(self, slot: Slot) -> None:
        """Move an idle slot's cells to the RAM prompt cache and free them."""
        if slot.tokens:
            self._save(slot)
            self._truncate(slot, 0)

    def _truncate(self, slot: Slot, length: int, positions: RowPositions = same_position) -> int:
        """Keep the slot's first ``length`` tokens (rows up to position ``positions(length)``); returns
        how many it kept."""
        if not self._context.remove_from(slot.seq_id, positions(length)):
            self._context.remove_from(slot.seq_id, 0)  # cannot cut part-way: start afresh
            length = 0
        del slot.tokens[length:]
        return length

    def keep(self, slot: Slot, length: int, positions: RowPositions = same_position) -> int:
        """Cut a slot's cells back to its first ``length`` tokens; returns how many it kept."""
        return self._truncate(slot, length, positions)

    def forget(self, slot: Slot) -> None:
        """Drop everything the slot holds (its cells may no longer match its tokens)."""
        self._truncate(slot, 0)

    def _check_window(self, slot: Slot, reuse: int, positions: RowPositions) -> int:
        """Sliding-window layers must still hold the window before the resume point."""
        if reuse == 0 or self._n_swa <= 0:
            return reuse
        needed_from = max(0, positions(reuse) - self._n_swa)
        lowest = self._context.min_position(slot.seq_id)
        return reuse if 0 <= lowest <= needed_from else 0

    def cached_prefix_length(self, tokens: list[int], adapter: LoraAdapter | None) -> int:
        """The longest prefix of ``tokens`` held by a slot or the RAM cache (read from any thread:
        a snapshot that may be a step old)."""
        in_slots = max((common_prefix_length(slot.tokens, tokens) for slot in list(self.slots)
                        if slot.adapter is adapter), default=0)
        return max(in_slots, self.cache.best_match(tokens, adapter, touch=False)[1])

    def offer(self, tokens: list[int], state: bytes, adapter: LoraAdapter | None) -> None:
        """Keep a sequence saved elsewhere in the RAM cache, unless as much of it is here already."""
        if self.cached_prefix_length(tokens, adapter) < len(tokens):
            self.cache.put(list(tokens), np.frombuffer(state, dtype=np.uint8), adapter)

    def release(self, slot: Slot) -> None:
        slot.busy = False
        if slot.lane:  # its read is over: the cells it borrowed or made go back
            self._truncate(slot, 0)
            return
        slot.last_used = time.monotonic()

    def free_lane(self) -> Slot | None:
        return next((lane for lane in self.lanes if not lane.busy), None)

    def lender(self, prompt: list[int], adapter: LoraAdapter | None, prefill_at_least: int) -> tuple[Slot | None, int]:
        """The slot holding the longest prefix of ``prompt`` a lane may borrow (same adapter, leaving
        ``prefill_at_least`` tokens to decode), and that prefix's length; (None, 0) if none holds any."""
        best, shared = None, 0
        for slot in self.slots:
            if slot.adapter is not adapter:
                continue
            length = min(common_prefix_length(slot.tokens, prompt), len(prompt) - prefill_at_least)
            if length > shared and self._check_window(slot, length, same_position) == length:
                best, shared = slot, length
        return best, shared

    def borrow(self, lane: Slot, lender: Slot, prompt: list[int], shared: int) -> None:
        """Give ``lane`` the cells of ``lender``'s first ``shared`` tokens, for one step (module docstring)."""
        self._context.copy_prefix(lender.seq_id, lane.seq_id, shared)
        lane.tokens = prompt[:shared]
        lane.adapter = lender.adapter
        lane.busy = True

    def forget_all(self) -> None:
        """Empty every slot and the RAM prompt cache."""
        self._context.clear()
        self.cache.clear()
        for slot in self.slots:
            slot.tokens.clear()
