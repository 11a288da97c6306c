"""MCP servers whose tools are offered to the model, and the model's calls run on them: remote ones a
request names (LM Studio's ``ephemeral_mcp`` integrations on ``/api/v1/chat``), and those of
``mcp.json`` (service/mcp_integrations.py, whose stdio servers service/mcp_stdio.py keeps running).

The protocol is the official SDK's (``mcp``): its Streamable HTTP (or SSE, or stdio) transport and
``ClientSession`` (``initialize``, ``tools/list``, ``tools/call``), one session per remote server
for the length of a turn, with the request's headers on every HTTP request. A server is someone else's program, so every
exchange is bounded in time (the session's read timeout, and the HTTP client's) and in size (the
SDK bounds each SSE event; a JSON body it reads whole, so the HTTP client here cuts off any body
past the bound).

As in LM Studio, the server must allow it ("Allow per-request MCPs"): ``allow_per_request_mcp`` in
``settings.json`` (config.py). A server that cannot be reached or answers wrongly is an
``McpConnectionError`` (LM Studio's error type ``mcp_connection_error``). Before a per-request
server is reached its host must be on the allow-list (``mcp_allowed_hosts``; loopback by default).

A call the model makes runs under the request limits (``McpToolbox.run``): a per-call timeout, and
a cut of its output; a call that fails (an error result, a timeout, a server gone) is a
``CallOutcome`` with its ``failure``, whose text the model reads in its next round.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit

import httpx2

from studiolo import __version__
from studiolo.config import allow_per_request_mcp, mcp_allowed_hosts
from studiolo.domain.chat import Tools, ToolSpec
from studiolo.domain.errors import Forbidden, InvalidRequest, Kind, StudioloError
from studiolo.domain.hosts import is_loopback
from studiolo.service.tools import offered_tools

if TYPE_CHECKING:
    from mcp import ClientSession

# The SDK (mcp, mcp_types) is imported where a server is first reached, not with this module: it is
# a third of the server's start-up imports (0.35 s of 1.2 s), and most servers never reach an MCP server.

TIMEOUT_SECONDS = 30.0  # each exchange with a server
MAX_ANSWER_BYTES = 4 * 2**20  # one answer of a server (a tool list, a call's result)
MAX_LIST_PAGES = 20  # tools/list pages followed
CALL_TIMEOUT_SECONDS = 30  # one tools/call, by default (limits.mcp_call_timeout_seconds)
MAX_OUTPUT_CHARS = 32_000  # of one call's output the model reads, by default (limits.mcp_max_output_chars)
MAX_ROUNDS = 8  # rounds of a turn that may call tools, by default (limits.mcp_max_rounds); the one after answers
DEFAULT_PORTS = {"http": 80, "https": 443}

T = TypeVar("T")


class McpConnectionError(StudioloError):
    """An MCP server could not be reached, or did not answer as MCP says."""

    kind: ClassVar[Kind] = "upstream"
    code = "mcp_connection_error"


class McpRefused(McpConnectionError):
    """The server answered with a JSON-RPC error (it refused the request: a tool call it would not run)."""


@dataclass(frozen=True)
class McpServer:
    """One ``ephemeral_mcp`` integration of a request, or a server of mcp.json (``plugin_id`` set)."""

    label: str
    url: str  # a stdio server's: "stdio"
    allowed_tools: tuple[str, ...] | None = None  # None: all its tools
    headers: tuple[tuple[str, str], ...] = ()
    plugin_id: str | None = None  # "mcp/<name>" for a server of mcp.json
    transport: Literal["streamable_http", "sse", "stdio"] = "streamable_http"

    @property
    def provider_info(self) -> dict[str, str]:
        if self.plugin_id is not None:
            return {"type": "plugin", "plugin_id": self.plugin_id}
        return {"type": "ephemeral_mcp", "server_label": self.label}


@dataclass(frozen=True)
class McpLimits:
    """What one call may take (seconds, and characters of output the model gets), and how many rounds
    of a turn may call (service/mcp_turn.py)."""

    timeout_seconds: float = CALL_TIMEOUT_SECONDS
    max_output_chars: int = MAX_OUTPUT_CHARS
    max_rounds: int = MAX_ROUNDS


@dataclass(frozen=True)
class CallFailure:
    """Why a call failed: ``kind`` is ``tool_error`` (the tool answered with an error, or the server
    refused the call), ``tool_timeout`` or ``mcp_connection_error`` (the server is gone or broken)."""

    kind: str
    reason: str


@dataclass(frozen=True)
class CallOutcome:
    """A call's output as the model reads it (for a failure: its reason), and the failure if any."""

    output: str
    failure: CallFailure | None = None


class _BoundedBody(httpx2.AsyncByteStream):
    def __init__(self, body: httpx2.AsyncByteStream):
        self._body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size = 0
        async for chunk in self._body:
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:  # a StreamError is what the SDK reports as a failed answer
                raise httpx2.StreamError(f"answer larger than {MAX_ANSWER_BYTES} bytes")
            yield chunk

    async def aclose(self) -> None:
        await self._body.aclose()


class _BoundedTransport(httpx2.AsyncHTTPTransport):
    """HTTP whose response bodies end past ``MAX_ANSWER_BYTES`` (the SDK reads a JSON answer whole)."""

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await super().handle_async_request(request)
        assert isinstance(response.stream, httpx2.AsyncByteStream)  # an async transport's
        response.stream = _BoundedBody(response.stream)
        return response


def _bounded_client(headers: dict[str, str] | None = None, timeout: httpx2.Timeout | None = None,
                    auth: httpx2.Auth | None = None) -> httpx2.AsyncClient:
    """The HTTP client of a remote server (the SDK's factory signature, for its SSE transport)."""
    return httpx2.AsyncClient(headers=headers, timeout=timeout or TIMEOUT_SECONDS, auth=auth,
                              transport=_BoundedTransport())


Streams = tuple[Any, Any]  # the SDK's read and write streams of a transport
Transport = Callable[[AsyncExitStack], Awaitable[Streams]]  # opens them, their ends on the stack


class McpConnection:
    """The SDK's session with one server. A task of its own holds it open: the SDK's transport is
    anyio task groups, which must be left by the task that entered them, and a turn may end in
    another task than the request's (a stream's); a stdio server's session outlives requests.
    Exchanges run in the caller's task, each raced against that holder, whose end (the transport
    failed: a server gone) fails them at once. Exchanges may run concurrently (JSON-RPC ids)."""

    def __init__(self, server: McpServer, transport: Transport | None = None):
        self.server = server
        self._transport = transport or self._http
        self._closing = asyncio.Event()
        self._holder: asyncio.Task[None] | None = None
        self._session: ClientSession | None = None

    async def open(self) -> None:
        ready: asyncio.Future[ClientSession] = asyncio.get_running_loop().create_future()
        self._holder = asyncio.create_task(self._hold(ready))
        self._session = await self._exchange(ready, "connecting")
        await self._exchange(self._session.initialize(), "initialize")

    async def list_tools(self) -> list[ToolSpec]:
        specs: list[ToolSpec] = []
        cursor: str | None = None
        import mcp_types

        for _ in range(MAX_LIST_PAGES):
            params = mcp_types.PaginatedRequestParams(cursor=cursor)
            result = await self._exchange(self._opened.list_tools(params=params), "tools/list")
            specs += [ToolSpec(tool.name, tool.description, dict(tool.input_schema)) for tool in result.tools]
            cursor = result.next_cursor
            if not cursor:
                break
        return specs

    async def call(self, tool: str, arguments: dict[str, Any]) -> str:
        """The tool's result as text (its text parts joined; an error result is text too, for the model)."""
        return (await self.call_tool(tool, arguments))[0]

    async def call_tool(self, tool: str, arguments: dict[str, Any],
                        timeout: float = TIMEOUT_SECONDS) -> tuple[str, bool]:
        """The tool's result as text, and whether the tool said it is an error."""
        import mcp_types

        call = self._opened.call_tool(tool, arguments, read_timeout_seconds=timeout)
        result = await self._exchange(call, f"tools/call {tool}")
        parts = getattr(result, "content", None)  # a CallToolResult's (the SDK refuses other shapes)
        if not isinstance(parts, list):
            raise McpConnectionError(f"MCP tool '{tool}' gave no content", "integrations")
        text = "".join(part.text for part in parts if isinstance(part, mcp_types.TextContent))
        return text, getattr(result, "is_error", False) is True

    async def ping(self) -> None:
        await self._exchange(self._opened.send_ping(), "ping")

    @property
    def alive(self) -> bool:
        """Open, and its transport not ended (a server whose process died may still look alive: ping it)."""
        return self._holder is not None and not self._holder.done() and not self._closing.is_set()

    async def close(self) -> None:
        if self._holder is None:
            return
        self._closing.set()
        done, _ = await asyncio.wait({self._holder}, timeout=TIMEOUT_SECONDS)  # the session's DELETE
        if not done:
            self._holder.cancel()
        elif not self._holder.cancelled():
            self._holder.exception()  # a failed transport was already reported, by the exchange it failed

    @property
    def _opened(self) -> ClientSession:
        assert self._session is not None, "open() came first"
        return self._session

    async def _http(self, stack: AsyncExitStack) -> Streams:
        """The server's HTTP transport (Streamable HTTP, or the older SSE one), answers bounded."""
        from mcp.client.sse import sse_client
        from mcp.client.streamable_http import streamable_http_client

        if self.server.transport == "sse":
            return await stack.enter_async_context(sse_client(
                self.server.url, headers=dict(self.server.headers), timeout=TIMEOUT_SECONDS,
                sse_read_timeout=TIMEOUT_SECONDS, httpx_client_factory=_bounded_client))
        http = await stack.enter_async_context(_bounded_client(dict(self.server.headers)))
        return await stack.enter_async_context(streamable_http_client(
            self.server.url, http_client=http, max_sse_event_size=MAX_ANSWER_BYTES))

    async def _hold(self, ready: asyncio.Future[ClientSession]) -> None:
        import mcp_types
        from mcp import ClientSession

        client_info = mcp_types.Implementation(name="studiolo", version=__version__)
        async with AsyncExitStack() as stack:
            read, write = await self._transport(stack)
            ready.set_result(await stack.enter_async_context(ClientSession(
                read, write, read_timeout_seconds=TIMEOUT_SECONDS, client_info=client_info)))
            await self._closing.wait()

    async def _exchange(self, work: Awaitable[T], what: str) -> T:
        """``work``'s result, unless it fails or the holder ends first: an ``McpConnectionError``."""
        assert self._holder is not None, "open() started the holder"
        future = asyncio.ensure_future(work)
        try:
            await asyncio.wait({future, self._holder}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            future.cancel()  # if the holder ended first, or the caller is cancelled
        if future.cancelled():
            raise self._failure(what, None if self._holder.cancelled() else self._holder.exception())
        try:
            return future.result()
        except Exception as exc:  # noqa: BLE001 - what the SDK raises is the server's failure (see _failure)
            raise self._failure(what, exc) from None

    def _failure(self, what: str, error: BaseException | None) -> McpConnectionError:
        """The client's error for ``error``: the SDK raises an ``MCPError`` for a JSON-RPC error or a
        timeout, httpx2's errors (in exception groups) for HTTP, pydantic's for a malformed answer."""
        import mcp_types
        from mcp import MCPError

        while isinstance(error, BaseExceptionGroup) and error.exceptions:
            error = error.exceptions[0]
        server = f"MCP server '{self.server.label}'"
        lost = isinstance(error, MCPError) and error.code == mcp_types.CONNECTION_CLOSED  # the transport failed
        if lost or isinstance(error, httpx2.ConnectError | OSError):
            where = "its process, from mcp.json" if self.server.transport == "stdio" else f"at {self.server.url}"
            message = f"no answer from {server} ({where}; {what}: {error})"
        elif isinstance(error, MCPError):
            return McpRefused(f"{server} refused {what}: {error.message}", "integrations")
        else:
            message = f"{server} failed at {what}: {type(error).__name__}: {error}"
        return McpConnectionError(message, "integrations")


@dataclass
class McpToolbox:
    """The tools of a request's MCP servers, open for the length of a turn. ``connections`` are its
    own (closed with it); ``leases`` give back the shared ones it used (mcp.json's stdio servers)."""

    connections: list[McpConnection] = field(default_factory=list)
    by_tool: dict[str, McpConnection] = field(default_factory=dict)  # a tool's name -> its server's connection
    specs: list[ToolSpec] = field(default_factory=list)
    limits: McpLimits = field(default_factory=McpLimits)
    leases: list[Callable[[], None]] = field(default_factory=list)

    def tools(self) -> Tools:
        return Tools(tuple(self.specs), "auto", True)

    def provider_info(self, tool: str) -> dict[str, str]:
        return self.by_tool[tool].server.provider_info

    async def call_limited(self, tool: str, arguments: dict[str, Any]) -> tuple[str, bool]:
        """The tool's result as text (cut past ``max_output_chars``) and whether it is an error result,
        within the call's time limit: a TimeoutError past it, the server's failings raised
        (McpConnectionError). The session's own timeout is the backstop: this one fails first."""
        timeout = self.limits.timeout_seconds
        text, is_error = await asyncio.wait_for(self.by_tool[tool].call_tool(tool, arguments, timeout + 5), timeout)
        return cut_output(text, self.limits.max_output_chars), is_error

    async def run(self, tool: str, arguments: dict[str, Any]) -> CallOutcome:
        """The call under the limits: never raises for the server's failings (they are the outcome's
        ``failure``), only if cancelled. The output past ``max_output_chars`` is cut, with a marker."""
        try:
            text, is_error = await self.call_limited(tool, arguments)
        except TimeoutError:
            reason = f"the MCP tool '{tool}' gave no answer within {self.limits.timeout_seconds:g} s"
            return CallOutcome(f"Error: {reason}", CallFailure("tool_timeout", reason))
        except McpConnectionError as exc:
            kind = "tool_error" if isinstance(exc, McpRefused) else "mcp_connection_error"
            return CallOutcome(f"Error: {exc.message}", CallFailure(kind, exc.message))
        if is_error:
            return CallOutcome(text, CallFailure("tool_error", text or f"the MCP tool '{tool}' failed"))
        return CallOutcome(text)

    async def offer(self, connection: McpConnection, allowed_tools: Sequence[str] | None) -> None:
        """Offer the tools ``connection``'s server lists (those ``allowed_tools`` names; None: all)."""
        for spec in await connection.list_tools():
            if allowed_tools is not None and spec.name not in allowed_tools:
                continue
            if spec.name in self.by_tool:
                raise InvalidRequest(f"two MCP servers offer a tool named '{spec.name}'", "integrations")
            self.by_tool[spec.name] = connection
            self.specs.append(spec)

    def check(self) -> None:
        """The tools' schemas compile (else a 400 naming ``integrations``)."""
        offered_tools(self.specs, "auto", None, True, lambda index, name: "integrations")

    async def close(self) -> None:
        """Ends every session of its own and gives back the shared ones (again: a no-op)."""
        connections, self.connections = self.connections, []
        leases, self.leases = self.leases, []
        for release in leases:
            release()
        for connection in connections:
            await connection.close()


def cut_output(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters and a marker saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n[output cut: {len(text) - limit:,} of {len(text):,} characters left out]"


def check_per_request_servers(servers: Sequence[McpServer], param: str = "integrations") -> None:
    """Per-request servers are allowed (the setting), each on an allowed host; else a 403 naming ``param``."""
    if not allow_per_request_mcp():
        raise Forbidden("per-request MCP servers are not allowed on this server (set allow_per_request_mcp "
                        "in settings.json)", param, code="mcp_not_allowed")
    allowed = mcp_allowed_hosts()
    for server in servers:
        if "*" in allowed:
            return
        parts = urlsplit(server.url)
        try:
            port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower(), 0)
        except ValueError:
            raise InvalidRequest("'server_url' is not a valid URL", param) from None
        host = (parts.hostname or "").lower()
        shown = f"[{host}]" if ":" in host else host
        if not allowed and is_loopback(host):
            continue
        if host not in allowed and f"{shown}:{port}" not in allowed:
            where = "its list" if allowed else "by default, only loopback"
            raise Forbidden(f"the server does not connect to MCP servers on {shown}:{port} (not on "
                            f"mcp_allowed_hosts in settings.json; {where})", param, code="mcp_host_not_allowed")
