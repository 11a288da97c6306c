"""LoRA adapters: GGUF files that change a base model's weights at run time.

An adapter is what llama.cpp's ``convert_lora_to_gguf.py`` writes: ``general.type`` is
``adapter``, ``adapter.type`` is ``lora``, and for each adapted weight ``W`` of the base
model it holds ``W.lora_a`` and ``W.lora_b``. The catalog finds adapters in an ``adapters``
folder beside their base model (models/catalog.py); a request naming one gets the base model
with the adapter applied to its sequences (engine/scheduler.py batches each adapter apart).

The file is checked here before llama.cpp sees it: llama.cpp checks shapes and architecture
itself, but takes tensor types it cannot multiply (F64, integers) and then crashes the
process in the first decode.
"""

from __future__ import annotations

import asyncio

from gguf import GGMLQuantizationType

from studiolo.domain.errors import InternalError
from studiolo.engine.llama import LoraAdapter, ModelLoadError
from studiolo.models.catalog import CatalogEntry
from studiolo.models.gguf_info import InvalidModelFile, read_header
from studiolo.models.instance import Instance

# Types llama.cpp's CPU backend cannot use as a matrix multiplication's weights.
_UNUSABLE_TYPES = frozenset(
    {
        GGMLQuantizationType.F64,
        GGMLQuantizationType.I8,
        GGMLQuantizationType.I16,
        GGMLQuantizationType.I32,
        GGMLQuantizationType.I64,
    }
)


class AdapterLoadFailed(InternalError):
    code, param = "model_load_failed", "model"


def check_adapter_file(entry: CatalogEntry) -> None:
    """Refuse a file that is not a LoRA adapter llama.cpp can apply to ``entry.base``."""
    try:
        header = read_header(entry.path)
    except InvalidModelFile as exc:
        raise AdapterLoadFailed(f"cannot load adapter '{entry.key}': {exc}") from None
    metadata = header.metadata
    problem = None
    if metadata.get("general.type") != "adapter" or metadata.get("adapter.type") != "lora":
        problem = "not a LoRA adapter (general.type must be 'adapter' and adapter.type 'lora')"
    elif not any(t.name.endswith(".lora_a") for t in header.tensors):
        problem = "it holds no LoRA tensors (*.lora_a, *.lora_b)"
    else:
        unusable = next((t for t in header.tensors if t.tensor_type in _UNUSABLE_TYPES), None)
        if unusable is not None:
            problem = (
                f"tensor {unusable.name} is {unusable.tensor_type.name}, which llama.cpp cannot apply; "
                "convert the adapter with --outtype f16, bf16, f32 or q8_0"
            )
    if problem is not None:
        raise AdapterLoadFailed(f"cannot load adapter '{entry.key}': {problem}")


def _load_blocking(instance: Instance, entry: CatalogEntry) -> LoraAdapter:
    check_adapter_file(entry)
    try:
        return instance.model.load_adapter(entry.path)
    except ModelLoadError as exc:
        raise AdapterLoadFailed(f"cannot load adapter '{entry.key}' onto '{instance.key}': {exc}") from None


async def load_adapter(instance: Instance, entry: CatalogEntry) -> LoraAdapter:
    """``entry``'s adapter on ``instance``'s model: loaded off the event loop the first time."""
    known = instance.model.loaded_adapter(entry.path)
    if known is not None:
        return known
    return await asyncio.to_thread(_load_blocking, instance, entry)
