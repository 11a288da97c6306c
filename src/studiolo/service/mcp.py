"""Remote MCP servers a request names (LM Studio's ``ephemeral_mcp`` integrations on ``/api/v1/chat``):
their tools offered to the model, and the model's calls run on them.

MCP's Streamable HTTP transport: JSON-RPC 2.0 requests POSTed to the server's URL, answered with a
JSON body or an SSE stream carrying the answer; ``initialize`` first (the server may give a session
id, sent back with every later request), then ``notifications/initialized``, ``tools/list`` and
``tools/call``. Every exchange is bounded in time and size: a server is someone else's program.

As in LM Studio, the server must allow it ("Allow per-request MCPs"): ``allow_per_request_mcp`` in
``settings.json`` (config.py). A server that cannot be reached or answers wrongly is an
``McpConnectionError`` (LM Studio's error type ``mcp_connection_error``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx

from studiolo import __version__
from studiolo.config import allow_per_request_mcp
from studiolo.domain.chat import Tools, ToolSpec
from studiolo.domain.errors import Forbidden, InvalidRequest, Kind, StudioloError
from studiolo.service.tools import offered_tools

PROTOCOL_VERSION = "2025-06-18"
TIMEOUT_SECONDS = 30.0  # each exchange with a server
MAX_ANSWER_BYTES = 4 * 2**20  # one answer of a server (a tool list, a call's result)
MAX_LIST_PAGES = 20  # tools/list pages followed


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


@dataclass
class _Session:
    """JSON-RPC over Streamable HTTP with one server."""

    server: McpServer
    client: httpx.AsyncClient
    session_id: str | None = None
    next_id: int = 1

    async def request(self, method: str, params: dict[str, Any]) -> Any:
        request_id, self.next_id = self.next_id, self.next_id + 1
        message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        body = await self._post(message)
        answer = _answer(body, request_id, self.server)
        if "error" in answer:
            error = answer["error"] if isinstance(answer["error"], dict) else {}
            raise McpConnectionError(f"MCP server '{self.server.label}' refused {method}: {error.get('message')}",
                                     "integrations")
        return answer.get("result")

    async def notify(self, method: str) -> None:
        await self._post({"jsonrpc": "2.0", "method": method})

    async def _post(self, message: dict[str, Any]) -> tuple[str, bytes]:
        headers = {"content-type": "application/json", "accept": "application/json, text/event-stream",
                   "mcp-protocol-version": PROTOCOL_VERSION, **dict(self.server.headers)}
        if self.session_id is not None:
            headers["mcp-session-id"] = self.session_id
        try:
            async with self.client.stream("POST", self.server.url, json=message, headers=headers) as response:
                if response.status_code >= 400:
                    raise McpConnectionError(f"MCP server '{self.server.label}' answered HTTP {response.status_code}",
                                             "integrations")
                self.session_id = response.headers.get("mcp-session-id", self.session_id)
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > MAX_ANSWER_BYTES:
                        raise McpConnectionError(f"MCP server '{self.server.label}' answered more than "
                                                 f"{MAX_ANSWER_BYTES} bytes", "integrations")
                return response.headers.get("content-type", ""), bytes(data)
        except httpx.HTTPError as exc:
            raise McpConnectionError(f"cannot reach MCP server '{self.server.label}' at {self.server.url}: {exc}",
                                     "integrations") from None


def _answer(body: tuple[str, bytes], request_id: int, server: McpServer) -> dict[str, Any]:
    """The JSON-RPC answer to ``request_id``: the body itself, or one of an SSE stream's events."""
    content_type, data = body
    try:
        if content_type.startswith("text/event-stream"):
            candidates = [json.loads(line[5:]) for line in data.decode().splitlines() if line.startswith("data:")]
        else:
            candidates = [json.loads(data)]
    except (ValueError, UnicodeDecodeError):
        raise McpConnectionError(f"MCP server '{server.label}' did not answer in JSON", "integrations") from None
    for candidate in candidates:
        if isinstance(candidate, dict) and candidate.get("id") == request_id:
            return candidate
    raise McpConnectionError(f"MCP server '{server.label}' gave no answer to request {request_id}", "integrations")


@dataclass
class McpToolbox:
    """The tools of a request's MCP servers, open for the length of a turn."""

    client: httpx.AsyncClient
    sessions: dict[str, _Session] = field(default_factory=dict)  # a tool's name -> its server's session
    specs: list[ToolSpec] = field(default_factory=list)

    def tools(self) -> Tools:
        return Tools(tuple(self.specs), "auto", True)

    def provider_info(self, tool: str) -> dict[str, str]:
        return self.sessions[tool].server.provider_info

    async def call(self, tool: str, arguments: dict[str, Any]) -> str:
        """The tool's result as text (its text parts joined; an error result is text too, for the model)."""
        result = await self.sessions[tool].request("tools/call", {"name": tool, "arguments": arguments})
        parts = result.get("content") if isinstance(result, dict) else None
        if not isinstance(parts, list):
            raise McpConnectionError(f"MCP tool '{tool}' gave no content", "integrations")
        return "".join(part.get("text", "") for part in parts if isinstance(part, dict) and part.get("type") == "text")

    async def close(self) -> None:
        await self.client.aclose()


async def open_toolbox(servers: Sequence[McpServer]) -> McpToolbox:
    """Connect to ``servers`` and list their tools (those each allows); closes what it opened if it fails."""
    if not allow_per_request_mcp():
        raise Forbidden("per-request MCP servers are not allowed on this server (set allow_per_request_mcp "
                        "in settings.json)", "integrations", code="mcp_not_allowed")
    toolbox = McpToolbox(httpx.AsyncClient(timeout=TIMEOUT_SECONDS, follow_redirects=False))
    try:
        for server in servers:
            session = _Session(server, toolbox.client)
            await session.request("initialize", {"protocolVersion": PROTOCOL_VERSION, "capabilities": {},
                                                 "clientInfo": {"name": "studiolo", "version": __version__}})
            await session.notify("notifications/initialized")
            for spec in await _listed_tools(session):
                if server.allowed_tools is not None and spec.name not in server.allowed_tools:
                    continue
                if spec.name in toolbox.sessions:
                    raise InvalidRequest(f"two MCP servers offer a tool named '{spec.name}'", "integrations")
                toolbox.sessions[spec.name] = session
                toolbox.specs.append(spec)
        offered_tools(toolbox.specs, "auto", None, True, lambda index, name: "integrations")  # their schemas compile
    except BaseException:
        await toolbox.close()
        raise
    return toolbox


async def _listed_tools(session: _Session) -> list[ToolSpec]:
    specs, cursor = [], None
    for _ in range(MAX_LIST_PAGES):
        result = await session.request("tools/list", {"cursor": cursor} if cursor else {})
        tools = result.get("tools") if isinstance(result, dict) else None
        if not isinstance(tools, list):
            raise McpConnectionError(f"MCP server '{session.server.label}' listed no tools", "integrations")
        for tool in tools:
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                raise McpConnectionError(f"MCP server '{session.server.label}' listed a tool without a name",
                                         "integrations")
            schema = tool.get("inputSchema")
            specs.append(ToolSpec(tool["name"], tool.get("description"), schema if isinstance(schema, dict) else None))
        cursor = result.get("nextCursor")
        if not cursor:
            break
    return specs
