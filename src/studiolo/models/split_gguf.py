"""Split GGUF models: ``name-00001-of-0000N.gguf`` and its shards beside it, as llama.cpp's
gguf-split writes large models. One model to the catalog: its first shard is the model's
file (llama.cpp loads it and finds the rest itself, by the same naming), the others are never
models of their own, and a model whose shards are not all there is not listed."""

from __future__ import annotations

import re
from pathlib import Path

_SHARD = re.compile(r"^(?P<prefix>.+)-(?P<number>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


def shard_number(name: str) -> tuple[int, int] | None:
    """(shard number, shard count) for a split GGUF's file name, else None."""
    match = _SHARD.match(name)
    if match is None or int(match["count"]) < 1:
        return None
    return int(match["number"]), int(match["count"])


def is_later_shard(name: str) -> bool:
    """A shard other than the first: a piece of a model, never one of its own."""
    numbers = shard_number(name)
    return numbers is not None and numbers[0] > 1


def split_prefix(name: str) -> str | None:
    """``model-00001-of-00003.gguf`` -> ``model``; None for a file that is not a shard."""
    match = _SHARD.match(name)
    return match["prefix"] if match else None


def other_shards(first: Path) -> list[Path]:
    """The paths the shards after ``first`` must have (empty for a file that is not a first shard)."""
    match = _SHARD.match(first.name)
    if match is None or int(match["number"]) != 1:
        return []
    count, width = int(match["count"]), len(match["number"])
    return [first.with_name(f"{match['prefix']}-{n:0{width}d}-of-{match['count']}.gguf") for n in range(2, count + 1)]


def missing_shards(first: Path) -> list[Path]:
    return [shard for shard in other_shards(first) if not shard.is_file()]
