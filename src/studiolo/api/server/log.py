"""``GET /studiolo/log/stream``: the log hub as server-sent events, for ``studiolo log stream``.

LM Studio's ``lms log stream`` reads a private channel with no REST equivalent, so this path is
studiolo's own. Each event is one ``data: <json>`` line; a ``: keep-alive`` comment goes out
whenever the stream has been quiet for ``KEEPALIVE_SECONDS``, so a client can tell a quiet
server from a dead connection. The subscription lives exactly as long as the response: when the
client leaves, Starlette cancels the stream and leaving the ``async with`` unsubscribes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from studiolo.api.errors import APIError
from studiolo.api.routing import make_router
from studiolo.api.sse import KEEP_ALIVE, compact_json, data_event, sse_response
from studiolo.domain.auth import Permission
from studiolo.service.model_log import SOURCES, LogHub

router = make_router(permission=Permission.admin)

KEEPALIVE_SECONDS = 15.0  # read at each wait, so tests can shorten it


def log_event_data(event: dict[str, Any]) -> str:
    # ASCII escapes keep stray surrogates in a log message from breaking the UTF-8 encoding of
    # the stream, and default=str keeps an odd value a publisher put in an event from ending it
    return data_event(compact_json(event, ascii_only=True, default=str))


async def log_events(hub: LogHub, source: str) -> AsyncGenerator[str, None]:
    async with hub.subscribe(source) as subscription:
        while True:
            try:
                async with asyncio.timeout(KEEPALIVE_SECONDS):
                    event = await subscription.get()
            except TimeoutError:
                yield KEEP_ALIVE
                continue
            yield log_event_data(event)


@router.get("/studiolo/log/stream")
async def log_stream(request: Request, source: str = "model") -> StreamingResponse:
    if source not in SOURCES:
        message = f"unknown log source '{source}': use one of {', '.join(repr(s) for s in SOURCES)}"
        raise APIError(400, message, param="source", code="invalid_value")
    return sse_response(log_events(request.app.state.log_hub, source))
