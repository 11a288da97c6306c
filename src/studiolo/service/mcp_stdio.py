"""The stdio MCP servers of mcp.json, run by studiolo: started when a request first needs one, kept
running between requests and shared by them (one process and one MCP session per server; the
session carries concurrent calls, each with its JSON-RPC id), restarted when it died or its entry
in mcp.json changed, stopped when idle for ``IDLE_SECONDS`` and when the server shuts down.

A process is started with the SDK's stdio client: in a session (process group) of its own, with
the SDK's small default environment plus the entry's ``env``, its stderr appended to
``logs/mcp-<name>.log``. Stopping it closes its stdin, then signals its process group (the SDK's
shutdown, bounded in time), so no process is left behind.
"""

from __future__ import annotations

import asyncio
import re
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass

from studiolo.config import logs_dir
from studiolo.service.mcp import McpConnection, McpConnectionError, McpServer, Streams
from studiolo.service.mcp_json import McpJsonEntry

IDLE_SECONDS = 300.0  # a server no request used for this long is stopped
PING_SECONDS = 5.0  # a shared server must answer a ping this fast to be reused (else it is restarted)


@dataclass(eq=False)  # compared by identity
class _Running:
    entry: McpJsonEntry
    connection: McpConnection
    users: int = 0  # turns holding it now
    last_used: float = 0.0  # time.monotonic() when the last one let go


class StdioServers:
    """The running stdio servers, by name. ``acquire`` and ``release`` bracket a turn's use."""

    def __init__(self, idle_seconds: float = IDLE_SECONDS):
        self.idle_seconds = idle_seconds
        self._running: dict[str, _Running] = {}
        self._lock = asyncio.Lock()  # one start (or restart) at a time
        self._janitor: asyncio.Task[None] | None = None
        self._retired: list[_Running] = []  # replaced while turns used them: stopped when they let go
        self._stopping: set[asyncio.Task[None]] = set()
        self._closed = False

    async def acquire(self, entry: McpJsonEntry) -> McpConnection:
        """The server's connection, started (or restarted) if it is not running as ``entry`` says."""
        async with self._lock:
            if self._closed:
                raise McpConnectionError("the server is shutting down", "integrations")
            running = self._running.get(entry.name)
            if running is not None and not await self._usable(running, entry):
                del self._running[entry.name]
                if running.users and running.connection.alive:
                    self._retired.append(running)  # an edited entry: the turns using it finish on it
                else:
                    await running.connection.close()
                running = None
            if running is None:
                running = _Running(entry, await _start(entry))
                self._running[entry.name] = running
            running.users += 1
            self._watch_idle()
            return running.connection

    def release(self, name: str, connection: McpConnection) -> None:
        for running in [self._running.get(name), *self._retired]:
            if running is not None and running.connection is connection:
                running.users -= 1
                running.last_used = time.monotonic()
                if running in self._retired and not running.users:
                    self._retired.remove(running)
                    self._stop_later(connection)
                return

    def _stop_later(self, connection: McpConnection) -> None:
        task = asyncio.create_task(connection.close())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    @property
    def names(self) -> list[str]:
        """The servers running now."""
        return sorted(self._running)

    async def close(self) -> None:
        """Stop every server (at shutdown); later acquires are refused."""
        self._closed = True
        if self._janitor is not None:
            self._janitor.cancel()
        async with self._lock:
            running, self._running = [*self._running.values(), *self._retired], {}
            self._retired = []
        await asyncio.gather(*(item.connection.close() for item in running), *self._stopping)

    async def stop_idle(self) -> None:
        """Stop the servers no turn has used for ``idle_seconds``."""
        now = time.monotonic()
        async with self._lock:
            idle = [name for name, item in self._running.items()
                    if item.users == 0 and now - item.last_used >= self.idle_seconds]
            stopped = [self._running.pop(name) for name in idle]
        for item in stopped:
            await item.connection.close()

    async def _usable(self, running: _Running, entry: McpJsonEntry) -> bool:
        """Same entry, and alive: its process may have died without a word, so it must answer a ping.
        A changed entry with turns still using it is replaced; those turns keep the old one till they end."""
        if running.entry != entry or not running.connection.alive:
            return False
        try:
            await asyncio.wait_for(running.connection.ping(), PING_SECONDS)
        except (McpConnectionError, TimeoutError):
            return False
        return True

    def _watch_idle(self) -> None:
        if self._janitor is None or self._janitor.done():
            self._janitor = asyncio.create_task(self._stop_when_idle())

    async def _stop_when_idle(self) -> None:
        while self._running:
            await asyncio.sleep(min(self.idle_seconds / 4, 30.0))
            await self.stop_idle()


async def _start(entry: McpJsonEntry) -> McpConnection:
    """The entry's process, started and its MCP session initialized."""
    server = McpServer(entry.name, "stdio", plugin_id=entry.plugin_id, transport="stdio")
    connection = McpConnection(server, lambda stack: _stdio(entry, stack))
    try:
        await connection.open()
    except BaseException:
        await connection.close()
        raise
    return connection


async def _stdio(entry: McpJsonEntry, stack: AsyncExitStack) -> Streams:
    from mcp.client.stdio import StdioServerParameters, stdio_client  # imported when first needed (service/mcp.py)

    logs_dir().mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", entry.name)
    errlog = stack.enter_context((logs_dir() / f"mcp-{safe}.log").open("a", encoding="utf-8"))
    parameters = StdioServerParameters(command=entry.command, args=list(entry.args), env=dict(entry.env) or None,
                                       cwd=entry.cwd)
    return await stack.enter_async_context(stdio_client(parameters, errlog=errlog))
