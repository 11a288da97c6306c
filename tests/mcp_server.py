"""A small remote MCP server for tests, built on the official SDK (``mcp``'s low-level ``Server`` over
its Streamable HTTP app), with a weather tool whose answers are fixed, served by uvicorn in a thread
of the test process.

The low-level server (not ``MCPServer``) so the tools' schemas are exactly the ones written here:
the model's prompt shows them, and greedy runs are compared token for token. It records the calls
and every HTTP request's headers. The SDK answers requests as SSE streams (its default; plain JSON
with ``json_response``) and keeps a session (the ``mcp-session-id`` it gives at ``initialize`` is
required afterwards).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import mcp_types as types
import uvicorn
from mcp.server.lowlevel import Server

WEATHER_TOOL = types.Tool(
    name="get_weather", description="Get the current weather in a city",
    input_schema={"type": "object", "properties": {"city": {"type": "string", "description": "The city name"}},
                  "required": ["city"]})
HIDDEN_TOOL = types.Tool(name="delete_everything", description="Not for the model",
                         input_schema={"type": "object", "properties": {}})
WEATHER = {"Paris": "18 C, light rain", "Rome": "24 C, sunny", "Tokyo": "12 C, cloudy"}


class McpServer:
    def __init__(self, json_response: bool = False, extra_tools: tuple[types.Tool, ...] = ()) -> None:
        self.extra_tools = extra_tools
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.headers_seen: list[dict[str, str]] = []
        self.methods_seen: list[str] = []  # HTTP methods, in order: a DELETE ends a client's session
        server = Server("test-weather", version="1", on_list_tools=self._list_tools, on_call_tool=self._call_tool)
        app = server.streamable_http_app(streamable_http_path="/mcp", json_response=json_response)
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{listener.getsockname()[1]}/mcp"
        self._uvicorn = uvicorn.Server(uvicorn.Config(self._recording(app), log_level="warning", lifespan="on"))
        self._thread = threading.Thread(target=self._uvicorn.run, kwargs={"sockets": [listener]}, daemon=True)
        self._thread.start()
        while not self._uvicorn.started:
            time.sleep(0.01)

    def close(self) -> None:
        self._uvicorn.should_exit = True
        self._thread.join(timeout=10)

    def _recording(self, app: Any) -> Any:
        """``app``, noting the headers of every HTTP request it gets."""

        async def recording_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                self.headers_seen.append({key.decode().lower(): value.decode() for key, value in scope["headers"]})
                self.methods_seen.append(scope["method"])
            await app(scope, receive, send)

        return recording_app

    async def _list_tools(self, ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[WEATHER_TOOL, HIDDEN_TOOL, *self.extra_tools])

    async def _call_tool(self, ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        arguments = params.arguments or {}
        self.calls.append((params.name, arguments))
        text = WEATHER.get(arguments.get("city"), "unknown city")
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=False)
