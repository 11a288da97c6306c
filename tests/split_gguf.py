"""Cut a GGUF model into a split GGUF (``name-00001-of-0000N.gguf``, llama.cpp's gguf-split
format: ``split.no``, ``split.count`` and ``split.tensors.count`` in every shard), with the
``gguf`` package's writer, for tests."""

from __future__ import annotations

from pathlib import Path

import gguf

from tests.gguf_rewrite import rewrite_gguf


def split_gguf(source: Path, first_shard: Path, tensors_per_shard: int) -> list[Path]:
    """Write ``source`` as shards named after ``first_shard`` (``x.gguf`` -> ``x-00001-of-0000N.gguf``)."""
    reader = gguf.GGUFReader(source)
    arch = str(reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
    writer = gguf.GGUFWriter(first_shard, arch, split_max_tensors=tensors_per_shard)
    rewrite_gguf(reader, writer)
    return sorted(first_shard.parent.glob(f"{first_shard.stem}-*-of-*.gguf"))
