"""Record what an Anthropic client (Claude Code) sends to studiolo: a small reverse proxy.

    python tools/anthropic_capture.py --listen 18766 --to http://127.0.0.1:1234 --log /tmp/capture.jsonl
    ANTHROPIC_BASE_URL=http://127.0.0.1:18766 ANTHROPIC_AUTH_TOKEN=x claude -p "..." --model <key>

Each request is one JSON line in the log: method, path, headers (an API key's value blanked) and
the body's JSON, with the status studiolo answered. Responses are passed on as they come (streams
too). Used to find the routes, headers and fields Claude Code sends (docs/API.md "Anthropic
Messages"); not a test dependency.
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

SECRET_HEADERS = {"x-api-key", "authorization"}
HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}


def make_handler(upstream: str, log_path: str) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()
    client = httpx.Client(base_url=upstream, timeout=None)

    class Capture(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
            request = client.build_request(self.command, self.path, headers=headers, content=body)
            response = client.send(request, stream=True)
            self._record(body, response.status_code)
            self.send_response(response.status_code)
            for key, value in response.headers.items():
                if key.lower() not in HOP_HEADERS | {"content-encoding"}:
                    self.send_header(key, value)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            try:
                for chunk in response.iter_raw():
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            finally:
                response.close()

        def _record(self, body: bytes, status: int) -> None:
            try:
                payload = json.loads(body) if body else None
            except ValueError:
                payload = body.decode(errors="replace")
            headers = {k: ("<set>" if k.lower() in SECRET_HEADERS else v) for k, v in self.headers.items()}
            entry = {"method": self.command, "path": self.path, "status": status, "headers": headers, "body": payload}
            with lock, open(log_path, "a") as log:
                log.write(json.dumps(entry) + "\n")

        do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _forward

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            pass

    return Capture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", type=int, default=18766)
    parser.add_argument("--to", default="http://127.0.0.1:1234")
    parser.add_argument("--log", default="anthropic-capture.jsonl")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.listen), make_handler(args.to, args.log))
    server.serve_forever()


if __name__ == "__main__":
    main()
