"""The Host check: a server bound to loopback answers only requests addressed to a loopback name.

DNS rebinding: a web page on ``evil.example`` points its own name at 127.0.0.1 once loaded; the browser
then lets the page's scripts call ``http://evil.example:1234/...`` as same-origin, and that reaches a
server on loopback, which no CORS setting guards. Such a request still carries ``Host: evil.example:1234``,
so a loopback-bound server refuses (403, in the route family's error shape) any request whose ``Host`` is
not ``localhost``, a ``*.localhost`` name, an address of 127.0.0.0/8 or ``[::1]`` (any port), unless
the user named the host with ``--allow-hosts`` (``*.example.com`` names its subdomains).

Bound to another address the server is meant to be reached by other names, which it cannot know: the
check is off, unless hosts are listed; then those, the loopback names and the bound address itself
pass. A request without a ``Host`` (HTTP/1.0) passes: browsers always send one, so the attack cannot
come without it. WebSocket handshakes are checked too (refused before they are accepted: a 403).

A pure ASGI middleware (not BaseHTTPMiddleware, which breaks streaming cancellation).
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from studiolo.api.errors import APIError
from studiolo.domain.hosts import is_loopback


def host_name(header: str) -> str:
    """The name of a Host header, without its port: ``[::1]:1234`` -> ``::1``, ``Example.com:80`` -> ``example.com``."""
    header = header.strip().lower()
    if header.startswith("["):  # an IPv6 literal
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostPolicy:
    """Which Host names a server admits; ``enabled`` False admits all."""

    def __init__(self, bind: str, allowed: Iterable[str] = ()):
        self.named = tuple(name.strip().lower() for name in allowed if name.strip())
        self.enabled = is_loopback(bind) or bool(self.named)
        self.bind = bind.strip("[]").lower()

    def admits(self, header: str | None) -> bool:
        if not self.enabled or not header:
            return True
        name = host_name(header)
        if is_loopback(name) or name == self.bind:
            return True
        return any(name == allowed or (allowed.startswith("*.") and name.endswith(allowed[1:]))
                   for allowed in self.named)


class HostCheck:
    """Refuses requests (HTTP and WebSocket) whose Host the policy does not admit."""

    def __init__(self, app: ASGIApp, policy: HostPolicy):
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.policy.admits(_header(scope, b"host")):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":  # closed before accept: the server answers the handshake 403
            await send({"type": "websocket.close", "code": 1008, "reason": "host not allowed"})
            return
        response = refused_host(_header(scope, b"host") or "")
        await response.response(Request(scope))(scope, receive, send)


def refused_host(header: str) -> APIError:
    return APIError(403, f"this server does not answer requests addressed to '{header}' (the Host header): it "
                    "answers loopback names and the hosts given with --allow-hosts only",
                    type="permission_error", param="host", code="host_not_allowed", v1_type="forbidden")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None
