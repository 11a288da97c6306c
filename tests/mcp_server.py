"""A small remote MCP server for tests: MCP's Streamable HTTP transport (JSON-RPC 2.0 over POST), with
a weather tool whose answers are fixed, in a thread of the test process.

It answers ``tools/call`` as an SSE stream and everything else as plain JSON (servers may do either),
gives a session id at ``initialize`` and refuses later requests without it, and records the calls.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Get the current weather in a city",
    "inputSchema": {"type": "object", "properties": {"city": {"type": "string", "description": "The city name"}},
                    "required": ["city"]},
}
HIDDEN_TOOL = {"name": "delete_everything", "description": "Not for the model",
               "inputSchema": {"type": "object", "properties": {}}}
WEATHER = {"Paris": "18 C, light rain", "Rome": "24 C, sunny", "Tokyo": "12 C, cloudy"}
SESSION = "session-1"


class McpServer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.headers_seen: list[dict[str, str]] = []
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}/mcp"
        threading.Thread(target=self._http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()

    def answer(self, message: dict[str, Any]) -> dict[str, Any]:
        method, params = message["method"], message.get("params", {})
        if method == "initialize":
            result: Any = {"protocolVersion": params["protocolVersion"], "capabilities": {"tools": {}},
                           "serverInfo": {"name": "test-weather", "version": "1"}}
        elif method == "tools/list":
            result = {"tools": [WEATHER_TOOL, HIDDEN_TOOL]}
        elif method == "tools/call":
            self.calls.append((params["name"], params["arguments"]))
            text = WEATHER.get(params["arguments"].get("city"), "unknown city")
            result = {"content": [{"type": "text", "text": text}], "isError": False}
        else:
            return {"jsonrpc": "2.0", "id": message["id"], "error": {"code": -32601, "message": "no such method"}}
        return {"jsonrpc": "2.0", "id": message["id"], "result": result}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                message = json.loads(self.rfile.read(int(self.headers["content-length"])))
                server.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
                if message.get("method") != "initialize" and self.headers.get("mcp-session-id") != SESSION:
                    self._send(400, "application/json", b'{"error": "no session"}')
                elif "id" not in message:  # a notification
                    self._send(202, "application/json", b"")
                elif message["method"] == "tools/call":
                    event = f"event: message\ndata: {json.dumps(server.answer(message))}\n\n"
                    self._send(200, "text/event-stream", event.encode())
                else:
                    self._send(200, "application/json", json.dumps(server.answer(message)).encode())

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.send_header("mcp-session-id", SESSION)
                self.end_headers()
                self.wfile.write(body)

        return Handler
