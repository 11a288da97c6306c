"""The routers' one route class: request bodies are read and parsed within the server's limits
(api/request_body.py), and checked for text that no model can read.

JSON may carry a lone UTF-16 surrogate as an escape (``"\\ud800"``); Python decodes it into a
``str`` that cannot be encoded as UTF-8, so it would fail deep inside tokenization as a 500.
It is refused here instead, with a 400 naming the field. Only bodies holding such an escape
at all (``\\ud8``-``\\udf``, which valid surrogate pairs such as escaped emoji also use) are
walked to find it: every other request pays one byte search.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect

from studiolo.api.errors import APIError
from studiolo.api.request_body import (
    MIB,
    check_counts,
    is_json_request,
    parse_bounded,
    read_bounded,
)
from studiolo.config import RequestLimits
from studiolo.domain.auth import Permission

T = TypeVar("T")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# Bodies past this are parsed in a worker thread: the parser itself holds the GIL, but the walks
# over the result (nesting, surrogates) let the event loop run between their steps.
PARSE_IN_THREAD_BYTES = MIB
CLIENT_CLOSED_REQUEST = 499  # nginx's code; nobody reads it, the client is gone


def lone_surrogate_path(value: Any, path: str = "") -> str | None:
    """Where in a decoded JSON value the first string with a lone surrogate is (``a.b[2]``), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
        return None
    if isinstance(value, dict):
        items = ((f"{path}.{key}" if path else str(key), item) for key, item in value.items())
    elif isinstance(value, list):
        items = ((f"{path}[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    for item_path, item in items:
        found = lone_surrogate_path(item, item_path)
        if found is not None:
            return found
    return None


class TextCheckedRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def checked(request: Request) -> Response:
            limits = request_limits(request)
            try:
                body = await read_bounded(request, limits)  # kept by the request: the handler reads it there
            except ClientDisconnect:  # gone while sending its body: nobody to answer
                return Response(status_code=CLIENT_CLOSED_REQUEST)
            if body and is_json_request(request):
                if len(body) > PARSE_IN_THREAD_BYTES:
                    decoded = await asyncio.to_thread(_decoded, body, limits)
                else:
                    decoded = _decoded(body, limits)
                check_counts(self.path, decoded, limits)
                request._json = decoded  # Starlette's cache: FastAPI validates this, without parsing again
            return await handle(request)

        return checked


def request_limits(request: Request) -> RequestLimits:
    settings = getattr(request.app.state, "settings", None)
    return settings.limits if settings is not None else RequestLimits()


def reasoning_field(request: Request) -> str:
    """The server's reasoning output (ServerSettings.reasoning_output): the field reasoning goes in,
    or "content"."""
    settings = getattr(request.app.state, "settings", None)
    return settings.reasoning_output if settings is not None else "reasoning_content"


def _decoded(body: bytes, limits: RequestLimits) -> Any:
    """The body's JSON within the limits, with no lone surrogate in its text."""
    decoded = parse_bounded(body, limits)
    if _SURROGATE_ESCAPE.search(body):
        path = lone_surrogate_path(decoded)
        if path is not None:
            raise APIError(400, f"'{path}' holds a lone UTF-16 surrogate, which is not text", param=path,
                           code="invalid_value")
    return decoded


# Each route declares who may call it (api/auth.py reads it from the app's route table at startup, and
# refuses to start if a route declares nothing): a Permission's name, or PUBLIC. It lives in the route's
# OpenAPI extra, which FastAPI carries over when a router is included, and so shows in /openapi.json.
PERMISSION_KEY = "x-studiolo-permission"


def needs(permission: Permission | str) -> dict[str, str]:
    """A route's ``openapi_extra`` declaring what it needs, over its router's: ``@router.post(path,
    openapi_extra=needs(Permission.models))``."""
    return {PERMISSION_KEY: str(permission)}


def declare(permission: Permission | str) -> Callable[[T], T]:
    """Declares what a route without OpenAPI extras (a WebSocket route, a mount) needs, on its endpoint."""
    def mark(endpoint: T) -> T:
        setattr(endpoint, PERMISSION_KEY, str(permission))
        return endpoint
    return mark


class DeclaringRouter(APIRouter):
    """A router whose routes declare its ``permission`` unless they declare their own."""

    def __init__(self, *, permission: Permission | str | None = None, **options: Any):
        super().__init__(route_class=TextCheckedRoute, **options)
        self.permission = permission

    def add_api_route(self, path: str, endpoint: Callable[..., Any], **options: Any) -> None:
        if self.permission is not None:
            options["openapi_extra"] = {**needs(self.permission), **(options.get("openapi_extra") or {})}
        super().add_api_route(path, endpoint, **options)


def make_router(*, permission: Permission | str | None = None, **options: Any) -> APIRouter:
    """A router of TextCheckedRoutes; ``permission``: what its routes need (domain/auth.py's Permission,
    or PUBLIC), unless a route says otherwise with ``needs``."""
    return DeclaringRouter(permission=permission, **options)
