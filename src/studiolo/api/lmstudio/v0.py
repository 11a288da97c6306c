"""LM Studio's REST API v0 (``/api/v0/*``): model list and info, and the OpenAI generation
endpoints with ``stats``, ``model_info`` and ``runtime`` added (on the last chunk when streaming)."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from studiolo.api.errors import APIError
from studiolo.api.lmstudio.models import models_v0, v0_extras
from studiolo.api.openai.routes import run_chat, run_completion
from studiolo.api.openai.schemas import ChatCompletionBody, CompletionBody
from studiolo.api.routing import make_router
from studiolo.domain.auth import Permission
from studiolo.service.models import ModelService

router = make_router(prefix="/api/v0", permission=Permission.inference)


def _models(request: Request) -> ModelService:
    return request.app.state.models


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": models_v0(_models(request))}


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    service = _models(request)
    models = models_v0(service)
    wanted = model_id.strip().lower()
    for body in models:
        if body["id"] == wanted or body["id"] == model_id:
            return body
    entry = service.find(model_id)  # a short name; unknown ones raise 404 here
    if entry.base_key is not None:
        raise APIError(404, f"'{entry.key}' is a LoRA adapter of '{entry.base_key}'; LM Studio's model lists "
                       "show models only (adapters are listed by /v1/models)", param="model", code="model_not_found")
    found = next((body for body in models if body["id"] == entry.key), None)
    if found is None:
        raise APIError(404, f"model '{model_id}' cannot be read (see the server log)", param="model",
                       code="model_not_found")
    return found


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionBody, request: Request):
    return await run_chat(body, request, v0_extras)


@router.post("/completions")
async def completions(body: CompletionBody, request: Request):
    return await run_completion(body, request, v0_extras)
