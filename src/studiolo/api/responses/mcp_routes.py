"""``POST /v1/responses`` with ``{"type": "mcp"}`` tools: the server reaches the request's MCP servers,
runs the calls the model makes and goes on to the answer (service/mcp_responses.py), the response
showing the MCP items (mcp_render.py).

Everything that can be refused is refused before any output, as a 4xx (a 424 for a server that
cannot list its tools; 403 when per-request MCP servers are not allowed): the servers are reached,
the approved calls run and the first round starts before the answer or the stream begins. A client
that leaves cancels the work under way (a generation, a call) and ends the servers' sessions;
nothing is then stored.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from fastapi import Request, Response

from studiolo.api.responses import render
from studiolo.api.responses.finish import failed, finished, save
from studiolo.api.responses.mcp_render import McpOutputItems
from studiolo.api.responses.render import ResponseInfo
from studiolo.api.responses.schemas import ResponseBody
from studiolo.api.routing import CLIENT_CLOSED_REQUEST
from studiolo.api.sse import ClientDisconnected, sse_response, until_disconnected
from studiolo.service.conversations import Conversations, Turn
from studiolo.service.mcp_responses import McpResponse, McpTool


async def create_mcp_response(request: Request, body: ResponseBody, conversations: Conversations, turn: Turn,
                              tools: list[McpTool]) -> Any:
    start = McpResponse.start(conversations, request.app.state.runtime.mcp, turn, body.tool_offer(), tools)
    try:
        response = await until_disconnected(request, start)  # cancelled, it ends the sessions it opened
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    run = response.run
    info = ResponseInfo(run.id, run.model, run.generation.created, turn.instructions, turn.previous_response_id,
                        body.settings())
    with_logprobs = body.logprobs is not None
    if body.stream:
        return sse_response(_events(conversations, response, info, with_logprobs), on_close=lambda: _end(response))
    try:
        return await until_disconnected(request, _complete(conversations, response, info, with_logprobs))
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    finally:
        await _end(response)


async def _end(response: McpResponse) -> None:
    """However the response ends: its round cancelled, the servers' sessions ended."""
    response.generation.cancel()
    await response.close()


async def _complete(conversations: Conversations, response: McpResponse, info: ResponseInfo,
                    with_logprobs: bool) -> dict[str, Any]:
    output = McpOutputItems(with_logprobs)
    async for event in response.events():  # a failure is the app's error response (errors.from_domain)
        output.feed(event)
    await save(conversations, response.run, output, info, response.usage)
    return finished(response.run, info, output, response.usage)


async def _events(conversations: Conversations, response: McpResponse, info: ResponseInfo,
                  with_logprobs: bool) -> AsyncGenerator[str, None]:
    """The stream; closing it (client gone) cancels the work, and nothing is stored."""
    stream, output = render.EventStream(), McpOutputItems(with_logprobs)
    try:
        started = render.response_object(info, "in_progress", [])
        yield stream.sse({"type": "response.created", "response": started})
        yield stream.sse({"type": "response.in_progress", "response": started})
        async for event in response.events():
            for item_event in output.feed(event):
                yield stream.sse(item_event)
        await save(conversations, response.run, output, info, response.usage)
        body = finished(response.run, info, output, response.usage)
        yield stream.sse({"type": f"response.{output.status}", "response": body})
    except Exception as exc:  # noqa: BLE001 - the stream has begun: every failure ends it with response.failed
        yield stream.sse({"type": "response.failed", "response": failed(response.run, info, output, exc,
                                                                          response.usage)})
    finally:
        await _end(response)
