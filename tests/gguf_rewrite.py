"""Rewrite a GGUF file with the ``gguf`` package, for tests: its metadata (less some keys) and
tensors copied into a writer that may add keys of its own or cut the file into shards; and the cache
of files the tests make once (``cached_test_model``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np

from studiolo.config import models_dir


def cached_test_model(name: str, write: Callable[[Path], object]) -> Path:
    """``<real STUDIOLO_HOME>/test-models/<name>``, made by ``write(path)`` the first time it is asked
    for: into a ``.part`` file named after this process (two test runs at once never share one), then
    renamed into place, so a file there is always whole. ``name`` should hold a digest of what made it."""
    dest = models_dir().parent / "test-models" / name
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_suffix(f".{os.getpid()}.part")
        write(part)
        os.replace(part, dest)
    return dest


def rewrite_gguf(reader: gguf.GGUFReader, writer: gguf.GGUFWriter, skip: tuple[str, ...] = (),
                 add: Callable[[gguf.GGUFWriter], None] | None = None,
                 extra_tensors: dict[str, np.ndarray] | None = None) -> None:
    """Copy ``reader``'s metadata but the keys in ``skip`` and its tensors into ``writer``; ``add``
    writes extra keys first; ``extra_tensors`` (name: float32 array) are appended. Closes the writer."""
    extra = extra_tensors or {}
    for field in reader.fields.values():
        if field.name in (gguf.Keys.General.ARCHITECTURE, *skip) or field.name.startswith("GGUF."):
            continue  # the writer writes these itself, or the caller replaces them
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
    if add is not None:
        add(writer)
    for tensor in reader.tensors:
        writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes,
                               tensor.tensor_type)
    for name, data in extra.items():
        writer.add_tensor_info(name, data.shape, data.dtype, data.nbytes, gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    for data in extra.values():
        writer.write_tensor_data(data)
    writer.close()
