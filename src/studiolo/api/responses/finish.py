"""How a response ends, streamed or not, with or without MCP tools: stored, and shown as the finished
(or failed) response object."""

from __future__ import annotations

import logging
from typing import Any

from studiolo.api.errors import api_error, from_domain
from studiolo.api.responses import render
from studiolo.api.responses.render import OutputItems, ResponseInfo
from studiolo.domain.errors import StudioloError
from studiolo.service.conversations import ConversationRun, Conversations
from studiolo.service.types import Usage

log = logging.getLogger(__name__)


async def save(conversations: Conversations, run: ConversationRun, output: OutputItems, info: ResponseInfo,
               usage: Usage | None = None) -> None:
    """Store the response (``usage``: its rounds', when it took more than one generation)."""
    details = {"settings": info.settings, "created_at": info.created_at}  # shown again by GET
    await conversations.save(run, output.items, output.status, details, usage)


def finished(run: ConversationRun, info: ResponseInfo, output: OutputItems,
             usage: Usage | None = None) -> dict[str, Any]:
    body = render.response_object(info, output.status, output.items,
                                  render.generation_usage(usage or run.generation.usage), completed_at=render.now())
    return with_storage_error(body, run.storage_error)


def with_storage_error(body: dict[str, Any], fault: StudioloError | None) -> dict[str, Any]:
    """An answer whose storing failed once it was written stands, marked unstored, with the error
    beside it (docs/API.md, "Storage faults")."""
    if fault is not None:
        body["store"] = False
        body["storage_error"] = api_error(fault).body()["error"]
    return body


def failed(run: ConversationRun, info: ResponseInfo, output: OutputItems, exc: Exception,
           usage: Usage | None = None) -> dict[str, Any]:
    """The failed response, its error in OpenAI's shape: ``code`` is one of OpenAI's (its types list
    them): ``invalid_prompt`` for what the request caused, ``server_error`` for the rest; ``type``
    and ``param`` are what a response before the stream would have said (the message names the cause)."""
    known = from_domain(exc)
    if known is None:
        log.error("response %s failed after its stream began", run.id, exc_info=exc)  # a bug: keep its trace
    client_fault = known is not None and known.status < 500
    error = {"code": "invalid_prompt" if client_fault else "server_error",
             "message": str(exc) or type(exc).__name__,
             "type": known.type if known else "server_error", "param": known.param if known else None}
    return render.response_object(info, "failed", output.items, render.generation_usage(usage or run.generation.usage),
                                  error=error)
