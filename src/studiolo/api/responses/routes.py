"""OpenAI's Responses API: ``POST /v1/responses``, ``POST /v1/responses/compact``,
``GET /v1/responses/{id}``, ``GET /v1/responses/{id}/input_items`` and ``DELETE /v1/responses/{id}``.

A response is one turn of a stateful chat (service/conversations.py): ``previous_response_id``
continues (or branches) a stored conversation, and the finished turn is stored before the client
hears of its end, so an id it is given can be continued at once. With ``store: false`` nothing is
stored, though the response still has an id.

Streamed, the events are OpenAI's, each ``event: <type>`` with its ``data``: ``response.created``,
``response.in_progress``, the output items' events (render.OutputItems), then
``response.completed``, ``response.incomplete`` or ``response.failed`` carrying the whole response.
There is no ``[DONE]`` line (OpenAI's Responses streams have none).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import Request, Response

from studiolo.api.responses import mcp_routes, render
from studiolo.api.responses.finish import failed, finished, save, with_storage_error
from studiolo.api.responses.render import OutputItems, ResponseInfo
from studiolo.api.responses.schemas import CompactBody, ResponseBody
from studiolo.api.routing import CLIENT_CLOSED_REQUEST, make_router, request_limits
from studiolo.api.sse import ClientDisconnected, sse_response, until_disconnected
from studiolo.domain.auth import Permission
from studiolo.domain.errors import InvalidRequest
from studiolo.service.compaction import Compactions
from studiolo.service.conversations import ConversationRun, Conversations

router = make_router(prefix="/v1", permission=Permission.inference)
log = logging.getLogger(__name__)

MAX_LIST_LIMIT = 100


def _conversations(request: Request) -> Conversations:
    return request.app.state.conversations


@router.post("/responses")
async def create_response(body: ResponseBody, request: Request):
    conversations = _conversations(request)
    try:  # every 4xx comes before any streaming
        turn = await asyncio.to_thread(body.turn, request_limits(request).max_json_depth)  # tools' schemas compile
        mcp_tools = body.mcp_tools()
        if mcp_tools:  # the server runs their calls (api/responses/mcp_routes.py)
            return await mcp_routes.create_mcp_response(request, body, conversations, turn, mcp_tools)
        run = await until_disconnected(request, conversations.start(turn))
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    info = ResponseInfo(run.id, run.model, run.generation.created, run.turn.instructions,
                        run.turn.previous_response_id, body.settings())
    with_logprobs = body.logprobs is not None
    if body.stream:
        return sse_response(_events(conversations, run, info, with_logprobs), on_close=run.generation.cancel)
    try:
        return await until_disconnected(request, _complete(conversations, run, info, with_logprobs))
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    finally:
        run.generation.cancel()


async def _complete(conversations: Conversations, run: ConversationRun, info: ResponseInfo,
                    with_logprobs: bool) -> dict[str, Any]:
    output = OutputItems(with_logprobs)
    async for event in run.generation.events():  # a failure is the app's error response (errors.from_domain)
        output.feed(event)  # the same items a stream would show; its events are not needed here
    await save(conversations, run, output, info)
    return finished(run, info, output)


async def _events(conversations: Conversations, run: ConversationRun, info: ResponseInfo,
                  with_logprobs: bool) -> AsyncGenerator[str, None]:
    """The stream; closing it (client gone) cancels the generation, and nothing is stored."""
    stream, output = render.EventStream(), OutputItems(with_logprobs)
    try:
        started = render.response_object(info, "in_progress", [])
        yield stream.sse({"type": "response.created", "response": started})
        yield stream.sse({"type": "response.in_progress", "response": started})
        async for event in run.generation.events():
            for item_event in output.feed(event):
                yield stream.sse(item_event)
        await save(conversations, run, output, info)
        yield stream.sse({"type": f"response.{output.status}", "response": finished(run, info, output)})
    except Exception as exc:  # noqa: BLE001 - the stream has begun: every failure ends it with response.failed
        # nothing was stored: a failed turn cannot be continued
        yield stream.sse({"type": "response.failed", "response": failed(run, info, output, exc)})
    finally:
        run.generation.cancel()


@router.post("/responses/compact")
async def compact(body: CompactBody, request: Request) -> Any:
    """The conversation compacted by the model (service/compaction.py); always stored."""
    compactions = Compactions(_conversations(request))
    # every 4xx comes before the model writes
    run = await compactions.start(body.compaction(request_limits(request).max_json_depth))
    try:
        stored = await until_disconnected(request, compactions.finish(run))
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)  # nothing was stored
    finally:
        run.generation.cancel()
    return with_storage_error(render.compacted_object(stored), run.storage_error)


@router.get("/responses/{response_id}")
async def get_response(response_id: str, request: Request) -> dict[str, Any]:
    stored = await _conversations(request).get(response_id)
    if render.is_compaction(stored):  # shown as POST /v1/responses/compact returned it
        return render.compacted_object(stored)
    return render.stored_response_object(stored)


@router.get("/responses/{response_id}/input_items")
async def list_input_items(response_id: str, request: Request, order: str = "desc", limit: int = 20,
                           after: str | None = None) -> dict[str, Any]:
    if order not in ("asc", "desc"):
        raise InvalidRequest(f"'order' must be 'asc' or 'desc', not '{order}'", "order")
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidRequest(f"'limit' must be from 1 to {MAX_LIST_LIMIT}", "limit")
    items = await _conversations(request).input_items(response_id)
    return render.input_item_list(response_id, items, order, limit, after)


@router.delete("/responses/{response_id}")
async def delete_response(response_id: str, request: Request) -> dict[str, Any]:
    await _conversations(request).delete(response_id)
    return {"id": response_id, "object": "response.deleted", "deleted": True}
