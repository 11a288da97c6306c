"""LM Studio's model objects (REST v0 and v1) and the v0 ``stats``/``model_info``/``runtime`` fields.

Every value is read from the file (models/gguf_info.py) or measured on the request; nothing is
made up. Files whose header cannot be read are left out of the lists (with a warning in the
log); loading one still gives a clear error naming the file.
"""

from __future__ import annotations

import datetime
import logging
import platform
import re
import sys
from typing import Any

import llama_cpp

from studiolo.models.catalog import CatalogEntry
from studiolo.models.gguf_info import InvalidModelFile, ModelInfo, read_model_info
from studiolo.models.instance import Instance
from studiolo.models.manager import ModelManager
from studiolo.service.generation import Generation

log = logging.getLogger(__name__)

FORMAT = "gguf"
RUNTIME = {
    "name": f"llama.cpp-{sys.platform}-{platform.machine().lower()}-cpu",
    "version": llama_cpp.__version__,  # the llama-cpp-python build studiolo runs on
    "supported_formats": [FORMAT],
}
STOP_REASONS = {  # Finished.cause -> LM Studio's LLMPredictionStopReason
    "eos": "eosFound",
    "stop_string": "stopStringFound",
    "max_tokens": "maxPredictedTokensReached",
    "context_length": "contextLengthReached",
    "cancelled": "userStopped",
}


def readable_models(manager: ModelManager) -> list[tuple[CatalogEntry, ModelInfo]]:
    found = []
    for entry in manager.catalog.entries():
        try:
            found.append((entry, read_model_info(entry.path)))
        except (InvalidModelFile, OSError) as exc:
            log.warning("leaving %s out of the model list: %s", entry.key, exc)
    return found


def model_type_v0(info: ModelInfo) -> str:
    if info.is_embedding:
        return "embeddings"
    return "vlm" if info.has_vision else "llm"


def model_v0(entry: CatalogEntry, info: ModelInfo, instance: Instance | None, model_id: str | None = None) -> dict:
    body: dict[str, Any] = {
        "id": model_id or entry.key,
        "object": "model",
        "type": model_type_v0(info),
        "publisher": entry.publisher,
        "arch": info.architecture,
        "compatibility_type": FORMAT,
        "quantization": info.quantization,
        "state": "loaded" if instance is not None else "not-loaded",
        "max_context_length": info.context_length,
    }
    if instance is not None:
        body["loaded_context_length"] = instance.context_length
    body["capabilities"] = ["tool_use"] if info.supports_tools else []
    return body


def listed_models(manager: ModelManager) -> list[tuple[CatalogEntry, ModelInfo, list[Instance]]]:
    """Every readable model on disk with its instances, then the loaded models no longer on disk.

    A loaded model whose file left the catalog (moved, deleted, unreadable now) still serves: it is
    listed, with what it was loaded from, so that `studiolo ps` shows it and it can be unloaded.
    """
    listed = [(entry, info, manager.instances_of(entry.key)) for entry, info in readable_models(manager)]
    keys = {entry.key for entry, _, _ in listed}
    gone: dict[str, list[Instance]] = {}
    for instance in manager.loaded():
        if instance.key not in keys:
            gone.setdefault(instance.key, []).append(instance)
    return listed + [(group[0].entry, group[0].info, group) for group in gone.values()]


def models_v0(manager: ModelManager) -> list[dict]:
    """Every model on disk; a second instance of a model (``key:2``, an identifier) is listed too."""
    out = []
    for entry, info, instances in listed_models(manager):
        out.append(model_v0(entry, info, instances[0] if instances else None))
        out += [model_v0(entry, info, i, i.id) for i in instances if i.id != entry.key]
    return out


def instance_v1(instance: Instance) -> dict:
    running, queued = instance.engine.request_counts()
    remaining = instance.ttl_remaining()
    return {
        "id": instance.id,
        "config": {
            "context_length": instance.context_length,
            "eval_batch_size": instance.settings.batch_size,
            "parallel": instance.settings.parallel,
        },
        # studiolo's own: what `studiolo ps` shows (LM Studio's CLI reads it over a private channel)
        "status": {
            "jit_loaded": instance.jit,
            "ttl_seconds": instance.ttl,
            "ttl_remaining_seconds": round(remaining, 1) if remaining is not None else None,
            "running_requests": running,
            "queued_requests": queued,
            "loaded_at": iso_time(instance.loaded_at),
        },
    }


def model_v1(entry: CatalogEntry, info: ModelInfo, instances: list[Instance]) -> dict:
    body: dict[str, Any] = {
        "type": "embedding" if info.is_embedding else "llm",
        "publisher": entry.publisher,
        "key": entry.key,
        "display_name": info.display_name,
    }
    if not info.is_embedding:
        body["architecture"] = info.architecture
    body.update({
        "quantization": {"name": info.quantization, "bits_per_weight": nominal_bits(info)},
        "size_bytes": info.size_bytes,
        "params_string": info.params_string,
        "loaded_instances": [instance_v1(i) for i in instances],
        "max_context_length": info.context_length,
        "format": FORMAT,
    })
    if not info.is_embedding:
        body["capabilities"] = {"vision": info.has_vision, "trained_for_tool_use": info.supports_tools}
        body["description"] = None
    return body


def models_v1(manager: ModelManager) -> list[dict]:
    return [model_v1(entry, info, instances) for entry, info, instances in listed_models(manager)]


def v0_extras(generation: Generation) -> dict[str, Any]:
    """``stats``, ``model_info`` and ``runtime`` for a finished v0 generation, measured."""
    timing, usage, instance = generation.timing, generation.usage, generation.instance
    generated = usage.completion_tokens
    seconds = timing.generation_time
    cause = generation.causes.get(0, "eos")
    return {
        "stats": {
            # tokens after the first, over the time after the first: the decode rate
            "tokens_per_second": round(timing.decode_rate(generated), 2),
            "time_to_first_token": round(timing.time_to_first_token, 3),
            "generation_time": round(seconds, 3),
            "stop_reason": STOP_REASONS.get(cause, "eosFound"),
        },
        "model_info": {
            "arch": instance.info.architecture,
            "quant": instance.info.quantization,
            "format": FORMAT,
            "context_length": instance.context_length,
        },
        "runtime": RUNTIME,
    }


def nominal_bits(info: ModelInfo) -> float:
    """The quantization's nominal bits, as LM Studio shows them (Q4_K_M: 4, Q8_0: 8, BF16: 16);
    the measured average (file size over parameters) when the name carries none."""
    match = re.match(r"^(?:I?Q|B?F)(\d+)", info.quantization.upper())
    return int(match.group(1)) if match else info.bits_per_weight


def iso_time(epoch: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
