"""A remote MCP server over the older SSE transport (a GET event stream, messages POSTed back), for
tests of mcp.json's ``url`` entries that speak it: the SDK's low-level ``Server`` with
tests/mcp_server.py's weather tool behind the SDK's ``SseServerTransport``, served by uvicorn in a
thread of the test process. It notes every HTTP request's headers."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import mcp_types as types
import uvicorn
from mcp.server.lowlevel import Server
from mcp.server.sse import SseServerTransport
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Mount, Route

from tests.mcp_server import HIDDEN_TOOL, WEATHER, WEATHER_TOOL


class McpSseServer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.headers_seen: list[dict[str, str]] = []
        server = Server("test-sse-weather", version="1", on_list_tools=self._list_tools, on_call_tool=self._call_tool)
        transport = SseServerTransport("/messages/")

        async def events(request: Any) -> Response:
            self.headers_seen.append({key.lower(): value for key, value in request.headers.items()})
            async with transport.connect_sse(request.scope, request.receive, request._send) as (read, write):
                await server.run(read, write, server.create_initialization_options())
            return Response()

        app = Starlette(routes=[Route("/sse", events, methods=["GET"]),
                                Mount("/messages/", app=transport.handle_post_message)])
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{listener.getsockname()[1]}/sse"
        self._uvicorn = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self._uvicorn.run, kwargs={"sockets": [listener]}, daemon=True)
        self._thread.start()
        while not self._uvicorn.started:
            time.sleep(0.01)

    async def _list_tools(self, ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[WEATHER_TOOL, HIDDEN_TOOL])

    async def _call_tool(self, ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        arguments = params.arguments or {}
        self.calls.append((params.name, arguments))
        text = WEATHER.get(arguments.get("city"), "unknown city")
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=False)

    def close(self) -> None:
        self._uvicorn.should_exit = True
        self._thread.join(timeout=10)
