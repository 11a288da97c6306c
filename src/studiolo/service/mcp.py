"""Remote MCP servers a request names (LM Studio's ``ephemeral_mcp`` integrations on ``/api/v1/chat``):
their tools offered to the model, and the model's calls run on them.

The protocol is the official SDK's (``mcp``): its Streamable HTTP transport and ``ClientSession``
(``initialize``, ``tools/list``, ``tools/call``), one session per server for the length of a turn,
with the request's headers on every HTTP request. A server is someone else's program, so every
exchange is bounded in time (the session's read timeout, and the HTTP client's) and in size (the
SDK bounds each SSE event; a JSON body it reads whole, so the HTTP client here cuts off any body
past the bound).

As in LM Studio, the server must allow it ("Allow per-request MCPs"): ``allow_per_request_mcp`` in
``settings.json`` (config.py). A server that cannot be reached or answers wrongly is an
``McpConnectionError`` (LM Studio's error type ``mcp_connection_error``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import httpx2
import mcp_types
from mcp import ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client

from studiolo import __version__
from studiolo.config import allow_per_request_mcp
from studiolo.domain.chat import Tools, ToolSpec
from studiolo.domain.errors import Forbidden, InvalidRequest, Kind, StudioloError
from studiolo.service.tools import offered_tools

TIMEOUT_SECONDS = 30.0  # each exchange with a server
MAX_ANSWER_BYTES = 4 * 2**20  # one answer of a server (a tool list, a call's result)
MAX_LIST_PAGES = 20  # tools/list pages followed
CLIENT_INFO = mcp_types.Implementation(name="studiolo", version=__version__)

T = TypeVar("T")


class McpConnectionError(StudioloError):
    """An MCP server could not be reached, or did not answer as MCP says."""

    kind: ClassVar[Kind] = "upstream"
    code = "mcp_connection_error"


@dataclass(frozen=True)
class McpServer:
    """One ``ephemeral_mcp`` integration of a request."""

    label: str
    url: str
    allowed_tools: tuple[str, ...] | None = None  # None: all its tools
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def provider_info(self) -> dict[str, str]:
        return {"type": "ephemeral_mcp", "server_label": self.label}


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


class _Connection:
    """The SDK's session with one server. A task of its own holds it open: the SDK's transport is
    anyio task groups, which must be left by the task that entered them, and a turn may end in
    another task than the request's (a stream's). Exchanges run in the caller's task, each raced
    against that holder, whose end (the transport failed: a server gone) fails them at once."""

    def __init__(self, server: McpServer):
        self.server = server
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
        result = await self._exchange(self._opened.call_tool(tool, arguments), f"tools/call {tool}")
        parts = getattr(result, "content", None)  # a CallToolResult's (the SDK refuses other shapes)
        if not isinstance(parts, list):
            raise McpConnectionError(f"MCP tool '{tool}' gave no content", "integrations")
        return "".join(part.text for part in parts if isinstance(part, mcp_types.TextContent))

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

    async def _hold(self, ready: asyncio.Future[ClientSession]) -> None:
        async with AsyncExitStack() as stack:
            http = await stack.enter_async_context(httpx2.AsyncClient(
                headers=dict(self.server.headers), timeout=TIMEOUT_SECONDS, transport=_BoundedTransport()))
            read, write = await stack.enter_async_context(streamable_http_client(
                self.server.url, http_client=http, max_sse_event_size=MAX_ANSWER_BYTES))
            ready.set_result(await stack.enter_async_context(ClientSession(
                read, write, read_timeout_seconds=TIMEOUT_SECONDS, client_info=CLIENT_INFO)))
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
        while isinstance(error, BaseExceptionGroup) and error.exceptions:
            error = error.exceptions[0]
        server = f"MCP server '{self.server.label}'"
        lost = isinstance(error, MCPError) and error.code == mcp_types.CONNECTION_CLOSED  # the transport failed
        if lost or isinstance(error, httpx2.ConnectError):
            message = f"no answer from {server} at {self.server.url} ({what}: {error})"
        elif isinstance(error, MCPError):
            message = f"{server} refused {what}: {error.message}"
        else:
            message = f"{server} failed at {what}: {type(error).__name__}: {error}"
        return McpConnectionError(message, "integrations")


@dataclass
class McpToolbox:
    """The tools of a request's MCP servers, open for the length of a turn."""

    connections: list[_Connection] = field(default_factory=list)
    by_tool: dict[str, _Connection] = field(default_factory=dict)  # a tool's name -> its server's connection
    specs: list[ToolSpec] = field(default_factory=list)

    def tools(self) -> Tools:
        return Tools(tuple(self.specs), "auto", True)

    def provider_info(self, tool: str) -> dict[str, str]:
        return self.by_tool[tool].server.provider_info

    async def call(self, tool: str, arguments: dict[str, Any]) -> str:
        return await self.by_tool[tool].call(tool, arguments)

    async def close(self) -> None:
        """Ends every session (again: a no-op)."""
        connections, self.connections = self.connections, []
        for connection in connections:
            await connection.close()


async def open_toolbox(servers: Sequence[McpServer]) -> McpToolbox:
    """Connect to ``servers`` and list their tools (those each allows); closes what it opened if it fails."""
    if not allow_per_request_mcp():
        raise Forbidden("per-request MCP servers are not allowed on this server (set allow_per_request_mcp "
                        "in settings.json)", "integrations", code="mcp_not_allowed")
    toolbox = McpToolbox()
    try:
        for server in servers:
            connection = _Connection(server)
            toolbox.connections.append(connection)
            await connection.open()
            for spec in await connection.list_tools():
                if server.allowed_tools is not None and spec.name not in server.allowed_tools:
                    continue
                if spec.name in toolbox.by_tool:
                    raise InvalidRequest(f"two MCP servers offer a tool named '{spec.name}'", "integrations")
                toolbox.by_tool[spec.name] = connection
                toolbox.specs.append(spec)
        offered_tools(toolbox.specs, "auto", None, True, lambda index, name: "integrations")  # their schemas compile
    except BaseException:
        await toolbox.close()
        raise
    return toolbox
