"""Will a model fit? An estimate of what a load takes, against the RAM the system has free.

A load takes the weights (memory-mapped: they become resident as they are read), the KV cache
(every layer keeps K and V in f16 for every cell; studiolo keeps sliding-window layers full, see
engine/llama.py) and llama.cpp's compute buffers (logits for a batch and the graph's scratch).
The estimate errs high on purpose: refusing a load is a clear error, running out of memory
half-way kills the server and every model in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from studiolo.domain.errors import InvalidRequest
from studiolo.engine.llama import LlamaContext, LlamaModel

F16_BYTES = 2
LOGIT_BYTES = 4
GRAPH_SCRATCH_BYTES = 256 * 2**20  # measured compute buffers are 100-200 MiB for small models


class InsufficientMemory(InvalidRequest):
    # the request can be made to fit (a shorter context, fewer parallel sequences)
    code, param = "insufficient_memory", "model"


@dataclass(frozen=True)
class LoadEstimate:
    weights: int
    kv_cache: int
    compute: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute

    def __add__(self, other: LoadEstimate) -> LoadEstimate:
        return LoadEstimate(self.weights + other.weights, self.kv_cache + other.kv_cache,
                            self.compute + other.compute)


def _meta_int(model: LlamaModel, key: str) -> int:
    value = model.meta(key)
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


def estimate(model: LlamaModel, cells: int, batch_size: int) -> LoadEstimate:
    """What a context of ``cells`` KV cells over this model takes, in bytes."""
    arch = model.architecture()
    layers = _meta_int(model, f"{arch}.block_count")
    embedding = _meta_int(model, f"{arch}.embedding_length")
    heads = _meta_int(model, f"{arch}.attention.head_count") or 1
    kv_heads = _meta_int(model, f"{arch}.attention.head_count_kv") or heads
    key_length = _meta_int(model, f"{arch}.attention.key_length") or embedding // heads
    value_length = _meta_int(model, f"{arch}.attention.value_length") or key_length
    per_cell = layers * kv_heads * (key_length + value_length) * F16_BYTES
    compute = batch_size * model.n_vocab * LOGIT_BYTES + GRAPH_SCRATCH_BYTES
    return LoadEstimate(Path(model.path).stat().st_size, cells * per_cell, compute)


def context_footprint(model: LlamaModel, context: LlamaContext, *, output_rows: int) -> LoadEstimate:
    """The memory a context over ``model`` holds at most: the weights (mapped from the file), its KV
    cells (every sequence's; llama.cpp clears them at creation, so they are resident from the load
    on), its compute buffer, and its output buffer with ``output_rows`` rows at most. Sizes are what
    llama.cpp logged when it created the context; ``estimate`` where it logged none."""
    logged = context.buffer_bytes
    estimated = estimate(model, context.n_ctx if context.has_memory else 0, context.n_batch)
    row = model.n_embd_out if context.embeddings else model.n_vocab  # float32 values per output row
    if "compute" not in logged:
        return estimated
    return LoadEstimate(estimated.weights, logged.get("kv", 0) + logged.get("rs", 0),
                        logged["compute"] + max(output_rows * row * 4, logged.get("output", 0)))


def available_bytes() -> int:
    """MemAvailable: free RAM plus what the kernel can reclaim (page cache) without swapping."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemAvailable")


def check_fits(name: str, needed: LoadEstimate, available: int | None = None) -> None:
    available = available_bytes() if available is None else available
    if needed.total > available:
        gib = 2**30
        raise InsufficientMemory(
            f"loading '{name}' needs about {needed.total / gib:.1f} GiB (weights {needed.weights / gib:.1f}, "
            f"KV cache {needed.kv_cache / gib:.1f}, compute {needed.compute / gib:.1f}) but only "
            f"{available / gib:.1f} GiB of RAM is available; lower context_length or parallel, or unload a model"
        )
