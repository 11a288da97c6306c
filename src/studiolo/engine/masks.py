"""Applying llguidance's token bitmask to one row of logits (int32 words, bit i of the mask is
token i, least significant bit first), and measuring what the mask takes away.

JSON masks are either sparse (structure: a few hundred tokens allowed) or nearly full (string
content: all but a few thousand), so each function has two paths: the sparse one works on the
allowed tokens' indices, the dense one on the forbidden ones (or one vectorised pass).
"""

from __future__ import annotations

import numpy as np

_SPARSE_WORDS = 1024  # at most 32k candidate tokens: gather/scatter beats a full masked copy
_LANES = np.arange(32, dtype=np.int64)


def mask_logits(logits: np.ndarray, bitmask: np.ndarray) -> None:
    """Set ``logits[i] = -inf`` wherever bit i of ``bitmask`` is 0."""
    n_vocab = logits.shape[0]
    words = np.flatnonzero(bitmask)
    if words.size <= _SPARSE_WORDS:
        allowed = _set_bits(bitmask, words)
        allowed = allowed[allowed < n_vocab]
        kept = logits[allowed]
        logits.fill(-np.inf)
        logits[allowed] = kept
        return
    bits = np.unpackbits(bitmask.view(np.uint8), count=n_vocab, bitorder="little")
    np.copyto(logits, -np.inf, where=bits == 0)


def forbidden_log_mass(logits: np.ndarray, bitmask: np.ndarray) -> float:
    """``log(sum(exp(logits[i])))`` over the tokens ``bitmask`` forbids (-inf if none): the
    probability the model gives them, in the logits' own (unnormalised) scale.

    With few tokens forbidden (free text) they are added up directly; with many (a grammar that
    allows a handful), it is everything minus the allowed ones, so neither case scans twice.
    """
    n_vocab = logits.shape[0]
    partial = np.flatnonzero(bitmask != -1)  # the words holding a forbidden token
    if partial.size <= _SPARSE_WORDS:
        forbidden = _set_bits(~bitmask, partial)
        return logsumexp(logits[forbidden[forbidden < n_vocab]])
    allowed = _set_bits(bitmask, np.flatnonzero(bitmask))
    total, kept = logsumexp(logits), logsumexp(logits[allowed[allowed < n_vocab]])
    if not kept < total:
        return -np.inf  # nothing measurable was taken away
    return total + float(np.log1p(-np.exp(kept - total)))


def logsumexp(values: np.ndarray) -> float:
    top = float(values.max()) if values.size else -np.inf
    if top == -np.inf:
        return top
    return top + float(np.log(np.exp(values - top).sum(dtype=np.float64)))


def _set_bits(bitmask: np.ndarray, words: np.ndarray) -> np.ndarray:
    """Indices of the set bits of the given (non-zero) words of the bitmask."""
    bits = np.unpackbits(bitmask[words].view(np.uint8), bitorder="little").view(bool)
    return (words[:, None] * 32 + _LANES).ravel()[bits]
