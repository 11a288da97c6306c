"""Server-sent events, and cancelling work when the client goes away.

Every API family frames its streams here: data-only events (``data: <json>``, OpenAI's chunks and
the log stream), named events (``event: <type>`` then ``data:``, Responses' and LM Studio's),
OpenAI's closing ``data: [DONE]``, and a keep-alive comment. An event is its fields, each one line,
then a blank line; the JSON is compact and keeps non-ASCII text as it is unless asked otherwise.

Streaming responses are cancelled by Starlette itself when the client disconnects (the
generator is closed, and closing it cancels the engine sequences). A generation submitted
before its stream starts is also cancelled by the response itself when it ends, however it
ends: a client gone before Starlette first pulls the generator would otherwise leave the
sequence running to its token limit, since a generator never started has no ``finally``
to run. A non-streaming
request has no such hook, so ``until_disconnected`` races the work against the ASGI
``http.disconnect`` message and cancels the work if the client leaves first.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

T = TypeVar("T")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

DATA_FIELD = "data: "
EVENT_END = "\n\n"  # a blank line ends an event
DONE = DATA_FIELD + "[DONE]" + EVENT_END  # OpenAI's last event of a completion stream
KEEP_ALIVE = ": keep-alive" + EVENT_END  # a comment: clients skip it, but it shows the connection lives


def compact_json(value: Any, *, ascii_only: bool = False, default: Callable[[Any], Any] | None = None) -> str:
    return json.dumps(value, ensure_ascii=ascii_only, separators=(",", ":"), default=default)


def data_event(data: str) -> str:
    """An unnamed event carrying ``data`` (one line: compact JSON has no newline)."""
    return DATA_FIELD + data + EVENT_END


def json_event(payload: Any) -> str:
    return data_event(compact_json(payload))


def named_event(name: str, payload: Any) -> str:
    """An ``event: <name>`` event carrying ``payload`` as JSON."""
    return f"event: {name}\n{DATA_FIELD}{compact_json(payload)}{EVENT_END}"


# what runs when a stream ends: a plain call, or one returning an awaitable to wait for
OnClose = Callable[[], Awaitable[None] | None]


class _EventStreamResponse(StreamingResponse):
    def __init__(self, events: AsyncGenerator[str, None], on_close: OnClose | None):
        super().__init__(events, media_type="text/event-stream", headers=SSE_HEADERS)
        self._events = events
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._events.aclose()  # its own finally now, not at garbage collection
            if self._on_close is not None:
                ended = self._on_close()
                if ended is not None:  # work whose end must be awaited (closing a connection)
                    await ended


def sse_response(events: AsyncGenerator[str, None], on_close: OnClose | None = None) -> StreamingResponse:
    """``events`` as server-sent events; ``on_close`` runs when the response ends, however it ends
    (also when the client left before the first event, when ``events`` never ran)."""
    return _EventStreamResponse(events, on_close)


class ClientDisconnected(Exception):
    pass


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; cancel it and raise ClientDisconnected if the client leaves first."""
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.create_task(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
        if work_task in done:
            return work_task.result()
        work_task.cancel()
        await asyncio.gather(work_task, return_exceptions=True)
        raise ClientDisconnected()
    finally:
        watch_task.cancel()
        if not work_task.done():
            work_task.cancel()


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
