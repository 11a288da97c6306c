"""mcp.json and its stdio servers below the HTTP layer, with no model: the file's notation and its
errors, the supervisor (one process per server, reused, restarted when it died or its entry changed,
stopped when idle and at close, never left behind) and the limits of a call (timeout, error result,
a server that dies mid-call, output cut, cancellation), on tests/mcp_stdio_server.py run for real."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import pytest

from studiolo.config import RequestLimits
from studiolo.domain.errors import Forbidden, InvalidRequest
from studiolo.service.mcp import McpConnectionError, McpServer, cut_output
from studiolo.service.mcp_integrations import McpIntegrations, McpPlugin
from studiolo.service.mcp_json import McpJsonEntry, McpJsonInvalid, read_mcp_json
from studiolo.service.mcp_stdio import StdioServers
from tests.mcp_server import McpServer as HttpMcpServer
from tests.mcp_sse_server import McpSseServer
from tests.mcp_stdio_home import events, runs, started_pids, stdio_entry, wait_until, write_mcp_json
from tests.mcp_stdio_server import HUGE_CHARS

PARIS = {"city": "Paris"}


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIOLO_HOME", str(tmp_path))
    (tmp_path / "settings.json").write_text('{"allow_mcp_json": true}')
    return tmp_path


# --- the file ---------------------------------------------------------------------------------------


def test_mcp_json_reads_stdio_and_remote_servers_in_cursor_notation(home):
    write_mcp_json(home, {
        "files": {"command": "npx", "args": ["-y", "server"], "env": {"A": "1"}, "cwd": "/tmp"},
        "docs": {"url": "https://example.com/mcp", "headers": {"Authorization": "Bearer x"}},
        "old": {"url": "https://example.com/sse"},
        "typed": {"url": "https://example.com/events", "type": "sse"}})
    assert read_mcp_json() == {
        "files": McpJsonEntry("files", "stdio", command="npx", args=("-y", "server"), env=(("A", "1"),), cwd="/tmp"),
        "docs": McpJsonEntry("docs", "streamable_http", url="https://example.com/mcp",
                             headers=(("Authorization", "Bearer x"),)),
        "old": McpJsonEntry("old", "sse", url="https://example.com/sse"),
        "typed": McpJsonEntry("typed", "sse", url="https://example.com/events")}


def test_no_mcp_json_is_no_servers(home):
    assert read_mcp_json() == {}


@pytest.mark.parametrize(("text", "said"), [
    ("{not json", "mcp.json ("),
    ('{"servers": {}}', "'mcpServers'"),
    ('{"mcpServers": {"bad": {"command": "x", "url": "http://a"}}}', "server 'bad' needs a 'command'"),
    ('{"mcpServers": {"bad": {"command": "x", "argz": []}}}', "server 'bad' has keys this server does not use: argz"),
    ('{"mcpServers": {"bad": {"command": "x", "args": "-v"}}}', "server 'bad' 'args' must be a list"),
    ('{"mcpServers": {"bad": {"url": "ftp://a"}}}', "server 'bad' 'url' must be an http(s) URL"),
    ('{"mcpServers": {"bad": {"url": "http://a", "headers": {"x": 1}}}}', "server 'bad' 'headers' must map"),
    ('{"mcpServers": {"bad": {"url": "http://a", "type": "websocket"}}}', "server 'bad' has an unknown 'type'"),
])
def test_a_malformed_mcp_json_is_an_error_naming_the_file_and_entry(home, text, said):
    (home / "mcp.json").write_text(text)
    with pytest.raises(McpJsonInvalid) as raised:
        read_mcp_json()
    assert said in raised.value.message and raised.value.param == "integrations"
    assert raised.value.kind == "internal" and raised.value.code == "mcp_json_invalid"


# --- who may use them ---------------------------------------------------------------------------------


def test_mcp_json_servers_need_the_setting_and_auth(home):
    write_mcp_json(home, {"weather": stdio_entry(home / "events")})
    with pytest.raises(Forbidden) as no_auth:
        asyncio.run(McpIntegrations(False, RequestLimits()).open([McpPlugin("weather")]))
    assert no_auth.value.code == "mcp_json_needs_auth" and "require_auth" in no_auth.value.message
    (home / "settings.json").write_text('{"allow_mcp_json": false}')
    with pytest.raises(Forbidden) as off:
        asyncio.run(McpIntegrations(True, RequestLimits()).open([McpPlugin("weather")]))
    assert off.value.code == "mcp_not_allowed" and off.value.param == "integrations"
    assert events(home / "events") == []  # refused before anything started


def test_an_unknown_mcp_json_server_is_a_400_listing_the_known(home):
    write_mcp_json(home, {"weather": stdio_entry(home / "events")})
    with pytest.raises(InvalidRequest) as raised:
        asyncio.run(McpIntegrations(True, RequestLimits()).open([McpPlugin("nope")]))
    assert raised.value.param == "integrations" and "mcp/weather" in raised.value.message


@pytest.mark.parametrize(("hosts", "url", "allowed"), [
    (None, "http://127.0.0.1:1/mcp", True),
    (None, "http://localhost:1/mcp", True),
    (None, "http://[::1]:1/mcp", True),
    (None, "http://10.0.0.1/mcp", False),
    (None, "https://example.com/mcp", False),
    (["example.com"], "https://example.com/mcp", True),
    (["example.com"], "http://127.0.0.1:1/mcp", False),  # a list replaces the loopback default
    (["example.com:8443"], "https://example.com/mcp", False),
    (["example.com:443"], "https://example.com/mcp", True),
    (["*"], "http://10.0.0.1/mcp", True),
])
def test_per_request_servers_are_refused_off_the_allowed_hosts_before_any_connection(home, hosts, url, allowed):
    settings = {"allow_per_request_mcp": True, **({"mcp_allowed_hosts": hosts} if hosts is not None else {})}
    (home / "settings.json").write_text(json.dumps(settings))
    mcp = McpIntegrations(False, RequestLimits(mcp_call_timeout_seconds=1))
    try:
        asyncio.run(mcp.open([McpServer("s", url)]))
    except Forbidden as refused:
        assert not allowed and refused.code == "mcp_host_not_allowed" and refused.param == "integrations"
    except McpConnectionError as failed:  # an allowed host is reached: no MCP server is there
        assert allowed, failed
    else:
        raise AssertionError("no MCP server is there")


# --- the supervisor -----------------------------------------------------------------------------------


def _entry(home, name: str = "weather", mode: str = "ok", **env: str) -> McpJsonEntry:
    write_mcp_json(home, {name: stdio_entry(home / f"{name}-events", mode, **env)})
    return read_mcp_json()[name]


def test_a_stdio_server_starts_once_is_reused_and_stops_at_close(home):
    entry = _entry(home)

    async def scenario() -> None:
        servers = StdioServers()
        first = await servers.acquire(entry)
        second = await servers.acquire(entry)  # a concurrent turn shares it
        assert first is second
        assert await asyncio.gather(first.call("get_weather", PARIS), second.call("get_weather", PARIS)) == [
            "18 C, light rain"] * 2
        servers.release("weather", first)
        servers.release("weather", second)
        assert await servers.acquire(entry) is first
        await servers.close()

    asyncio.run(scenario())
    [pid] = started_pids(home / "weather-events")
    assert wait_until(lambda: not runs(pid))


def test_a_stdio_server_that_died_or_was_edited_is_restarted(home):
    entry = _entry(home)

    async def scenario() -> list[str]:
        servers = StdioServers()
        answers = []
        try:
            connection = await servers.acquire(entry)
            servers.release("weather", connection)
            os.kill(started_pids(home / "weather-events")[0], signal.SIGKILL)
            connection = await servers.acquire(entry)  # it no longer answers a ping: a new process
            answers.append(await connection.call("get_weather", PARIS))
            servers.release("weather", connection)
            edited = _entry(home, WEATHER_SUFFIX=" (edited)")
            connection = await servers.acquire(edited)
            answers.append(await connection.call("get_weather", PARIS))
        finally:
            await servers.close()
        return answers

    assert asyncio.run(scenario()) == ["18 C, light rain", "18 C, light rain (edited)"]
    pids = started_pids(home / "weather-events")
    assert len(pids) == 3 and wait_until(lambda: not any(runs(pid) for pid in pids))


def test_an_idle_stdio_server_is_stopped_and_started_again_when_needed(home):
    entry = _entry(home)

    async def scenario() -> None:
        servers = StdioServers(idle_seconds=0.4)
        connection = await servers.acquire(entry)
        await asyncio.sleep(0.6)
        assert servers.names == ["weather"]  # in use: kept, however long
        servers.release("weather", connection)
        pid = started_pids(home / "weather-events")[0]
        for _ in range(100):
            if not servers.names and not runs(pid):
                break
            await asyncio.sleep(0.1)
        assert servers.names == [] and not runs(pid)
        connection = await servers.acquire(entry)
        assert await connection.call("get_weather", PARIS) == "18 C, light rain"
        await servers.close()

    asyncio.run(scenario())
    assert len(started_pids(home / "weather-events")) == 2


# --- a call's limits ----------------------------------------------------------------------------------


def _run(home, mode: str, timeout: int = 1, max_chars: int = 32_000):
    _entry(home, mode=mode)
    mcp = McpIntegrations(True, RequestLimits(mcp_call_timeout_seconds=timeout, mcp_max_output_chars=max_chars))

    async def scenario():
        toolbox = await mcp.open([McpPlugin("weather", ("get_weather",))])
        try:
            assert [spec.name for spec in toolbox.specs] == ["get_weather"]  # allowed_tools
            assert toolbox.provider_info("get_weather") == {"type": "plugin", "plugin_id": "mcp/weather"}
            return await toolbox.run("get_weather", PARIS)
        finally:
            await toolbox.close()
            await mcp.close()

    return asyncio.run(scenario())


def test_a_call_that_succeeds(home):
    outcome = _run(home, "ok")
    assert (outcome.output, outcome.failure) == ("18 C, light rain", None)


def test_a_call_that_hangs_fails_after_the_timeout_and_is_cancelled_on_the_server(home):
    outcome = _run(home, "hang")
    assert outcome.failure is not None and outcome.failure.kind == "tool_timeout"
    assert outcome.output == "Error: the MCP tool 'get_weather' gave no answer within 1 s"
    assert wait_until(lambda: "cancelled get_weather" in events(home / "weather-events"), 5)


def test_a_tool_error_result_is_a_failure_the_model_reads(home):
    outcome = _run(home, "fail")
    assert outcome.failure is not None and outcome.failure.kind == "tool_error"
    assert outcome.output == outcome.failure.reason == "the weather service is down"


def test_a_server_that_dies_mid_call_is_a_connection_failure(home):
    outcome = _run(home, "die", timeout=30)
    assert outcome.failure is not None and outcome.failure.kind == "mcp_connection_error"
    assert outcome.output.startswith("Error: no answer from MCP server 'weather'")


def test_a_huge_output_is_cut_with_a_marker(home):
    outcome = _run(home, "huge", max_chars=1000)
    assert outcome.failure is None
    assert outcome.output == "x" * 1000 + f"\n[output cut: {HUGE_CHARS - 1000:,} of {HUGE_CHARS:,} characters left out]"
    assert cut_output("short", 10) == "short"


def test_cancelling_a_call_cancels_it_on_the_server_which_stays_usable(home):
    entry = _entry(home, mode="hang")

    async def scenario() -> str:
        servers = StdioServers()
        try:
            connection = await servers.acquire(entry)
            call = asyncio.ensure_future(connection.call_tool("get_weather", PARIS))
            await asyncio.sleep(0.5)
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)
            for _ in range(50):
                if "cancelled get_weather" in events(home / "weather-events"):
                    break
                await asyncio.sleep(0.1)
            await connection.ping()  # the same process still answers
            return "ok"
        finally:
            await servers.close()

    assert asyncio.run(scenario()) == "ok"
    assert "cancelled get_weather" in events(home / "weather-events")
    assert len(started_pids(home / "weather-events")) == 1


# --- mcp.json's remote servers ------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["sse", "streamable_http"])
def test_a_remote_mcp_json_server_gets_its_headers_and_runs_calls(home, transport):
    remote = McpSseServer() if transport == "sse" else HttpMcpServer()
    try:
        write_mcp_json(home, {"docs": {"url": remote.url, "headers": {"x-api-key": "k2"}}})
        assert read_mcp_json()["docs"].transport == transport  # SSE: the URL's path ends in /sse

        async def scenario():
            mcp = McpIntegrations(True, RequestLimits())
            toolbox = await mcp.open([McpPlugin("docs", ("get_weather",))])
            try:
                return toolbox.provider_info("get_weather"), await toolbox.run("get_weather", PARIS)
            finally:
                await toolbox.close()
                await mcp.close()

        info, outcome = asyncio.run(scenario())
    finally:
        remote.close()
    assert info == {"type": "plugin", "plugin_id": "mcp/docs"}
    assert (outcome.output, outcome.failure) == ("18 C, light rain", None)
    assert remote.calls == [("get_weather", PARIS)]
    assert remote.headers_seen and all(headers.get("x-api-key") == "k2" for headers in remote.headers_seen)


def test_a_stdio_server_that_cannot_start_is_a_connection_error_naming_it(home):
    write_mcp_json(home, {"gone": {"command": str(home / "no-such-program")}})

    async def scenario() -> None:
        mcp = McpIntegrations(True, RequestLimits())
        try:
            await mcp.open([McpPlugin("gone")])
        finally:
            await mcp.close()

    with pytest.raises(McpConnectionError) as raised:
        asyncio.run(scenario())
    assert raised.value.message.startswith("no answer from MCP server 'gone' (its process, from mcp.json; connecting:")
