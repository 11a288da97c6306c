"""A request's MCP integrations opened as one toolbox: per-request remote servers (``ephemeral_mcp``)
and the servers of mcp.json (``mcp/<name>``, LM Studio's ``plugin`` integrations), in the request's
order.

What may be used is decided before any server is reached: per-request servers need
``allow_per_request_mcp`` and an allowed host (service/mcp.py); mcp.json servers need
``allow_mcp_json`` *and* a server that requires auth (LM Studio: "Allow calling servers from
mcp.json" requires "Require Authentication"), since they are programs of this machine's user that
any client could otherwise start; an unknown name is a 400. All refusals name ``integrations``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from studiolo.config import RequestLimits, allow_mcp_json
from studiolo.domain.errors import Forbidden, InvalidRequest
from studiolo.service.mcp import McpConnection, McpLimits, McpServer, McpToolbox, check_per_request_servers
from studiolo.service.mcp_json import McpJsonEntry, read_mcp_json
from studiolo.service.mcp_stdio import StdioServers

PARAM = "integrations"


@dataclass(frozen=True)
class McpPlugin:
    """A request's ``mcp/<name>`` integration: a server of mcp.json."""

    name: str
    allowed_tools: tuple[str, ...] | None = None  # None: all its tools


Integration = McpServer | McpPlugin


class McpIntegrations:
    """The server's MCP side: its running stdio servers, and toolboxes for requests."""

    def __init__(self, require_auth: bool, limits: RequestLimits):
        self.require_auth = require_auth
        self.limits = McpLimits(max(1, limits.mcp_call_timeout_seconds), max(1, limits.mcp_max_output_chars),
                                max(1, limits.mcp_max_rounds))
        self.stdio = StdioServers()

    def check(self, integrations: Sequence[Integration], param: str = PARAM) -> dict[str, McpJsonEntry]:
        """Refuses (naming ``param``) what may not be used, before any server is reached; the mcp.json
        entries of the plugins."""
        remote = [item for item in integrations if isinstance(item, McpServer)]
        plugins = [item for item in integrations if isinstance(item, McpPlugin)]
        if remote:
            check_per_request_servers(remote, param)
        return self._entries(plugins, param) if plugins else {}

    async def open(self, integrations: Sequence[Integration], param: str = PARAM) -> McpToolbox:
        """A toolbox of the integrations' tools (those each allows); closes what it opened if it fails."""
        entries = self.check(integrations, param)
        toolbox = McpToolbox(limits=self.limits)
        try:
            for item in integrations:
                if isinstance(item, McpServer):
                    await self._open_remote(toolbox, item, item.allowed_tools)
                else:
                    await self._open_plugin(toolbox, entries[item.name], item.allowed_tools)
            toolbox.check()
        except BaseException:
            await toolbox.close()
            raise
        return toolbox

    async def close(self) -> None:
        await self.stdio.close()

    def _entries(self, plugins: Sequence[McpPlugin], param: str) -> dict[str, McpJsonEntry]:
        if not allow_mcp_json():
            raise Forbidden("servers from mcp.json are not allowed on this server (set allow_mcp_json in "
                            "settings.json)", param, code="mcp_not_allowed")
        if not self.require_auth:
            raise Forbidden("servers from mcp.json are called only when the server requires auth "
                            "(require_auth): they are programs of this machine that any client could "
                            "otherwise run; allow_mcp_json is set but auth is off", param,
                            code="mcp_json_needs_auth")
        entries = read_mcp_json()
        for plugin in plugins:
            if plugin.name not in entries:
                known = ", ".join(f"mcp/{name}" for name in sorted(entries)) or "none"
                raise InvalidRequest(f"no server 'mcp/{plugin.name}' in mcp.json (it has: {known})", param,
                                     code="plugin_not_found")
        return entries

    @staticmethod
    async def _open_remote(toolbox: McpToolbox, server: McpServer, allowed: tuple[str, ...] | None) -> None:
        connection = McpConnection(server)
        toolbox.connections.append(connection)
        await connection.open()
        await toolbox.offer(connection, allowed)

    async def _open_plugin(self, toolbox: McpToolbox, entry: McpJsonEntry, allowed: tuple[str, ...] | None) -> None:
        if entry.transport != "stdio":  # a remote server of mcp.json: its own session for the turn
            server = McpServer(entry.name, entry.url, allowed, entry.headers, entry.plugin_id, entry.transport)
            await self._open_remote(toolbox, server, allowed)
            return
        connection = await self.stdio.acquire(entry)
        toolbox.leases.append(partial(self.stdio.release, entry.name, connection))
        await toolbox.offer(connection, allowed)
