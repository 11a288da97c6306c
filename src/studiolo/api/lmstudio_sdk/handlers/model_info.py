"""LM Studio's model objects in its SDK protocol, built from the model service's values.

- ``ModelInfo`` (a model on disk: ``system.listDownloadedModels``, ``loadModel``'s ``resolved``,
  ``getOrLoad``'s ``startLoading``): ``type`` ("llm" or "embedding"), ``modelKey``, ``format``,
  ``displayName``, ``publisher``, ``path``, ``sizeBytes``, ``indexedModelIdentifier``,
  ``deviceIdentifier``, ``paramsString``, ``architecture``, ``quantization``, and for an LLM
  ``vision``, ``trainedForToolUse``, ``maxContextLength`` (an embedding model has the last too).
- ``ModelInstanceInfo`` (a loaded instance): the same, plus ``identifier``, ``instanceReference``,
  ``ttlMs``, ``lastUsedTime`` and ``contextLength``.

Both SDKs reject an object missing a required field (msgspec in Python, zod in JS; lmstudio-js
2.0.0's zod also refuses null where a field is only optional: ``paramsString`` and ``architecture``
are left out rather than null). ``path`` is the file relative to the models folder, as LM Studio
gives it (publisher/repo/file.gguf); ``indexedModelIdentifier`` is the same path, as LM Studio's is.
"""

from __future__ import annotations

import hashlib
from typing import Any

from studiolo.api.lmstudio.models import nominal_bits
from studiolo.service.models import MODEL_FORMAT, InstanceStatus, ListedModel, ModelInfo

LLM, EMBEDDING = "llm", "embedding"


def domain_of(info: ModelInfo) -> str:
    """The SDK namespace a model belongs to: "embedding" or "llm". The SDK knows no rerankers: one is
    listed with the embedding models, whose engine it runs on."""
    return EMBEDDING if info.pooled else LLM


def model_info(model: ListedModel) -> dict[str, Any]:
    """The SDK's ModelInfo (LlmInfo or EmbeddingModelInfo) of a model on disk."""
    return _described(model.key, model.publisher, model.path, model.info)


def instance_info(instance: InstanceStatus) -> dict[str, Any]:
    """The SDK's ModelInstanceInfo (LlmInstanceInfo or EmbeddingModelInstanceInfo) of a loaded instance."""
    body = _described(instance.key, instance.key.split("/")[0], instance.path, instance.info)
    body.update({
        "identifier": instance.id,
        "instanceReference": instance_reference(instance),
        "ttlMs": round(instance.ttl * 1000) if instance.ttl is not None else None,
        "lastUsedTime": round(instance.last_used_at * 1000),
        "contextLength": instance.context_length,
    })
    return body


def instance_reference(instance: InstanceStatus) -> str:
    """An opaque name for this one load of the instance: the same id loaded again later is another
    instance, and a handle to the old one must not reach it (LM Studio's references are opaque too)."""
    seed = f"{instance.id}\0{instance.loaded_at!r}".encode()
    return hashlib.sha256(seed).hexdigest()[:24]


def _described(key: str, publisher: str, path: str, info: ModelInfo) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": domain_of(info),
        "modelKey": key,
        "format": MODEL_FORMAT,
        "displayName": info.display_name or key,
        "publisher": publisher,
        "path": path,
        "sizeBytes": info.size_bytes,
        "indexedModelIdentifier": path,
        "deviceIdentifier": None,  # this machine: LM Studio names other devices (LM Link) here
        "quantization": {"name": info.quantization, "bits": round(nominal_bits(info))},
        "maxContextLength": info.context_length,
    }
    if info.params_string:
        body["paramsString"] = info.params_string
    if info.architecture:
        body["architecture"] = info.architecture
    if not info.pooled:
        body["vision"] = info.has_vision
        body["trainedForToolUse"] = info.supports_tools
    return body
