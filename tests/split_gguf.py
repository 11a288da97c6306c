"""Cut a GGUF model into a split GGUF (``name-00001-of-0000N.gguf``, llama.cpp's gguf-split
format: ``split.no``, ``split.count`` and ``split.tensors.count`` in every shard), with the
``gguf`` package's writer, for tests."""

from __future__ import annotations

import atexit
import shutil
import tempfile
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


_cut: dict[tuple[Path, int], list[Path]] = {}


def split_gguf_once(source: Path, first_shard: Path, tensors_per_shard: int) -> list[Path]:
    """``split_gguf``'s shards, cut once per test process and copied under ``first_shard``'s name
    (the shards' bytes do not depend on their names; cutting takes seconds, a copy a fraction)."""
    key = (source, tensors_per_shard)
    if key not in _cut:
        folder = Path(tempfile.mkdtemp(prefix="studiolo-split-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _cut[key] = split_gguf(source, folder / "cut.gguf", tensors_per_shard)
    made = []
    for shard in _cut[key]:
        numbering = shard.name.removeprefix("cut")  # "-00001-of-00003.gguf"
        made.append(Path(shutil.copyfile(shard, first_shard.parent / f"{first_shard.stem}{numbering}")))
    return made
