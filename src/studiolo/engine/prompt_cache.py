"""Cached prompt prefixes kept in RAM, out of the KV cache.

Every cell in the unified KV cache costs every running sequence a little attention time
(flash attention walks all cells, skipping the masked ones). So a finished sequence's cells
do not stay there while other sequences run: they are saved here (llama.cpp's per-sequence
state, a few MB per thousand tokens) and restored into a slot when a new prompt starts the
same way. Least recently used entries go first when the byte budget is reached.

Cells computed with a LoRA adapter hold other values than the bare model's for the same
tokens, so every entry records its adapter and only serves prompts decoded with that one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from studiolo.engine.llama import LoraAdapter

MIN_CACHED_TOKENS = 16  # shorter prefixes are cheaper to recompute than to keep


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
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


class PromptCache:
    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self.entries: list[CachedPrompt] = []

    @property
    def used_bytes(self) -> int:
        return sum(entry.state.nbytes for entry in self.entries)

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
        return [entry for entry in self.entries if entry.adapter is adapter]

    def covers(self, tokens: list[int], adapter: LoraAdapter | None = None) -> bool:
        """Whether an entry already holds ``tokens`` (or more), so saving them adds nothing."""
        return any(len(e.tokens) >= len(tokens) and e.tokens[: len(tokens)] == tokens for e in self._of(adapter))

    def wants(self, tokens: list[int], adapter: LoraAdapter | None = None) -> bool:
        return self.budget_bytes > 0 and len(tokens) >= MIN_CACHED_TOKENS and not self.covers(tokens, adapter)

    def put(self, tokens: list[int], state: np.ndarray, adapter: LoraAdapter | None = None) -> None:
        if state.nbytes > self.budget_bytes:
            return
        # an entry that is a prefix of the new one is superseded by it
        self.entries = [e for e in self.entries if e.adapter is not adapter or e.tokens != tokens[: len(e.tokens)]]
        self.entries.append(CachedPrompt(list(tokens), state, adapter))
        while self.used_bytes > self.budget_bytes:
            self.entries.remove(min(self.entries, key=lambda e: e.last_used))

    def clear(self) -> None:
        self.entries.clear()
