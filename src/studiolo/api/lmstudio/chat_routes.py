"""LM Studio's stateful chat, ``POST /api/v1/chat``: a string or items in, ``output`` items, ``stats``
and a ``response_id`` out; ``previous_response_id`` continues (or branches) a stored conversation.

The body and its translation are in chat_schemas.py, the result and the stream's named events in
chat_render.py. As LM Studio's streaming docs say, an ``error`` event is followed by ``chat.end``
carrying whatever was generated (not stored); what can be refused before any work (an embedding
model, an unknown id, and, when the model is loaded, a prompt too long for it) is a 4xx before the
stream, as unstreamed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import Request

from studiolo.api.errors import api_error
from studiolo.api.lmstudio.chat_render import (
    Reply,
    chat_event,
    error_event,
    generation_events,
    result_body,
    stats,
)
from studiolo.api.lmstudio.chat_schemas import ChatBody
from studiolo.api.routing import make_router
from studiolo.api.sse import ClientDisconnected, sse_response, until_disconnected
from studiolo.domain.auth import Permission
from studiolo.service.conversations import Conversations, Turn
from studiolo.service.mcp import McpToolbox
from studiolo.service.mcp_integrations import McpIntegrations
from studiolo.service.mcp_turn import AgentTurn

router = make_router(prefix="/api/v1", permission=Permission.inference)


def _conversations(request: Request) -> Conversations:
    return request.app.state.conversations


def _mcp(request: Request) -> McpIntegrations:
    return request.app.state.runtime.mcp


@router.post("/chat")
async def chat(body: ChatBody, request: Request):
    conversations = _conversations(request)
    turn = body.turn(report_progress=body.stream)
    integrations = body.mcp_integrations()
    # the servers' tools are offered from the first round: reached (or refused) before any model loads
    toolbox = await _mcp(request).open(integrations) if integrations else None
    try:
        return await _answer(request, body, conversations, turn, toolbox)
    except BaseException:  # nothing took the toolbox over: its sessions end here
        if toolbox is not None:
            await toolbox.close()
        raise


async def _answer(request: Request, body: ChatBody, conversations: Conversations, turn: Turn,
                  toolbox: McpToolbox | None):
    if not body.stream:
        try:
            run = await until_disconnected(request, AgentTurn.start(conversations, turn, toolbox))
        except ClientDisconnected:
            return None
        try:
            return await until_disconnected(request, _complete(conversations, run))
        except ClientDisconnected:
            return None
        finally:
            run.generation.cancel()
            await run.close()
    # the refusals that need no load are 4xx before the stream, as unstreamed: an HTTP 200 whose
    # stream says "error" is for what goes wrong once work is under way
    if await conversations.loads_model(turn):  # the stream shows the load, so it starts first
        # the stream closes the toolbox, also when the client leaves before its first event
        on_close = toolbox.close if toolbox is not None else None
        return sse_response(_loading_events(conversations, turn, toolbox), on_close=on_close)
    try:  # the model is loaded: this refuses at once (context, ids)
        run = await until_disconnected(request, AgentTurn.start(conversations, turn, toolbox))
    except ClientDisconnected:
        return None
    return sse_response(_events(conversations, run), on_close=lambda: _end(run))


async def _end(run: AgentTurn) -> None:
    """A streamed turn's end, however it ends: its round cancelled, its toolbox closed."""
    run.generation.cancel()
    await run.close()


async def _complete(conversations: Conversations, run: AgentTurn) -> dict[str, Any]:
    reply = Reply()
    async for event in run.events():  # a failure is the app's error response (errors.from_domain)
        reply.follow(event)
    return await _result(conversations, run, reply)


async def _result(conversations: Conversations, turn: AgentTurn, reply: Reply) -> dict[str, Any]:
    output = reply.output()
    run = turn.run
    stored = await conversations.save(run, output, reply.status)
    result = result_body(run.generation.instance.id, output, stats(run.generation))
    if stored is not None:
        result["response_id"] = stored.id
    elif run.storage_error is not None:  # the answer stands, unstored (docs/API.md, "Storage faults")
        result["storage_error"] = api_error(run.storage_error).body_v1()["error"]
    return result


async def _loading_events(conversations: Conversations, turn: Turn,
                          toolbox: McpToolbox | None) -> AsyncGenerator[str, None]:
    """The stream of a turn whose model this request loads: the load's events (a progress event as
    llama.cpp's fractions come, at most ~20 a second, then 1.0), then the turn's."""
    instance_id = conversations.instance_id(turn)
    yield chat_event("chat.start", model_instance_id=instance_id)
    yield chat_event("model_load.start", model_instance_id=instance_id)
    started = time.perf_counter()
    # the turn starts in a task of its own, so that the load's progress streams while it waits
    starting = asyncio.ensure_future(AgentTurn.start(conversations, turn, toolbox))
    try:
        with conversations.watch_load(turn) as watch:
            async for fraction in watch.fractions_until(starting):
                if 0.0 < fraction < 1.0:  # 1.0 once the model is ready, below
                    yield chat_event("model_load.progress", model_instance_id=instance_id, progress=fraction)
        run = await starting
    except Exception as exc:  # noqa: BLE001 - the stream has begun: every failure is its error event
        yield error_event(exc)
        yield chat_event("chat.end", result=result_body(instance_id, [], stats(None)))
        return
    finally:
        await _drop_unless_taken(starting)
    generation = run.generation
    try:
        yield chat_event("model_load.progress", model_instance_id=generation.instance.id, progress=1.0)
        seconds = generation.load_seconds if generation.load_seconds is not None else time.perf_counter() - started
        yield chat_event("model_load.end", model_instance_id=generation.instance.id,
                         load_time_seconds=round(seconds, 3))
        async for event in _turn_events(conversations, run):
            yield event
    finally:
        run.generation.cancel()
        await run.close()


async def _drop_unless_taken(starting: asyncio.Future[AgentTurn]) -> None:
    """A turn's start the stream left before it was done (the client went away mid-load): cancelled
    (the load itself goes on: models/manager.py), or, had it started meanwhile, ended."""
    if starting.done():
        return  # awaited above: the stream has it, or its failure
    starting.cancel()
    await asyncio.wait({starting})
    if not starting.cancelled() and starting.exception() is None:
        await _end(starting.result())


async def _events(conversations: Conversations, run: AgentTurn) -> AsyncGenerator[str, None]:
    """The stream of a turn already started on a loaded model."""
    yield chat_event("chat.start", model_instance_id=run.generation.instance.id)
    try:
        async for event in _turn_events(conversations, run):
            yield event
    finally:
        run.generation.cancel()
        await run.close()


async def _turn_events(conversations: Conversations, run: AgentTurn) -> AsyncGenerator[str, None]:
    """Generation events, then chat.end; a failure is an error event, and chat.end still follows with
    whatever was generated (LM Studio's streaming docs), unstored."""
    reply = Reply()
    try:
        async for event in generation_events(run, reply):
            yield event
        result = await _result(conversations, run, reply)
    except Exception as exc:  # noqa: BLE001 - the stream has begun: every failure is its error event
        yield error_event(exc)
        output = reply.output() if reply.started else []
        result = result_body(run.generation.instance.id, output, stats(run.generation))
    yield chat_event("chat.end", result=result)
