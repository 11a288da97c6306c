"""Counting every HTTP request for ``/metrics``: a pure ASGI middleware (not BaseHTTPMiddleware,
which breaks the cancellation of streams when a client goes away).

A request is labelled with its route's template (``/api/v1/chats/{chat_id}``), read from the scope
where the router put the matched route, never with the raw path: ids and probes of made-up paths
would give every request a series of its own. A path no route matches counts as ``unmatched``.
It is counted as its answer's last part is sent (a stream's end), just before it leaves, so a client
that has its whole answer finds it counted; an answer never finished (the client left, or the app
failed before answering) counts when the app returns, as 499 or 500 if nothing was sent.

The metrics object is the app's (``app.state.metrics``), made with the runtime at startup; before
then (or in an app without one) requests pass through uncounted.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNMATCHED = "unmatched"
CLIENT_CLOSED_REQUEST = 499


class RequestMetrics:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics = _metrics(scope)
        if scope["type"] != "http" or metrics is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0
        counted = False

        def count(final_status: int) -> None:
            nonlocal counted
            if not counted:
                counted = True
                metrics.request_done(scope["method"], route_template(scope), final_status,
                                     time.perf_counter() - started)

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                count(status)  # before the last byte leaves: a client that has its answer finds it counted
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except BaseException:
            status = status or 500
            raise
        finally:
            count(status or CLIENT_CLOSED_REQUEST)


def _metrics(scope: Scope) -> Any:
    app = scope.get("app")
    state = getattr(app, "state", None)
    return getattr(state, "metrics", None)


def route_template(scope: Scope) -> str:
    """The matched route's path template, or ``unmatched``."""
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED
