"""A stdio MCP server for tests, run by studiolo from an mcp.json entry: ``python -m tests.mcp_stdio_server``
(from the repository's root). Built on the official SDK's low-level ``Server`` (its stdio transport),
with tests/mcp_server.py's weather tool, so the model sees the same schema as with the remote one.

Its environment (the entry's ``env``) says how ``get_weather`` behaves, so that one model behaviour
(Qwen calls ``get_weather`` for Paris) meets each kind of failure:

- ``WEATHER_MODE``: ``ok`` (the fixed answer, plus ``WEATHER_SUFFIX``), ``hang`` (never answers
  until cancelled), ``fail`` (an error result), ``huge`` (an answer of ``HUGE_CHARS`` characters),
  ``die`` (the process exits during the call).
- ``EVENTS_FILE``: a file it appends a line to at start (``start <pid>``), for each call
  (``call <name> <arguments>``) and for each call cancelled by the client (``cancelled <name>``).
- ``LINGER``: once its stdin is closed it stays (as a careless server does), until a signal ends it.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

from tests.mcp_server import HIDDEN_TOOL, WEATHER, WEATHER_TOOL

HUGE_CHARS = 100_000


def note(line: str) -> None:
    path = os.environ.get("EVENTS_FILE")
    if path:
        with open(path, "a", encoding="utf-8") as events:
            events.write(line + "\n")


async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
    return types.ListToolsResult(tools=[WEATHER_TOOL, HIDDEN_TOOL])


async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
    arguments = params.arguments or {}
    note(f"call {params.name} {json.dumps(arguments, sort_keys=True)}")
    mode = os.environ.get("WEATHER_MODE", "ok")
    text = WEATHER.get(arguments.get("city"), "unknown city") + os.environ.get("WEATHER_SUFFIX", "")
    if mode == "hang":
        try:
            await asyncio.sleep(3600)
        except BaseException:
            note(f"cancelled {params.name}")
            raise
    elif mode == "fail":
        return types.CallToolResult(content=[types.TextContent(type="text", text="the weather service is down")],
                                    is_error=True)
    elif mode == "huge":
        text = "x" * HUGE_CHARS
    elif mode == "die":
        os._exit(3)
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=False)


async def main() -> None:
    note(f"start {os.getpid()}")
    server = Server("test-stdio-weather", version="1", on_list_tools=list_tools, on_call_tool=call_tool)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
    if os.environ.get("LINGER"):
        note("lingering")
        time.sleep(3600)
