"""The routers' one route class: request bodies are checked for text that no model can read.

JSON may carry a lone UTF-16 surrogate as an escape (``"\\ud800"``); Python decodes it into a
``str`` that cannot be encoded as UTF-8, so it would fail deep inside tokenization as a 500.
It is refused here instead, with a 400 naming the field. Only bodies holding such an escape
at all (``\\ud8``-``\\udf``, which valid surrogate pairs such as escaped emoji also use) are
parsed a second time to find it: every other request pays one byte search.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute

from studiolo.api.errors import APIError

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


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
            body = await request.body()  # kept by the request: the handler does not read it again
            if _SURROGATE_ESCAPE.search(body):
                try:
                    decoded = json.loads(body)
                except (ValueError, RecursionError):
                    decoded = None  # not JSON: the handler says so
                path = lone_surrogate_path(decoded)
                if path is not None:
                    raise APIError(400, f"'{path}' holds a lone UTF-16 surrogate, which is not text", param=path)
            return await handle(request)

        return checked


def make_router(**options: Any) -> APIRouter:
    return APIRouter(route_class=TextCheckedRoute, **options)
