"""Anthropic's Messages API: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

A message is a chat of the chat service (api/anthropic/request.py translates it): the same prompt,
tool-call grammar, reasoning split and constraints as a chat completion. Streamed, the events are
Anthropic's, named, in its order: ``message_start``, then per content block ``content_block_start``,
its ``content_block_delta``s and ``content_block_stop`` (a ``ping`` after the first block's start,
and one after each chunk of the prompt's prefill),
then ``message_delta`` (stop reason and usage) and ``message_stop``. A failure once the stream has
begun is an ``error`` event; a client that leaves cancels the generation. Errors are Anthropic's
shape with its statuses (api/errors.py, by path). Headers ``x-api-key``, ``anthropic-version`` and
``anthropic-beta`` are taken and not needed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import Request, Response

from studiolo.api.anthropic import render
from studiolo.api.anthropic.render import ContentBlocks, sse
from studiolo.api.anthropic.request import chat_request
from studiolo.api.anthropic.schemas import CountTokensBody, MessagesBody
from studiolo.api.errors import APIError, from_domain
from studiolo.api.routing import CLIENT_CLOSED_REQUEST, make_router
from studiolo.api.sse import ClientDisconnected, sse_response, until_disconnected
from studiolo.domain.auth import Permission
from studiolo.service.generation import Generation, GenerationService
from studiolo.service.types import PromptProgress

router = make_router(prefix="/v1", permission=Permission.inference)
log = logging.getLogger(__name__)


def _service(request: Request) -> GenerationService:
    return request.app.state.service


@router.post("/messages")
async def create_message(body: MessagesBody, request: Request):
    try:  # every 4xx comes before any streaming
        chat = await asyncio.to_thread(chat_request, body)  # tools' schemas compile
        generation = await until_disconnected(request, _service(request).chat(chat))
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    if body.stream:
        return sse_response(_events(generation), on_close=generation.cancel)
    try:
        return await until_disconnected(request, _message(generation))
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    finally:  # a failure goes on to the app's error response, in Anthropic's shape
        generation.cancel()


@router.post("/messages/count_tokens")
async def count_tokens(body: CountTokensBody, request: Request) -> Any:
    """The prompt's tokens as the model's template and tokenizer make them (loading the model if need be)."""
    chat = await asyncio.to_thread(chat_request, body)
    try:
        tokens = await until_disconnected(request, request.app.state.token_tools.count_chat_tokens(chat))
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    return {"input_tokens": tokens}


async def _message(generation: Generation) -> dict[str, Any]:
    blocks = ContentBlocks()
    async for event in generation.events():
        blocks.feed(event)
    return render.message_object(generation, blocks.content, blocks.finished,
                                 render.usage_body(generation.usage))


async def _events(generation: Generation) -> AsyncGenerator[str, None]:
    """The stream; closing it (client gone) cancels the generation."""
    blocks, pinged = ContentBlocks(), False
    try:
        start = render.message_object(generation, [], None, render.start_usage(generation))
        yield sse("message_start", {"type": "message_start", "message": start})
        async for event in generation.events():
            if isinstance(event, PromptProgress):  # the prompt's prefill goes on: the connection lives
                yield sse("ping", {"type": "ping"})
                continue
            for name, payload in blocks.feed(event):
                yield sse(name, payload)
                if not pinged and name == "content_block_start":
                    pinged = True
                    yield sse("ping", {"type": "ping"})
        if not pinged:
            yield sse("ping", {"type": "ping"})
        finished = blocks.finished
        delta = {"stop_reason": render.stop_reason(finished) if finished else "end_turn",
                 "stop_sequence": finished.stop_string if finished else None}
        yield sse("message_delta", {"type": "message_delta", "delta": delta,
                                    "usage": render.usage_body(generation.usage)})
        yield sse("message_stop", {"type": "message_stop"})
    except Exception as exc:  # noqa: BLE001 - the stream has begun: every failure ends it with an error event
        known = from_domain(exc)
        if known is None:
            log.error("message %s failed after its stream began", generation.id, exc_info=exc)
            known = APIError(500, f"internal server error: {exc}", type="server_error")
        yield sse("error", render.error_body(known))
    finally:
        generation.cancel()
