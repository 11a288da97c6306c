"""MCP calls that go wrong, end to end on ``/api/v1/chat``: a call that hangs (per-call timeout, here
1 s), a tool that answers with an error, a server that dies mid-call, an answer past the output
limit (here 200 characters), and a client that leaves while a call is in flight. One round may
call (``mcp_max_rounds``), the next answers: the 0.5B would call again after each failure. Each is a
``tool_call.failure`` event and an ``invalid_tool_call`` item the client sees, and a failure result
the model reads in its next round; none hangs the request.

The servers are mcp.json's stdio test server (tests/mcp_stdio_server.py), one entry per behaviour,
all with the same ``get_weather`` tool, which Qwen2.5-Coder-0.5B (greedy) calls for Paris."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from studiolo.models.defaults import QWEN05, target_path
from tests.conftest import QWEN, free_port, home_with_models
from tests.mcp_stdio_home import AuthServer, events, make_token, started_pids, stdio_entry, wait_until, write_mcp_json
from tests.mcp_stdio_server import HUGE_CHARS

PARIS = "What is the weather like in Paris today?"
CITY = {"city": "Paris"}
BEHAVIOURS = ("slow", "broken", "dying", "huge")  # tests/mcp_stdio_server.py's modes, by entry name
MODES = {"slow": "hang", "broken": "fail", "dying": "die", "huge": "huge"}


def _home(tmp_path_factory, timeout: int):
    home = home_with_models(tmp_path_factory.mktemp("mcp-limits-home"), {QWEN: target_path(QWEN05)})
    settings = {"allow_mcp_json": True, "allow_per_request_mcp": True,
                "limits": {"mcp_call_timeout_seconds": timeout, "mcp_max_output_chars": 200, "mcp_max_rounds": 1}}
    (home / "settings.json").write_text(json.dumps(settings))
    write_mcp_json(home, {name: stdio_entry(home / f"{name}-events", MODES[name]) for name in BEHAVIOURS})
    return home


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return _home(tmp_path_factory, 1)


@pytest.fixture(scope="module")
def server(home):
    running = AuthServer(home, free_port(), ["--require-auth"])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def token(server, home) -> str:
    return make_token(home)


@pytest.fixture(scope="module")
def api(server, token):
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=300) as client:
        yield client


def _chat(name: str, **extra) -> dict:
    return {"model": QWEN, "input": PARIS, "integrations": [f"mcp/{name}"], "temperature": 0,
            "repeat_penalty": 1.0, "max_output_tokens": 60, **extra}


def _plugin(name: str) -> dict:
    return {"type": "plugin", "plugin_id": f"mcp/{name}"}


def _failure(name: str, kind: str, reason: str) -> dict:
    return {"type": "invalid_tool_call", "reason": reason, "metadata": {
        "type": kind, "tool_name": "get_weather", "arguments": CITY, "provider_info": _plugin(name)}}


def _calls(name: str, home) -> list[str]:
    return [line for line in events(home / f"{name}-events") if line.startswith("call ")]


TIMEOUT = "the MCP tool 'get_weather' gave no answer within 1 s"


def test_a_hanging_call_times_out_into_a_failure_event_and_the_turn_goes_on(api, home):
    found, kind = [], None
    with api.stream("POST", "/api/v1/chat", json={**_chat("slow"), "stream": True}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                found.append((kind, json.loads(line[6:])))
    calls = [data for kind, data in found if kind.startswith("tool_call.")]
    assert calls[:3] == [
        {"type": "tool_call.start", "tool": "get_weather", "provider_info": _plugin("slow")},
        {"type": "tool_call.arguments", "tool": "get_weather", "arguments": CITY, "provider_info": _plugin("slow")},
        {"type": "tool_call.failure", "reason": TIMEOUT, "metadata": _failure("slow", "tool_timeout", "")["metadata"]}]
    assert len(calls) == 3  # one round calls, the next answers
    assert found[-1][0] == "chat.end"
    output = found[-1][1]["result"]["output"]
    assert output[0] == _failure("slow", "tool_timeout", TIMEOUT)
    assert [item["type"] for item in output[1:]] == ["message"]
    assert wait_until(lambda: "cancelled get_weather" in events(home / "slow-events"))  # the server was told


def test_an_error_result_is_a_failure_the_model_reads(api, home):
    response = api.post("/api/v1/chat", json=_chat("broken"))
    assert response.status_code == 200, response.text
    output = response.json()["output"]
    assert output[0] == _failure("broken", "tool_error", "the weather service is down")
    assert [item["type"] for item in output[1:]] == ["message"]
    # stored with its failure: a continuation on either API reads the call and its result
    previous = response.json()["response_id"]
    stored = api.get(f"/v1/responses/{previous}").json()["output"]
    assert [item["output"] for item in stored if item["type"] == "function_call_output"] == [
        "the weather service is down"]
    more = api.post("/api/v1/chat", json={"model": QWEN, "input": "Thanks", "max_output_tokens": 4,
                                          "previous_response_id": previous})
    assert more.status_code == 200, more.text
    more = api.post("/v1/responses", json={"model": QWEN, "input": "Thanks", "max_output_tokens": 4,
                                           "previous_response_id": previous})
    assert more.status_code == 200, more.text


def test_a_server_that_dies_mid_call_is_a_failure_and_is_restarted_next_time(api, home):
    for _ in range(2):
        response = api.post("/api/v1/chat", json=_chat("dying"))
        assert response.status_code == 200, response.text
        first = response.json()["output"][0]
        assert first["type"] == "invalid_tool_call" and first["metadata"]["type"] == "mcp_connection_error"
        assert first["reason"].startswith("no answer from MCP server 'dying' (its process, from mcp.json;")
    assert len(started_pids(home / "dying-events")) == 2


def test_an_answer_past_the_limit_is_cut_with_a_marker(api):
    response = api.post("/api/v1/chat", json=_chat("huge"))
    assert response.status_code == 200, response.text
    first = response.json()["output"][0]
    marker = f"\n[output cut: {HUGE_CHARS - 200:,} of {HUGE_CHARS:,} characters left out]"
    assert first == {"type": "tool_call", "tool": "get_weather", "arguments": CITY, "output": "x" * 200 + marker,
                     "provider_info": _plugin("huge")}


@pytest.fixture(scope="module")
def patient(tmp_path_factory):
    """A server whose calls may take a minute: a cancelled call is then the client's doing."""
    home = _home(tmp_path_factory, 60)
    running = AuthServer(home, free_port(), ["--require-auth"])
    yield running, make_token(home)
    running.stop()


def _leave_during_the_call(server, token: str, stream: bool) -> None:
    """Send a request to the hanging server, and hang up once its call reached the server."""
    before = len(_calls("slow", server.home))
    body = json.dumps(_chat("slow", stream=stream)).encode()
    head = (f"POST /api/v1/chat HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head + body)
        assert wait_until(lambda: len(_calls("slow", server.home)) > before, 60)


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_cancels_the_call_in_flight(patient, stream):
    server, token = patient
    noted = server.home / "slow-events"
    cancelled = events(noted).count("cancelled get_weather")
    _leave_during_the_call(server, token, stream)
    # the call would hang for a minute: the server was told to cancel it because the client left
    assert wait_until(lambda: events(noted).count("cancelled get_weather") > cancelled, 20)
    # the same process serves the next request (it lists its tools, and takes the call)
    _leave_during_the_call(server, token, stream)
    assert len(started_pids(noted)) == 1
    assert wait_until(lambda: events(noted).count("cancelled get_weather") > cancelled + 1, 20)


def test_a_per_request_server_off_the_allowed_hosts_is_refused_before_it_is_reached(api):
    body = {"model": QWEN, "input": PARIS, "integrations": [
        {"type": "ephemeral_mcp", "server_label": "far", "server_url": "http://192.0.2.1/mcp"}]}
    response = api.post("/api/v1/chat", json=body)
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("integrations", "mcp_host_not_allowed")
    assert "192.0.2.1:80" in error["message"] and "mcp_allowed_hosts" in error["message"]


@pytest.mark.parametrize(("name", "status", "error", "output"), [
    ("slow", "failed", {"type": "http_error", "code": 504, "message": TIMEOUT}, None),
    ("huge", "completed", None,
     "x" * 200 + f"\n[output cut: {HUGE_CHARS - 200:,} of {HUGE_CHARS:,} characters left out]"),
])
def test_responses_mcp_calls_keep_the_same_limits(api, name, status, error, output):
    tool = {"type": "mcp", "server_label": name, "allowed_tools": ["get_weather"], "require_approval": "never"}
    body = {"model": QWEN, "input": PARIS, "tools": [tool], "tool_choice": "required", "temperature": 0,
            "repeat_penalty": 1.0, "max_output_tokens": 40}
    response = api.post("/v1/responses", json=body)
    assert response.status_code == 200, response.text
    call = response.json()["output"][1]
    assert (call["type"], call["status"], call["error"], call["output"]) == ("mcp_call", status, error, output)
