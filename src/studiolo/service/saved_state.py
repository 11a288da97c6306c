"""A conversation's KV state as stored with its response: which model (and adapter) computed it,
the tokens its cells hold, and llama.cpp's bytes for them.

Layout: one line of JSON (``{"model", "adapter", "tokens"}``, the count), the tokens as little-endian
int32, then the state. A blob that does not read back is ignored: it is a cache, never the data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from studiolo.engine.sequence import SavedSequence

MAGIC = b"studiolo-kv 1\n"


@dataclass(frozen=True)
class SavedState:
    """A stored conversation's KV state, valid only for the model and adapter that computed it."""

    model_key: str
    adapter_key: str | None
    sequence: SavedSequence


def encode(model_key: str, adapter_key: str | None, saved: SavedSequence) -> bytes:
    header = json.dumps({"model": model_key, "adapter": adapter_key, "tokens": len(saved.tokens)}).encode()
    tokens = np.asarray(saved.tokens, dtype="<i4").tobytes()
    return MAGIC + header + b"\n" + tokens + saved.state


def decode(blob: bytes | None) -> SavedState | None:
    if not blob or not blob.startswith(MAGIC):
        return None
    end = blob.find(b"\n", len(MAGIC))
    try:
        header = json.loads(blob[len(MAGIC):end])
        count = int(header["tokens"])
        start = end + 1
        tokens = np.frombuffer(blob, dtype="<i4", count=count, offset=start).tolist()
        return SavedState(header["model"], header["adapter"], SavedSequence(tokens, blob[start + 4 * count:]))
    except (ValueError, KeyError, TypeError):
        return None
