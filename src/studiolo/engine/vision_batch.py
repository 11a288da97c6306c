"""A llama_batch of embedding rows (an image's), over numpy arrays it owns.

llama.cpp takes a batch of token ids or a batch of embedding rows, never both in one
``llama_decode`` ("all entries in the batch must have the same content types"): an image's rows go
in batches of their own. ``llama_batch_init`` allocates one position per row, but M-RoPE needs four
(t, y, x, z, stored section by section), so the batch is laid out here instead.
"""

from __future__ import annotations

import ctypes
from typing import Any, cast

import llama_cpp as llama
import numpy as np


class EmbeddingBatch:
    def __init__(self, capacity: int, n_embd: int, n_pos_per_row: int = 1):
        self.capacity = capacity
        self.n_embd = n_embd
        self.n_pos_per_row = n_pos_per_row
        self._embd = np.zeros((capacity, n_embd), dtype=np.float32)
        self._pos = np.zeros(capacity * n_pos_per_row, dtype=np.int32)
        self._n_seq_id = np.ones(capacity, dtype=np.int32)
        self._seq_id = np.zeros(capacity, dtype=np.int32)
        self._logits = np.zeros(capacity, dtype=np.int8)
        int32_p = ctypes.POINTER(ctypes.c_int32)
        self._seq_pointers = (int32_p * (capacity + 1))()  # the last stays NULL, as llama_batch_init's
        for i in range(capacity):
            self._seq_pointers[i] = ctypes.cast(self._seq_id.ctypes.data + 4 * i, int32_p)
        self.raw = cast(Any, llama.llama_batch())  # ctypes fields typed as arrays by llama_cpp: set as pointers
        self.raw.n_tokens = 0
        self.raw.embd = self._embd.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        self.raw.pos = self._pos.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        self.raw.n_seq_id = self._n_seq_id.ctypes.data_as(int32_p)
        self.raw.seq_id = ctypes.cast(self._seq_pointers, ctypes.POINTER(int32_p))
        self.raw.logits = self._logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))

    def fill(self, rows: np.ndarray, positions: np.ndarray, seq_id: int, *, logits_last: bool = False) -> None:
        """Put ``rows`` (n x n_embd) in the batch for ``seq_id``; ``positions`` is (sections, n)."""
        n = len(rows)
        if n > self.capacity or rows.shape[1] != self.n_embd or positions.shape != (self.n_pos_per_row, n):
            raise ValueError(f"{rows.shape} rows at {positions.shape} positions do not fit the batch")
        self._embd[:n] = rows
        self._pos[: n * self.n_pos_per_row] = positions.reshape(-1)  # section-major: all t, then all y, ...
        self._seq_id[:n] = seq_id
        self._logits[:n] = 0
        self._logits[n - 1] = 1 if logits_last else 0
        self.raw.n_tokens = n

    def close(self) -> None:
        self.raw.n_tokens = 0  # the arrays go with this object; nothing was allocated by llama.cpp
