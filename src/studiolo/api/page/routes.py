"""``GET /`` and ``/static/...``: the chat page, built from web/ by ``make page`` into ``static/``
beside this file and shipped in the package, so serving it needs no Node.

The page's own files are PUBLIC (a browser must load them before it can ask for a token; they hold
nothing of the server's); every call the page then makes to the API carries the token the user
typed, and is checked as any other client's. Each file is sent with a Content-Security-Policy that
allows scripts, styles and connections from this server only (no inline script, no other origin:
the page works offline and model output cannot run code), and an ETag so a reload revalidates
instead of downloading again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources

from fastapi import Request, Response

from studiolo.api.routing import make_router
from studiolo.domain.auth import PUBLIC

router = make_router(permission=PUBLIC, include_in_schema=False)

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# path -> (file in static/, media type); one route each, so the route table lists every file served
FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/static/page.css": ("page.css", "text/css; charset=utf-8"),
    "/static/icon.svg": ("icon.svg", "image/svg+xml"),
}


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    media_type: str
    etag: str


@cache
def static_file(name: str, media_type: str) -> StaticFile:
    """A built file, read once: the package's files do not change while the server runs."""
    body = resources.files(__package__).joinpath("static", name).read_bytes()
    return StaticFile(body, media_type, f'"{hashlib.sha256(body).hexdigest()[:32]}"')


def security_headers(etag: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",  # revalidated by its ETag at each load: a new build shows at once
        "ETag": etag,
    }


def _endpoint(name: str, media_type: str) -> Callable[[Request], Awaitable[Response]]:
    async def serve(request: Request) -> Response:
        file = static_file(name, media_type)
        headers = security_headers(file.etag)
        if request.headers.get("if-none-match") == file.etag:
            return Response(status_code=304, headers=headers)
        return Response(file.body, media_type=file.media_type, headers=headers)

    serve.__name__ = f"page_{name.replace('.', '_')}"
    return serve


for _path, (_name, _media_type) in FILES.items():
    router.add_api_route(_path, _endpoint(_name, _media_type), methods=["GET"])
