"""What web pages of other origins may do with this server: CORS, opt-in, and Private Network Access.

Off by default (no CORS headers; a browser then keeps other origins' pages from reading answers).
``--cors`` lets any origin in, as LM Studio's switch does; ``--cors-origins`` lets in only the origins
listed (``https://app.example``; scheme, host and port as the browser's ``Origin`` header writes them).

- A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) from an allowed origin
  is answered 204 with every method, the request headers it asked for echoed back (``Authorization``
  and ``x-api-key`` among them: a ``*`` would not cover ``Authorization``, and the OpenAI and Anthropic
  browser SDKs send headers of their own), and a max age of two hours (Chrome's cap). Chrome's Private
  Network Access preflight (``Access-Control-Request-Private-Network: true``: a public page calling
  a private or local address) gets ``Access-Control-Allow-Private-Network: true``: a page allowed by
  CORS may reach the server where it runs.
- An answer to an allowed origin carries ``Access-Control-Allow-Origin`` (``*`` with ``--cors``, the
  origin itself with a list, ``Vary: Origin``) and exposes ``Retry-After`` to scripts.
- With a list, a request whose ``Origin`` is neither listed nor the server's own (``http(s)://`` and its
  ``Host``) is refused 403 in the route family's error shape, preflight or not: a "simple" cross-site POST
  would otherwise run, only its answer hidden.
- WebSocket handshakes carry ``Origin`` but no CORS: browsers let any page open one. With CORS off or
  a list, a handshake from another origin (not listed) is refused (403); clients outside browsers send
  no ``Origin`` and pass.

Own pure-ASGI middleware rather than Starlette's CORSMiddleware: that one lets WebSockets through
unchecked, refuses with a 400 in plain text, and runs cross-origin requests from unlisted origins.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from studiolo.api.errors import APIError

ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
MAX_AGE_SECONDS = 7200  # Chrome caps a preflight's cache at two hours
EXPOSE_HEADERS = "Retry-After, x-should-retry"
PREFLIGHT_VARY = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers, " \
                 "Access-Control-Request-Private-Network"


@dataclass(frozen=True)
class OriginPolicy:
    """``any_origin``: ``--cors``; ``origins``: ``--cors-origins``; neither: CORS off."""

    any_origin: bool = False
    origins: tuple[str, ...] = ()

    @classmethod
    def of(cls, cors: bool, origins: tuple[str, ...]) -> OriginPolicy:
        return cls(any_origin=cors and not origins, origins=tuple(o.strip().rstrip("/").lower() for o in origins))

    @property
    def cors(self) -> bool:
        return self.any_origin or bool(self.origins)

    def allows(self, origin: str, host: str | None) -> bool:
        """Whether a page of ``origin`` may call this server (its own pages always may)."""
        origin = origin.rstrip("/").lower()
        same = host is not None and origin in (f"http://{host.lower()}", f"https://{host.lower()}")
        return same or self.any_origin or origin in self.origins


class BrowserOrigins:
    def __init__(self, app: ASGIApp, policy: OriginPolicy):
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None:  # not from a page of another origin: nothing to decide
            await self.app(scope, receive, send)
            return
        allowed = self.policy.allows(origin, headers.get("host"))
        if scope["type"] == "websocket":
            await (self.app(scope, receive, send) if allowed else _close(send))
            return
        if not self.policy.cors:  # off: browsers enforce the same-origin policy themselves
            await self.app(scope, receive, send)
            return
        if not allowed:
            await refused_origin(origin).response(Request(scope))(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await self._preflight(origin, headers)(scope, receive, send)
            return
        await self.app(scope, receive, self._with_cors_headers(origin, send))

    def _allow_origin(self, origin: str) -> dict[str, str]:
        if self.policy.any_origin:
            return {"Access-Control-Allow-Origin": "*"}
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}

    def _preflight(self, origin: str, headers: Headers) -> Response:
        answer = {**self._allow_origin(origin), "Access-Control-Allow-Methods": ALLOW_METHODS,
                  "Access-Control-Max-Age": str(MAX_AGE_SECONDS), "Vary": PREFLIGHT_VARY}
        requested = headers.get("access-control-request-headers")
        if requested:
            answer["Access-Control-Allow-Headers"] = requested
        if headers.get("access-control-request-private-network", "").lower() == "true":
            answer["Access-Control-Allow-Private-Network"] = "true"
        return Response(status_code=204, headers=answer)

    def _with_cors_headers(self, origin: str, send: Send) -> Send:
        added = {**self._allow_origin(origin), "Access-Control-Expose-Headers": EXPOSE_HEADERS}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                headers = MutableHeaders(scope=message)
                for name, value in added.items():
                    if name == "Vary":
                        headers.add_vary_header(value)
                    else:
                        headers[name] = value
            await send(message)

        return sending


async def _close(send: Send) -> None:
    await send({"type": "websocket.close", "code": 1008, "reason": "origin not allowed"})


def refused_origin(origin: str) -> APIError:
    return APIError(403, f"pages of the origin '{origin}' may not call this server (the Origin header); start it "
                    "with --cors-origins listing it, or --cors for any origin", type="permission_error",
                    param="origin", code="origin_not_allowed", v1_type="forbidden")
