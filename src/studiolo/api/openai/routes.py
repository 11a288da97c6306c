"""OpenAI-compatible routes: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``.

Each route translates the wire request to a domain request, asks the service, and renders
the events back; no generation logic lives here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from fastapi import Request, Response

from studiolo.api.errors import api_error
from studiolo.api.openai import render
from studiolo.api.openai.schemas import ChatCompletionBody, CompletionBody
from studiolo.api.routing import CLIENT_CLOSED_REQUEST, make_router, reasoning_field, request_limits
from studiolo.api.sse import DONE, ClientDisconnected, json_event, sse_response, until_disconnected
from studiolo.domain.auth import Permission
from studiolo.service.generation import Generation, GenerationFailed, GenerationService
from studiolo.service.models import ModelFile, ModelService
from studiolo.service.types import (
    Finished,
    GenerationEvent,
    ReasoningDelta,
    TextDelta,
    TokenInfo,
    ToolCallDelta,
)

router = make_router(prefix="/v1", permission=Permission.inference)

Extras = Callable[[Generation], dict[str, Any]]
T = TypeVar("T")


def _service(request: Request) -> GenerationService:
    return request.app.state.service


def _models(request: Request) -> ModelService:
    return request.app.state.models


def _model_object(model: ModelFile) -> dict[str, Any]:
    """OpenAI's model object, with the fields Anthropic's (``type``, ``display_name``, ``created_at``) adds:
    the same ``GET /v1/models`` answers both families' SDKs (``client.models.list()``)."""
    created_at = datetime.fromtimestamp(model.modified_at, UTC).isoformat().replace("+00:00", "Z")
    body: dict[str, Any] = {
        "id": model.key, "object": "model", "created": model.modified_at, "owned_by": model.publisher,
        "type": "model", "display_name": model.key, "created_at": created_at,
    }
    if model.base_key is not None:
        body["parent"] = model.base_key  # vLLM's field for a LoRA adapter's base model
    if model.decisions:  # studiolo's: what else the model answers besides its kind's routes (docs/API.md)
        body["capabilities"] = ["decisions"]
    return body


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    """Every model a request can name now (service/models.py: ModelService.usable)."""
    data = [_model_object(model) for model in _models(request).usable()]
    # Anthropic's page fields: one page holds every model
    return {"object": "list", "data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    return _model_object(_models(request).find(model_id))


def _failure_event(exc: GenerationFailed) -> str:
    return json_event(api_error(exc).body())


async def _stream(generation: Generation, first: list[str], render_event: Callable[[GenerationEvent], str],
                  last: list[Callable[[], str]]) -> AsyncGenerator[str, None]:
    """SSE for one generation (the renderers give ready events); closing it (client gone) cancels it."""
    try:
        for ready in first:
            yield ready
        async for event in generation.events():
            yield render_event(event)
        for make_event in last:
            yield make_event()
        yield DONE
    except GenerationFailed as exc:
        yield _failure_event(exc)
    finally:
        generation.cancel()


async def started(request: Request, work: Awaitable[T]) -> T:
    """The service's start of a request (a load, rendering and tokenizing the prompt), cancelled if the
    client leaves meanwhile: raises ClientDisconnected then. The work in a worker thread stops too
    (service/bounds.py)."""
    return await until_disconnected(request, work)


async def _respond(request: Request, generation: Generation, collect) -> Any:
    try:
        return await until_disconnected(request, collect(generation))
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    finally:  # a GenerationFailed goes on to the app's error response (errors.from_domain)
        generation.cancel()


@dataclass
class Gathered:
    """A generation's events joined per choice."""

    texts: dict[int, str] = field(default_factory=dict)
    tokens: dict[int, list[TokenInfo]] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)
    calls: dict[int, list[ToolCallDelta]] = field(default_factory=dict)
    reasoning: dict[int, str] = field(default_factory=dict)  # per choice that had any


async def _gather(generation: Generation) -> Gathered:
    gathered = Gathered()
    texts, tokens, reasons = gathered.texts, gathered.tokens, gathered.reasons
    async for event in generation.events():
        if isinstance(event, TextDelta):
            texts[event.index] = texts.get(event.index, "") + event.text
            tokens.setdefault(event.index, []).extend(event.tokens)
        elif isinstance(event, ToolCallDelta):
            gathered.calls.setdefault(event.index, []).append(event)
        elif isinstance(event, ReasoningDelta):
            gathered.reasoning[event.index] = gathered.reasoning.get(event.index, "") + event.text
        elif isinstance(event, Finished):
            texts.setdefault(event.index, "")
            tokens.setdefault(event.index, [])
            reasons[event.index] = event.reason
    return gathered


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionBody, request: Request):
    return await run_chat(body, request)


async def run_chat(body: ChatCompletionBody, request: Request, extras: Extras | None = None):
    """A chat completion; ``extras`` adds fields to the body (LM Studio's v0 stats) when it is done."""
    try:
        # reading the request checks its tools' schemas with llguidance: bounded, but up to a second
        chat = await asyncio.to_thread(body.to_domain, request_limits(request).max_json_depth)
        where = reasoning_field(request)  # the server's setting: a field of the message, or the content
        chat = replace(chat, reasoning_output="inline" if where == "content" else "separate")
        generation = await started(request, _service(request).chat(chat))
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    if body.stream:
        chunks = render.ChatChunks(generation, with_logprobs=body.wants_logprobs, include_usage=body.include_usage,
                                   reasoning_field=where)

        def render_event(event):
            if isinstance(event, TextDelta):
                return chunks.content(event.index, event.text, event.tokens)
            if isinstance(event, ReasoningDelta):
                return chunks.reasoning(event.index, event.text)
            if isinstance(event, ToolCallDelta):
                return chunks.tool_call(event)
            return chunks.finish(event.index, event.reason, extras(generation) if extras else None)

        roles = [chunks.role(index) for index in range(body.n)]
        last = [chunks.usage] if body.include_usage else []
        return sse_response(_stream(generation, roles, render_event, last), on_close=generation.cancel)

    async def collect(generation: Generation) -> dict[str, Any]:
        got = await _gather(generation)
        result = render.chat_completion(generation, got.texts, got.tokens, got.reasons, body.wants_logprobs, got.calls,
                                        got.reasoning, where)
        return {**result, **extras(generation)} if extras else result

    return await _respond(request, generation, collect)


@router.post("/completions")
async def completions(body: CompletionBody, request: Request):
    return await run_completion(body, request)


async def run_completion(body: CompletionBody, request: Request, extras: Extras | None = None):
    try:
        completion = await asyncio.to_thread(body.to_domain)  # its whitespace pattern compiles
        generation = await started(request, _service(request).complete(completion))
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    with_logprobs = body.logprobs is not None
    if body.stream:
        chunks = render.CompletionChunks(generation, with_logprobs=with_logprobs, include_usage=body.include_usage)

        def render_event(event):
            if isinstance(event, TextDelta):
                return chunks.text(event.index, event.text, event.tokens)
            return chunks.finish(event.index, event.reason, extras(generation) if extras else None)

        last = [chunks.usage] if body.include_usage else []
        return sse_response(_stream(generation, [], render_event, last), on_close=generation.cancel)

    async def collect(generation: Generation) -> dict[str, Any]:
        got = await _gather(generation)
        texts, tokens, reasons = got.texts, got.tokens, got.reasons
        logprobs = None
        if with_logprobs:
            logprobs = {index: render.CompletionLogprobs().render(tokens[index]) for index in texts}
        result = render.completion(generation, texts, logprobs, reasons)
        return {**result, **extras(generation)} if extras else result

    return await _respond(request, generation, collect)
