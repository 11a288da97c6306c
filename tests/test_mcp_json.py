"""mcp.json's servers on LM Studio's ``/api/v1/chat``, end to end: a real server (with auth, as
``allow_mcp_json`` needs) runs tests/mcp_stdio_server.py from ``STUDIOLO_HOME/mcp.json`` for
``"mcp/<name>"`` and ``{"type": "plugin"}`` integrations, and Qwen2.5-Coder-0.5B (greedy) calls its
tool, as with the remote server of test_qwen_tools.py: the same tool, the same schema, the same
result, so the same rounds (the 0.5B calls again after each result, up to the cap).

Also: the settings that refuse (off; on without auth; an unknown name; a malformed file, edited
while the server runs), one process for many requests, and none left when the server stops."""

from __future__ import annotations

import json

import httpx
import pytest

from studiolo.models.defaults import QWEN05, target_path
from tests.conftest import QWEN, SMOLLM, RunningServer, free_port, home_with_models
from tests.mcp_stdio_home import (
    AuthServer,
    events,
    make_token,
    runs,
    started_pids,
    stdio_entry,
    wait_until,
    write_mcp_json,
)

MAX_ROUNDS = 3  # the settings' mcp_max_rounds (8 by default): rounds that may call; the one after answers
PARIS = "What is the weather like in Paris today?"
PLUGIN = {"type": "plugin", "plugin_id": "mcp/weather"}
WEATHER_CALL = {"type": "tool_call", "tool": "get_weather", "arguments": {"city": "Paris"},
                "output": "18 C, light rain", "provider_info": PLUGIN}
WEATHER_ONLY = {"type": "plugin", "id": "mcp/weather", "allowed_tools": ["get_weather"]}


@pytest.fixture(scope="module")
def home(tmp_path_factory, default_models):
    home = home_with_models(tmp_path_factory.mktemp("mcp-json-home"),
                            {QWEN: target_path(QWEN05), SMOLLM: default_models[SMOLLM]})
    (home / "settings.json").write_text(json.dumps({"allow_mcp_json": True, "limits": {"mcp_max_rounds": MAX_ROUNDS}}))
    write_mcp_json(home, {"weather": stdio_entry(home / "weather-events")})
    return home


@pytest.fixture(scope="module")
def server(home):
    running = AuthServer(home, free_port(), ["--require-auth"])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def api(server, home):
    headers = {"Authorization": f"Bearer {make_token(home)}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=300) as client:
        yield client


def _chat(integrations: list, **extra) -> dict:
    return {"model": QWEN, "input": PARIS, "integrations": integrations, "temperature": 0, "repeat_penalty": 1.0,
            "max_output_tokens": 60, **extra}


def _events(api: httpx.Client, body: dict) -> list[tuple[str, dict]]:
    found, kind = [], None
    with api.stream("POST", "/api/v1/chat", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                found.append((kind, json.loads(line[6:])))
    return found


def test_a_plugin_integration_runs_the_stdio_servers_tools(api, home):
    response = api.post("/api/v1/chat", json=_chat([WEATHER_ONLY]))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["output"][:MAX_ROUNDS] == [WEATHER_CALL] * MAX_ROUNDS
    assert [item["type"] for item in body["output"][MAX_ROUNDS:]] == ["message"]
    calls = [line for line in events(home / "weather-events") if line.startswith("call ")]
    assert calls[-MAX_ROUNDS:] == ['call get_weather {"city": "Paris"}'] * MAX_ROUNDS
    # the turn is stored with its calls, and a continuation gives them to the model again
    stored = api.get(f"/v1/responses/{body['response_id']}").json()
    called = [item["name"] for item in stored["output"] if item["type"] == "function_call"]
    assert called == ["get_weather"] * MAX_ROUNDS
    more = api.post("/api/v1/chat", json={"model": QWEN, "input": "Thanks!", "temperature": 0,
                                          "max_output_tokens": 8, "previous_response_id": body["response_id"]})
    assert more.status_code == 200, more.text
    # the last round's prompt held all its calls and results: the continuation's holds them and more
    assert more.json()["stats"]["input_tokens"] > body["stats"]["input_tokens"]


def test_the_shorthand_offers_all_its_tools_and_streams_the_calls(api, home):
    streamed = _events(api, _chat(["mcp/weather"]))
    calls = [data for kind, data in streamed if kind.startswith("tool_call.")]
    assert calls[:3] == [
        {"type": "tool_call.start", "tool": "get_weather", "provider_info": PLUGIN},
        {"type": "tool_call.arguments", "tool": "get_weather", "arguments": {"city": "Paris"}, "provider_info": PLUGIN},
        {"type": "tool_call.success", "tool": "get_weather", "arguments": {"city": "Paris"},
         "output": "18 C, light rain", "provider_info": PLUGIN}]
    assert streamed[-1][0] == "chat.end"
    result = streamed[-1][1]["result"]
    assert [item["type"] for item in result["output"]][-1] == "message"
    assert all(item["provider_info"] == PLUGIN for item in result["output"] if item["type"] == "tool_call")


def test_one_process_serves_every_request(api, home):
    for _ in range(2):
        response = api.post("/api/v1/chat", json=_chat([WEATHER_ONLY], model=SMOLLM, max_output_tokens=4))
        assert response.status_code == 200, response.text
    [pid] = started_pids(home / "weather-events")
    assert runs(pid)


def test_a_responses_mcp_tool_named_by_its_label_alone_is_the_mcp_json_server(api, home):
    tool = {"type": "mcp", "server_label": "weather", "allowed_tools": ["get_weather"], "require_approval": "never"}
    body = {"model": QWEN, "input": PARIS, "tools": [tool], "tool_choice": "required", "temperature": 0,
            "repeat_penalty": 1.0, "max_output_tokens": 40}
    response = api.post("/v1/responses", json=body)
    assert response.status_code == 200, response.text
    listed, call = response.json()["output"][:2]
    assert (listed["type"], listed["server_label"], [t["name"] for t in listed["tools"]]) == (
        "mcp_list_tools", "weather", ["get_weather"])
    assert (call["type"], call["name"], call["arguments"], call["output"], call["status"]) == (
        "mcp_call", "get_weather", '{"city": "Paris"}', "18 C, light rain", "completed")
    assert len(started_pids(home / "weather-events")) == 1  # the process /api/v1/chat's plugins use


@pytest.mark.parametrize(("tool", "status", "param"), [
    ({"type": "mcp", "server_label": "nope"}, 400, "tools[0]"),
    ({"type": "mcp", "server_label": "weather", "headers": {"x": "1"}}, 400, "tools[0].headers"),  # mcp.json's own
    ({"type": "mcp", "server_label": "w", "server_url": "http://127.0.0.1:9/mcp"}, 403, "tools[0]"),  # not allowed here
])
def test_responses_mcp_tools_refused_name_their_field(api, tool, status, param):
    response = api.post("/v1/responses", json={"model": SMOLLM, "input": "Hi", "tools": [tool]})
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


def test_an_unknown_server_is_a_400_naming_integrations(api):
    for integration in ("mcp/nope", {"type": "plugin", "id": "mcp/nope"}):
        response = api.post("/api/v1/chat", json=_chat([integration], model=SMOLLM))
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "integrations" and "mcp/weather" in error["message"]


@pytest.mark.parametrize(("integration", "param"), [
    ("playwright", "integrations[0]"),  # a plugin id is mcp/<name>
    ({"type": "plugin"}, "integrations[0].id"),
    ({"type": "plugin", "id": "mcp/weather", "allowed_tools": "get_weather"}, "integrations[0].allowed_tools"),
    ({"type": "plugin", "id": "mcp/weather", "headers": {}}, "integrations[0]"),  # headers are ephemeral_mcp's
])
def test_malformed_plugin_integrations_are_a_400(api, integration, param):
    response = api.post("/api/v1/chat", json=_chat([integration], model=SMOLLM))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_an_edited_mcp_json_applies_to_the_next_request_and_a_broken_one_says_where(api, home):
    good = (home / "mcp.json").read_text()
    try:
        (home / "mcp.json").write_text('{"mcpServers": {"weather": {"command": "x", "url": "http://127.0.0.1/"}}}')
        response = api.post("/api/v1/chat", json=_chat([WEATHER_ONLY], model=SMOLLM))
        assert response.status_code == 500, response.text
        error = response.json()["error"]
        assert error["param"] == "integrations" and error["code"] == "mcp_json_invalid"
        assert "mcp.json, server 'weather'" in error["message"]
    finally:
        (home / "mcp.json").write_text(good)
    assert api.post("/api/v1/chat", json=_chat([WEATHER_ONLY], model=SMOLLM, max_output_tokens=4)).status_code == 200


def test_no_stdio_server_is_left_when_the_server_stops(tmp_path):
    home = tmp_path
    (home / "settings.json").write_text('{"allow_mcp_json": true}')
    # a server that outlives its stdin: closing its pipes is not enough, a signal must end it
    write_mcp_json(home, {"weather": stdio_entry(home / "events", LINGER="1")})
    running = AuthServer(home, free_port(), ["--require-auth"])
    try:
        headers = {"Authorization": f"Bearer {make_token(home)}"}
        # no model here: the server is started (and listed) before the model is looked up
        response = httpx.post(f"{running.base_url}/api/v1/chat", headers=headers, timeout=60,
                              json={"model": "no/such-model", "input": "Hi", "integrations": ["mcp/weather"]})
        assert response.status_code == 404
        [pid] = started_pids(home / "events")
        assert runs(pid)
    finally:
        running.stop()
    assert wait_until(lambda: not runs(pid))
    assert "lingering" in events(home / "events")  # it did not end by itself


# --- refused by the settings (no model needed: refusals come first) -----------------------------------


@pytest.mark.parametrize(("settings", "code", "said"), [
    ({}, "mcp_not_allowed", "allow_mcp_json"),
    ({"allow_mcp_json": True}, "mcp_json_needs_auth", "require_auth"),  # LM Studio: only with auth on
])
def test_mcp_json_servers_are_refused_unless_allowed_with_auth(tmp_path, settings, code, said):
    (tmp_path / "settings.json").write_text(json.dumps(settings))
    write_mcp_json(tmp_path, {"weather": stdio_entry(tmp_path / "events")})
    running = RunningServer(tmp_path, free_port(), [])
    try:
        for integration in ("mcp/weather", WEATHER_ONLY, "mcp/nope"):
            response = httpx.post(f"{running.base_url}/api/v1/chat", timeout=60,
                                  json={"model": SMOLLM, "input": "Hi", "integrations": [integration]})
            assert response.status_code == 403, response.text
            error = response.json()["error"]
            assert (error["param"], error["code"]) == ("integrations", code) and said in error["message"]
    finally:
        running.stop()
    assert events(tmp_path / "events") == []  # nothing was started
