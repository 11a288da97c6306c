"""A model load's settings in the SDK's KV config: read from ``loadConfigStack``, and given back by
``getLoadConfig``.

The stack is ``{layers: [{layerName, config: {fields: [{key, value}]}}]}``; a later layer's value
for a key wins. The keys studiolo acts on: ``llm.load.contextLength`` / ``embedding.load.contextLength``
and ``llm.load.llama.evalBatchSize``. The SDKs send more (GPU offload, flash attention, mmap, KV cache
types, rope settings, seed): those change nothing on this CPU build, or are chosen by the server, and
are accepted and ignored as unknown keys are (LM Studio's apps send many of their own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from studiolo.api.lmstudio_sdk.endpoints import SdkError
from studiolo.config import MIN_CONTEXT
from studiolo.service.models import InstanceStatus

MAX_EVAL_BATCH = 8192


@dataclass(frozen=True)
class LoadSettings:
    context_length: int | None = None
    eval_batch_size: int | None = None


def collapse(stack: Any, field: str = "loadConfigStack") -> dict[str, Any]:
    """The stack's fields as one mapping, later layers winning; an SdkError naming the part that is
    not the protocol's shape."""
    if stack is None:
        return {}
    layers = stack.get("layers") if isinstance(stack, dict) else None
    if not isinstance(layers, list):
        raise SdkError(f"'{field}' must be {{layers: [{{layerName, config: {{fields}}}}]}}", param=field)
    values: dict[str, Any] = {}
    for n, layer in enumerate(layers):
        config = layer.get("config") if isinstance(layer, dict) else None
        fields = config.get("fields") if isinstance(config, dict) else None
        if not isinstance(fields, list):
            raise SdkError(f"'{field}.layers[{n}].config.fields' must be a list", param=f"{field}.layers[{n}]")
        for item in fields:
            if not isinstance(item, dict) or not isinstance(item.get("key"), str):
                raise SdkError(f"each of '{field}.layers[{n}].config.fields' must be {{key, value}}",
                               param=f"{field}.layers[{n}]")
            values[item["key"]] = item.get("value")
    return values


def load_settings(stack: Any, domain: str) -> LoadSettings:
    """What the load asks for that studiolo acts on; a bad value is an SdkError naming its key."""
    values = collapse(stack)
    batch = _integer(values, "llm.load.llama.evalBatchSize", 1, MAX_EVAL_BATCH) if domain == "llm" else None
    return LoadSettings(_integer(values, f"{domain}.load.contextLength", MIN_CONTEXT, None), batch)


def _integer(values: dict[str, Any], key: str, low: int, high: int | None) -> int | None:
    value = values.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise SdkError(f"'{key}' must be an integer {bound}, not {value!r}", param=key)
    return value


def instance_load_config(instance: InstanceStatus, domain: str) -> dict[str, Any]:
    """``getLoadConfig``'s answer: the KV config the instance was loaded with (what the server chose
    where the load left a value to it)."""
    fields = [{"key": f"{domain}.load.contextLength", "value": instance.context_length}]
    if domain == "llm":
        fields.append({"key": "llm.load.llama.evalBatchSize", "value": instance.eval_batch_size})
    return {"fields": fields}
