"""The top-k candidates of a logits vector, handed to llama.cpp's sampler chain.

llama.cpp's ``llama_sampler_sample`` copies every logit into a ``llama_token_data`` array
(262k entries on Gemma 3) and partially sorts it before top-k cuts it to k. Choosing the k
best in numpy first and giving the chain a k-sized array already sorted in descending order
is the same distribution for a fraction of the work: the chain's top-k then sees a sorted
array of k entries and keeps it as it is, and top-p, min-p, temperature and the seeded draw
run on the candidates its own top-k would have left, in the same order (up to the order of
equal logits), so a seed draws the same tokens.
"""

from __future__ import annotations

import ctypes

import llama_cpp as llama
import numpy as np

# one llama_token_data per row: the C struct's layout (int32 id, float logit, float p), 12 bytes
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
assert TOKEN_DATA.itemsize == ctypes.sizeof(llama.llama_token_data)

# The vocabulary is read as a grid of GRID_ROWS rows (token t in row t // columns, column
# t % columns). The k columns with the largest maxima hold the top k logits: any logit outside
# them is below each of those k maxima, so k logits beat it. One elementwise maximum over the
# rows (a vectorised pass over the vocabulary, no copy, no sort) leaves a few thousand
# column maxima; only k * GRID_ROWS logits are then gathered for the exact selection.
GRID_ROWS = 32


def top_k_ids(logits: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k largest logits above -inf, in descending order of logit (fewer if fewer are).

    Forbidden tokens (-inf, as a constraint's mask leaves them) are left out: in llama.cpp's
    chain they would get probability 0 after top-k and could never be drawn.
    """
    ids = _pool_holding_top_k(logits, k)
    values = logits[ids]
    if ids.size > k:
        best = np.argpartition(values, -k)[-k:]
        ids, values = ids[best], values[best]
    allowed = values > -np.inf
    if not allowed.all():
        ids, values = ids[allowed], values[allowed]
    # descending; ties in the order the steps above left them, which the same logits always repeat
    return ids[np.argsort(-values, kind="stable")]


def _pool_holding_top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Ids of a few logits among which the top k surely are (all of them for a small vocabulary)."""
    size = logits.size
    columns = size // GRID_ROWS
    if columns < 4 * k:  # the grid would not leave much out
        return np.arange(size)
    grid = logits[: GRID_ROWS * columns].reshape(GRID_ROWS, columns)
    best_columns = np.argpartition(grid.max(axis=0), -k)[-k:]
    ids = (np.arange(0, GRID_ROWS * columns, columns)[:, None] + best_columns).ravel()
    if GRID_ROWS * columns < size:  # the last few tokens, outside the grid, all compete
        ids = np.concatenate([ids, np.arange(GRID_ROWS * columns, size)])
    return ids


class CandidateArray:
    """A reusable ``llama_token_data_array`` of at most ``capacity`` candidates, viewed from numpy."""

    def __init__(self, capacity: int):
        self.rows = np.zeros(capacity, dtype=TOKEN_DATA)
        data = self.rows.ctypes.data_as(llama.llama_token_data_p)
        self.raw = llama.llama_token_data_array(data, 0, -1, True)
        self._pointer = ctypes.pointer(self.raw)

    def draw(self, chain, ids: np.ndarray, logits: np.ndarray) -> int:
        """Run ``chain`` over the candidates ``ids`` (sorted by descending logit); the chosen token."""
        count = ids.size
        rows = self.rows[:count]
        rows["id"] = ids
        rows["logit"] = logits[ids]
        rows["p"] = 0.0
        raw = self.raw  # no llama.cpp sampler moves its data pointer: only the size and flags are reset
        raw.size = count
        raw.selected = -1
        raw.sorted = True
        llama.llama_sampler_apply(chain, self._pointer)
        if not 0 <= raw.selected < raw.size:
            raise RuntimeError(f"llama.cpp's sampler chain selected {raw.selected} of {raw.size} candidates")
        token = int(raw.data[raw.selected].id)
        llama.llama_sampler_accept(chain, token)
        return token
