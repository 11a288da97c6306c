"""Tiny LoRA adapters for a base GGUF, written with the gguf package (plumbing, not quality).

An adapter holds, for each adapted weight W of shape (n_out, n_in), ``W.lora_a`` of shape
(rank, n_in) and ``W.lora_b`` of shape (n_out, rank), as llama.cpp's converter writes them.
With random values of the default size, SmolLM2 still writes sentences, but other ones.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from studiolo.models.gguf_info import read_header

TARGETS = ("attn_q.weight", "attn_v.weight", "ffn_down.weight")


def write_lora_adapter(
    base: Path,
    out: Path,
    *,
    seed: int = 0,
    rank: int = 8,
    strength: float = 0.2,
    dtype: type = np.float16,
    architecture: str | None = None,
    wrong_shape: bool = False,
) -> Path:
    header = read_header(base)
    writer = gguf.GGUFWriter(out, architecture or str(header.metadata["general.architecture"]))
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(rank))  # scale alpha / rank = 1
    rng = np.random.default_rng(seed)
    for tensor in header.tensors:
        if not tensor.name.endswith(TARGETS):
            continue
        n_in, n_out = tensor.dims  # GGUF lists the fastest-varying dimension first
        if wrong_shape:
            n_in += 1
        a = rng.standard_normal((rank, n_in)) / np.sqrt(n_in)
        b = rng.standard_normal((n_out, rank)) * strength
        writer.add_tensor(f"{tensor.name}.lora_a", a.astype(dtype))
        writer.add_tensor(f"{tensor.name}.lora_b", b.astype(dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
