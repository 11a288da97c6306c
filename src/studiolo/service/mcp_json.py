"""``STUDIOLO_HOME/mcp.json``: MCP servers in the notation of Cursor and LM Studio, read when a request
names one (an edit applies to the next request, without a restart).

    {"mcpServers": {
        "files": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"],
                  "env": {"DEBUG": "1"}, "cwd": "/tmp"},
        "docs": {"url": "https://example.com/mcp", "headers": {"Authorization": "Bearer ..."}},
        "old": {"url": "https://example.com/sse", "type": "sse"}}}

A ``command`` entry is a stdio server (studiolo starts it: service/mcp_stdio.py); a ``url`` entry a
remote one, over Streamable HTTP, or over the older SSE transport when ``"type": "sse"`` says so or
the URL's path ends in ``/sse``. A file that cannot be used is an ``McpJsonInvalid`` naming the file
and the entry: the server's configuration is wrong, not the request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from studiolo.config import mcp_json_file
from studiolo.domain.errors import InternalError

STDIO_KEYS = {"command", "args", "env", "cwd", "type"}
REMOTE_KEYS = {"url", "headers", "type"}
TYPES = {"stdio": "stdio", "http": "streamable_http", "streamable-http": "streamable_http",
         "streamableHttp": "streamable_http", "sse": "sse"}


class McpJsonInvalid(InternalError):
    """mcp.json cannot be read or an entry of it cannot be used."""

    code = "mcp_json_invalid"
    retry = False


@dataclass(frozen=True)
class McpJsonEntry:
    """One server of mcp.json; equal entries describe the same server (an edited one is restarted)."""

    name: str
    transport: Literal["stdio", "streamable_http", "sse"]
    command: str = ""
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None
    url: str = ""
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def plugin_id(self) -> str:
        return f"mcp/{self.name}"


def read_mcp_json() -> dict[str, McpJsonEntry]:
    """The servers of mcp.json by name ({} without the file)."""
    path = mcp_json_file()
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise McpJsonInvalid(f"mcp.json ({path}) is not valid JSON: {exc}", "integrations") from None
    servers = document.get("mcpServers") if isinstance(document, dict) else None
    if not isinstance(servers, dict):
        raise McpJsonInvalid("mcp.json must be an object with an object 'mcpServers' (name -> server)",
                             "integrations")
    return {name: _entry(name, spec) for name, spec in servers.items()}


def _entry(name: str, spec: Any) -> McpJsonEntry:
    where = f"mcp.json, server '{name}'"
    if not isinstance(spec, dict):
        raise _invalid(where, "must be an object with a 'command' (stdio) or a 'url' (remote)")
    kind = spec.get("type", "stdio" if "command" in spec else "streamable_http")
    if kind not in TYPES and kind not in TYPES.values():
        raise _invalid(where, f"has an unknown 'type' {kind!r} (one of {', '.join(TYPES)})")
    if ("command" in spec) == ("url" in spec):
        raise _invalid(where, "needs a 'command' (a stdio server) or a 'url' (a remote one), not both")
    if "command" in spec:
        return _stdio(name, spec, where)
    return _remote(name, spec, where, str(TYPES.get(kind, kind)))


def _stdio(name: str, spec: dict[str, Any], where: str) -> McpJsonEntry:
    _known(spec, STDIO_KEYS, where)
    command, args, cwd = spec["command"], spec.get("args", []), spec.get("cwd")
    if not isinstance(command, str) or not command:
        raise _invalid(where, "'command' must be a non-empty string")
    if not isinstance(args, list) or not all(isinstance(arg, str) for arg in args):
        raise _invalid(where, "'args' must be a list of strings")
    if cwd is not None and not isinstance(cwd, str):
        raise _invalid(where, "'cwd' must be a string")
    return McpJsonEntry(name, "stdio", command=command, args=tuple(args), env=_strings(spec, "env", where), cwd=cwd)


def _remote(name: str, spec: dict[str, Any], where: str, transport: str) -> McpJsonEntry:
    _known(spec, REMOTE_KEYS, where)
    url = spec["url"]
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise _invalid(where, "'url' must be an http(s) URL")
    if transport == "stdio":
        raise _invalid(where, "has a 'url' but 'type' stdio")
    if "type" not in spec and urlsplit(url).path.rstrip("/").endswith("/sse"):
        transport = "sse"  # the SSE transport's endpoint, by the common convention
    kind: Literal["streamable_http", "sse"] = "sse" if transport == "sse" else "streamable_http"
    return McpJsonEntry(name, kind, url=url, headers=_strings(spec, "headers", where))


def _strings(spec: dict[str, Any], key: str, where: str) -> tuple[tuple[str, str], ...]:
    values = spec.get(key, {})
    if not isinstance(values, dict) or not all(isinstance(value, str) for value in values.values()):
        raise _invalid(where, f"'{key}' must map names to strings")
    return tuple(values.items())


def _known(spec: dict[str, Any], keys: set[str], where: str) -> None:
    unknown = sorted(set(spec) - keys)
    if unknown:
        raise _invalid(where, f"has keys this server does not use: {', '.join(unknown)} (it knows "
                              f"{', '.join(sorted(keys))})")


def _invalid(where: str, what: str) -> McpJsonInvalid:
    return McpJsonInvalid(f"{where} {what}", "integrations")
