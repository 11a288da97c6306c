"""Authentication: a pure ASGI middleware that lets a request through only with a token that has the
permission its route declares (``--require-auth``).

What each route needs comes from the app's route table, walked at startup: every route declares a
Permission or PUBLIC (api/routing.py's ``make_router(permission=...)`` and ``needs``), and a route that
declares nothing stops the server from starting, so a new route cannot be left open by mistake. Only
liveness (``/health``) is PUBLIC. A path no route matches (a 404 to be) or a method a route does not
take (a 405) still needs a valid token: an anonymous caller learns nothing of the route table.

A token comes as ``Authorization: Bearer <token>`` (OpenAI's clients, LM Studio's), ``x-api-key:
<token>`` (Anthropic's clients) or a bare ``Authorization: <token>`` (BladeLLM's). Without a usable one
the answer is 401 with ``WWW-Authenticate: Bearer`` in the route family's error shape (api/errors.py
picks it by path: LM Studio v1's ``invalid_request`` / ``invalid_api_key`` on ``/api/v1/*``, OpenAI's
elsewhere); with one lacking the permission, 403 naming it. Neither repeats the token.

An open stream (a streamed completion, the log stream) checks its token again at each event it sends
(service/auth.py's StreamCheck: a re-read only when a token changed somewhere): once the token is
revoked or expired, the response ends there and the app sees the client as gone, which cancels its
work as a disconnect does.

While a request runs, ``REQUEST_OWNER`` (domain/auth.py) holds its token's public id: stored
responses belong to it (service/conversations.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from starlette.requests import Request
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from studiolo.api.errors import api_error
from studiolo.api.routing import PERMISSION_KEY
from studiolo.config import ServerSettings
from studiolo.domain.auth import PUBLIC, REQUEST_OWNER, Permission, TokenInfo
from studiolo.domain.errors import StudioloError
from studiolo.service.auth import BOOTSTRAP_HINT, StreamCheck, TokenService, bind_refusal, require

log = logging.getLogger(__name__)

# FastAPI's own pages (the OpenAPI schema and its viewers) declare nothing: they describe the
# inference API, so they need what it needs
FRAMEWORK_ROUTES = {"/openapi.json": Permission.inference, "/docs": Permission.inference,
                    "/docs/oauth2-redirect": Permission.inference, "/redoc": Permission.inference}
DISCONNECT: Message = {"type": "http.disconnect"}
POLICY_VIOLATION = 1008  # the WebSocket close code for a refused connection

Requirement = Permission | str  # a Permission, or PUBLIC


class UndeclaredRoutes(RuntimeError):
    pass


def declared_requirement(route: BaseRoute) -> Requirement | None:
    """What ``route`` declares it needs, or None if it declares nothing."""
    extra = getattr(route, "openapi_extra", None) or {}
    value = extra.get(PERMISSION_KEY) or getattr(getattr(route, "endpoint", None), PERMISSION_KEY, None)
    if value is None:
        value = FRAMEWORK_ROUTES.get(getattr(route, "path", ""))
    if value is None:
        return None
    return PUBLIC if value == PUBLIC else Permission(value)


def flat_routes(routes: list[BaseRoute]) -> list[Any]:
    """Every route the app serves, each with its full path: FastAPI keeps an included router as one
    entry of ``app.routes``, resolved lazily (``iter_route_contexts`` walks into it)."""
    return list(iter_route_contexts(routes))


def route_requirements(routes: list[BaseRoute]) -> list[tuple[Any, Requirement]]:
    """Each route with what it needs; UndeclaredRoutes naming every route that declares nothing."""
    table, missing = [], []
    for route in flat_routes(routes):
        need = declared_requirement(route)
        if need is None:
            missing.append(f"{sorted(getattr(route, 'methods', None) or [])} {getattr(route, 'path', route)}")
        else:
            table.append((route, need))
    if missing:
        raise UndeclaredRoutes("these routes declare no permission (make_router(permission=...) or needs(...) "
                               "in api/routing.py): " + "; ".join(missing))
    return table


def token_text(scope: Scope) -> str | None:
    """The token a request carries: ``Authorization: Bearer <t>``, a bare ``Authorization: <t>``, or
    ``x-api-key: <t>``."""
    authorization = key = None
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            authorization = value.decode("latin-1").strip()
        elif name == b"x-api-key":
            key = value.decode("latin-1").strip()
    if authorization:
        scheme, _, rest = authorization.partition(" ")
        return rest.strip() if scheme.lower() == "bearer" else authorization
    return key or None


class AuthMiddleware:
    def __init__(self, app: ASGIApp, *, server: FastAPI, settings: ServerSettings):
        self.app = app
        self.server = server  # whose route table is walked, and whose state gets the token service
        self.settings = settings
        self.table: list[tuple[Any, Requirement]] | None = None
        self.tokens: TokenService | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._startup_checked(send))
        elif scope["type"] not in ("http", "websocket") or not self.settings.require_auth:
            await self.app(scope, receive, send)
        else:
            await self._guarded(scope, receive, send)

    def start(self) -> None:
        """Walks the route table and opens the tokens; raises what must stop the server from starting."""
        self.table = route_requirements(self.server.routes)
        refusal = bind_refusal(self.settings.host, self.settings.require_auth, self.settings.insecure_no_auth)
        if refusal:
            raise RuntimeError(refusal)
        try:
            self.tokens = TokenService()
        except Exception:
            if self.settings.require_auth:
                raise  # fail closed: no token could be checked
            log.warning("the API token file cannot be opened; /api/v1/tokens will not work", exc_info=True)
            return
        self.server.state.tokens = self.tokens
        if self.settings.require_auth:
            log.info("API tokens are required on every route but /health")
            if not self.tokens.has_tokens():
                log.warning(BOOTSTRAP_HINT)

    def _startup_checked(self, send: Send) -> Send:
        async def checked(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                # raised into the app's lifespan, which then closes what it opened and reports the
                # startup failed (uvicorn exits)
                try:
                    self.start()
                except Exception as exc:
                    log.error("cannot start: %s", exc)
                    raise
            elif message["type"] == "lifespan.shutdown.complete" and self.tokens is not None:
                self.tokens.close()
            await send(message)

        return checked

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.table is None or self.tokens is None:  # served without a lifespan (a test's bare app)
            self.start()
        assert self.tokens is not None
        need, what = self._requirement(scope)
        if need == PUBLIC:
            await self.app(scope, receive, send)
            return
        text = token_text(scope)
        try:
            info = self.tokens.verify(text)
            if isinstance(need, Permission):
                require(info, need, what)
        except StudioloError as exc:
            await _refuse(scope, receive, send, exc)
            return
        assert text is not None
        owner = REQUEST_OWNER.set(info.id)
        try:
            if scope["type"] == "http":
                await _StreamGuard(StreamCheck(self.tokens, info, text), info).run(self.app, scope, receive, send)
            else:
                await self.app(scope, receive, send)
        finally:
            REQUEST_OWNER.reset(owner)

    def _requirement(self, scope: Scope) -> tuple[Requirement | None, str]:
        """What the route serving ``scope`` needs (None: any valid token), and its name for a 403."""
        assert self.table is not None
        for route, need in self.table:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return need, f"{scope.get('method', 'WEBSOCKET')} {getattr(route, 'path', scope['path'])}"
        return None, f"{scope.get('method', '')} {scope['path']}"


class _StreamGuard:
    """Ends a response whose token stops holding while it streams, and tells the app the client left."""

    def __init__(self, check: StreamCheck, info: TokenInfo):
        self.check = check
        self.info = info
        self.cut = asyncio.Event()

    async def run(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        async def guarded_send(message: Message) -> None:
            if self.cut.is_set():
                return  # ended already: what the app still sends goes nowhere
            if message["type"] == "http.response.body" and message.get("more_body") and not self.check.still_valid():
                self.cut.set()
                log.info("ended a response streaming to API token %s: the token was revoked or expired", self.info.id)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await send(message)

        async def guarded_receive() -> Message:
            return await self._receive_or_cut(receive)

        await app(scope, guarded_receive, guarded_send)

    async def _receive_or_cut(self, receive: Receive) -> Message:
        if self.cut.is_set():
            return DISCONNECT
        receiving = asyncio.ensure_future(receive())
        cutting = asyncio.ensure_future(self.cut.wait())
        try:
            done, _ = await asyncio.wait({receiving, cutting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (receiving, cutting):
                if not task.done():
                    task.cancel()
        return receiving.result() if receiving in done else DISCONNECT


async def _refuse(scope: Scope, receive: Receive, send: Send, exc: StudioloError) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": POLICY_VIOLATION, "reason": str(exc)[:120]})
        return
    error = api_error(exc)
    headers: dict[str, Any] = dict(error.headers or {})
    if error.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    error.headers = headers
    await error.response(Request(scope))(scope, receive, send)
