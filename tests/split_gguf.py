"""Cut a GGUF model into a split GGUF (``name-00001-of-0000N.gguf``, llama.cpp's gguf-split
format: ``split.no``, ``split.count`` and ``split.tensors.count`` in every shard), with the
``gguf`` package's writer, for tests."""

from __future__ import annotations

from pathlib import Path

import gguf


def split_gguf(source: Path, first_shard: Path, tensors_per_shard: int) -> list[Path]:
    """Write ``source`` as shards named after ``first_shard`` (``x.gguf`` -> ``x-00001-of-0000N.gguf``)."""
    reader = gguf.GGUFReader(source)
    arch = str(reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
    writer = gguf.GGUFWriter(first_shard, arch, split_max_tensors=tensors_per_shard)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by the writer itself
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
    for tensor in reader.tensors:
        writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes,
                               tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    writer.close()
    return sorted(first_shard.parent.glob(f"{first_shard.stem}-*-of-*.gguf"))
