"""LM Studio's model objects (REST v0 and v1) and the v0 ``stats``/``model_info``/``runtime`` fields,
rendered from the model service's values (service/models.py).

Every value is read from the file or measured on the request; nothing is made up. Files whose
header cannot be read are left out of the lists (the service warns in the log); loading one still
gives a clear error naming the file.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

from studiolo.service.generation import Generation
from studiolo.service.models import (
    MODEL_FORMAT,
    RUNTIME,
    InstanceStatus,
    ListedModel,
    ModelInfo,
    ModelService,
    served_model,
)

FORMAT = MODEL_FORMAT
RERANKER = "reranker"  # the type of a model with rank pooling, in v0 and v1 lists alike
RUNTIME_BODY = {
    "name": RUNTIME.name,
    "version": RUNTIME.version,
    "supported_formats": list(RUNTIME.supported_formats),
}
STOP_REASONS = {  # Finished.cause -> LM Studio's LLMPredictionStopReason
    "eos": "eosFound",
    "stop_string": "stopStringFound",
    "max_tokens": "maxPredictedTokensReached",
    "context_length": "contextLengthReached",
    "cancelled": "userStopped",
}


def model_type_v0(info: ModelInfo) -> str:
    """LM Studio's v0 ``type``: "llm", "vlm", "embeddings", and studiolo's "reranker" (LM Studio has none)."""
    if info.is_reranker:
        return RERANKER
    if info.is_embedding:
        return "embeddings"
    return "vlm" if info.has_vision else "llm"


def model_type_v1(info: ModelInfo) -> str:
    """LM Studio's v1 ``type``: "llm", "embedding", and studiolo's "reranker"."""
    if info.is_reranker:
        return RERANKER
    return "embedding" if info.is_embedding else "llm"


def model_v0(model: ListedModel, instance: InstanceStatus | None, model_id: str | None = None) -> dict:
    info = model.info
    body: dict[str, Any] = {
        "id": model_id or model.key,
        "object": "model",
        "type": model_type_v0(info),
        "publisher": model.publisher,
        "arch": info.architecture,
        "compatibility_type": FORMAT,
        "quantization": info.quantization,
        "state": "loaded" if instance is not None else "not-loaded",
        "max_context_length": info.context_length,
    }
    if instance is not None:
        body["loaded_context_length"] = instance.context_length
    body["capabilities"] = ((["tool_use"] if info.supports_tools else []) + (["reasoning"] if model.reasoning else [])
                            + (["decisions"] if model.decisions else []))
    return body


def models_v0(models: ModelService) -> list[dict]:
    """Every model on disk; a second instance of a model (``key:2``, an identifier) is listed too."""
    out = []
    for model in models.listed():
        instances = model.instances
        out.append(model_v0(model, instances[0] if instances else None))
        out += [model_v0(model, i, i.id) for i in instances if i.id != model.key]
    return out


def instance_v1(instance: InstanceStatus) -> dict:
    remaining = instance.ttl_remaining
    return {
        "id": instance.id,
        "config": {
            "context_length": instance.context_length,
            "eval_batch_size": instance.eval_batch_size,
            "parallel": instance.parallel,
            "draft_model": instance.draft_model,  # the load-time draft; null: none
        },
        # studiolo's own: what `studiolo ps` shows (LM Studio's CLI reads it over a private channel)
        "status": {
            "jit_loaded": instance.jit,
            "ttl_seconds": instance.ttl,
            "ttl_remaining_seconds": round(remaining, 1) if remaining is not None else None,
            "running_requests": instance.running_requests,
            "queued_requests": instance.queued_requests,
            "loaded_at": iso_time(instance.loaded_at),
            "draft_models": list(instance.draft_models),  # attached now: its own and those requests named
        },
    }


def model_v1(model: ListedModel) -> dict:
    info = model.info
    body: dict[str, Any] = {
        "type": model_type_v1(info),
        "publisher": model.publisher,
        "key": model.key,
        "display_name": info.display_name,
    }
    if not info.pooled:
        body["architecture"] = info.architecture
    body.update({
        "quantization": {"name": info.quantization, "bits_per_weight": nominal_bits(info)},
        "size_bytes": info.size_bytes,
        "params_string": info.params_string,
        "loaded_instances": [instance_v1(i) for i in model.instances],
        "max_context_length": info.context_length,
        "format": FORMAT,
    })
    if not info.pooled:
        body["capabilities"] = {"vision": info.has_vision, "trained_for_tool_use": info.supports_tools,
                                "decisions": model.decisions}
        if (reasoning := model.reasoning) is not None:  # allowed_options and default, as LM Studio 0.4
            body["capabilities"]["reasoning"] = reasoning
        body["description"] = None
    return body


def models_v1(models: ModelService) -> list[dict]:
    return [model_v1(model) for model in models.listed()]


def v0_extras(generation: Generation) -> dict[str, Any]:
    """``stats``, ``model_info`` and ``runtime`` for a finished v0 generation, measured."""
    timing, usage, served = generation.timing, generation.usage, served_model(generation)
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
            **draft_stats(generation),
        },
        "model_info": {
            "arch": served.info.architecture,
            "quant": served.info.quantization,
            "format": FORMAT,
            "context_length": served.context_length,
        },
        "runtime": RUNTIME_BODY,
    }


def draft_stats(generation: Generation) -> dict[str, Any]:
    """LM Studio's draft statistics, summed over the choices; none when nothing drafted (LM Studio
    gives them only with a draft model). ``draft_model`` is the model's key, or "ngram"; it is left
    out when only a Predicted Output drafted."""
    drafts = generation.drafts
    if drafts is None:
        return {}
    body: dict[str, Any] = {} if generation.draft_model is None else {"draft_model": generation.draft_model}
    body.update({
        "total_draft_tokens_count": drafts.drafted,
        "accepted_draft_tokens_count": drafts.accepted,
        "rejected_draft_tokens_count": drafts.rejected,
        "ignored_draft_tokens_count": drafts.ignored,
    })
    return body


def nominal_bits(info: ModelInfo) -> float:
    """The quantization's nominal bits, as LM Studio shows them (Q4_K_M: 4, Q8_0: 8, BF16: 16);
    the measured average (file size over parameters) when the name carries none."""
    match = re.match(r"^(?:I?Q|B?F)(\d+)", info.quantization.upper())
    return int(match.group(1)) if match else info.bits_per_weight


def iso_time(epoch: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
