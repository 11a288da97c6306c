"""LM Studio's REST API v1 model endpoints: ``GET /api/v1/models``, ``POST /api/v1/models/load``
and ``POST /api/v1/models/unload``, with v1 error bodies (api/errors.py).

``load`` also takes ``parallel``, ``ttl`` and ``identifier`` (LM Studio takes them only from its
CLI and SDK; its users ask for them on REST), and ``draft_model``: the instance's default draft.
``flash_attention``, ``num_experts`` and ``offload_kv_cache_to_gpu`` are accepted and have no
effect: this CPU build decides flash attention itself and has no GPU to offload to.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from pydantic import Field

from studiolo.api.body import Body
from studiolo.api.lmstudio.models import model_type_v1, models_v1
from studiolo.api.routing import make_router, needs
from studiolo.api.wire_types import Int
from studiolo.config import MAX_PARALLEL, MIN_CONTEXT
from studiolo.domain.auth import Permission
from studiolo.service.models import LoadConfig, ModelService

router = make_router(prefix="/api/v1", permission=Permission.inference)


class LoadBody(Body):
    model: str = Field(min_length=1)
    context_length: Int | None = Field(default=None, ge=MIN_CONTEXT)
    eval_batch_size: Int | None = Field(default=None, ge=1, le=8192)
    parallel: Int | None = Field(default=None, ge=1, le=MAX_PARALLEL)
    ttl: float | None = Field(default=None, gt=0)
    identifier: str | None = Field(default=None, min_length=1, max_length=200)
    # the draft its requests use unless they name another: a model key, or "ngram" (no model)
    draft_model: str | None = None
    echo_load_config: bool = False


class UnloadBody(Body):
    instance_id: str = Field(min_length=1)


def _models(request: Request) -> ModelService:
    return request.app.state.models


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    return {"models": models_v1(_models(request))}


@router.post("/models/load", openapi_extra=needs(Permission.models))
async def load_model(body: LoadBody, request: Request) -> dict[str, Any]:
    config = LoadConfig(body.context_length, body.parallel, body.eval_batch_size, body.ttl, body.identifier,
                        draft_model=body.draft_model)
    instance = await _models(request).load(body.model, config)
    result: dict[str, Any] = {
        "type": model_type_v1(instance.info),
        "instance_id": instance.id,
        "load_time_seconds": round(instance.load_seconds, 3),
        "status": "loaded",
    }
    if body.echo_load_config:
        result["load_config"] = {
            "context_length": instance.context_length,
            "eval_batch_size": instance.eval_batch_size,
            "parallel": instance.parallel,
            "ttl": instance.ttl,
            "draft_model": instance.draft_model,
        }
    return result


@router.post("/models/unload", openapi_extra=needs(Permission.models))
async def unload_model(body: UnloadBody, request: Request) -> dict[str, Any]:
    instance_id = await _models(request).unload(body.instance_id)
    return {"instance_id": instance_id}
