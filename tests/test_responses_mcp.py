"""OpenAI's ``{"type": "mcp"}`` tools on ``/v1/responses`` end to end, with the openai client, against
Qwen2.5-Coder-0.5B-Instruct (greedy) and the small MCP server of tests/mcp_server.py on loopback:
the server lists the tools, runs the model's calls and goes on to the answer; ``require_approval``
ends a response with an ``mcp_approval_request`` that a later request approves or refuses.

The 0.5B calls a tool again after each result when asked cold (tests/test_qwen_tools.py); an example
turn in the input, itself made of MCP items sent back (a listed server, an ``mcp_call`` and the
answer it led to), makes it answer from the result instead. ``tool_choice`` "required" forces the
first round's call.
"""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from mcp import MCPError

from studiolo.api.responses.schemas import ResponseBody
from studiolo.models.defaults import QWEN05, target_path
from studiolo.service.items import chat_messages
from tests.conftest import QWEN, SMOLLM, RunningServer, free_port, home_with_models
from tests.mcp_server import WEATHER_TOOL, McpServer

PARIS = "What is the weather like in Paris today?"
NO_PENALTY = {"repeat_penalty": 1.0}
LISTED_TOOL = {"name": "get_weather", "description": "Get the current weather in a city",
               "input_schema": WEATHER_TOOL.input_schema, "annotations": None}
ANSWER = "It is 18 C and light rain in Paris."


def _example(label: str = "weather") -> list[dict]:
    """An earlier exchange that answers from its tool's result, as items a client sends back."""
    return [
        {"type": "mcp_list_tools", "id": "mcpl_example", "server_label": label, "tools": [LISTED_TOOL]},
        {"role": "user", "content": "What is the weather like in Rome today?"},
        {"type": "mcp_call", "id": "mcp_example", "server_label": label, "name": "get_weather",
         "arguments": '{"city": "Rome"}', "output": "24 C, sunny"},
        {"role": "assistant", "content": "It is 24 C and sunny in Rome."},
        {"role": "user", "content": PARIS},
    ]


@pytest.fixture(scope="module")
def qwen_home(tmp_path_factory, default_models):
    home = home_with_models(tmp_path_factory.mktemp("mcp-home"), {QWEN: target_path(QWEN05)})
    (home / "settings.json").write_text('{"allow_per_request_mcp": true}')
    return home


@pytest.fixture(scope="module")
def qwen_server(qwen_home):
    running = RunningServer(qwen_home, free_port(), [])
    yield running
    running.stop()


def _client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="not-needed", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def qwen(qwen_server):
    with _client(qwen_server) as client:
        yield client


@pytest.fixture
def mcp():
    server = McpServer()
    yield server
    server.close()


def _tool(mcp: McpServer, **extra) -> dict:
    return {"type": "mcp", "server_label": "weather", "server_url": mcp.url, "allowed_tools": ["get_weather"],
            "headers": {"x-api-key": "k1"}, **extra}


def _respond(client: openai.OpenAI, tools: list[dict], input_, **extra):
    return client.responses.create(**{"model": QWEN, "input": input_, "tools": tools, "temperature": 0,
                                      "max_output_tokens": 100, "extra_body": NO_PENALTY, **extra})


def _types(response) -> list[str]:
    return [item.type for item in response.output]


def test_the_server_runs_the_mcp_call_and_the_model_answers_from_its_result(qwen, mcp):
    response = _respond(qwen, [_tool(mcp, require_approval="never")], _example(), tool_choice="required")
    assert response.status == "completed"
    # the example already listed the server: it is not listed again
    assert _types(response) == ["mcp_call", "message"]
    call = response.output[0]
    assert (call.server_label, call.name, call.arguments, call.output, call.error, call.status) == (
        "weather", "get_weather", '{"city": "Paris"}', "18 C, light rain", None, "completed")
    assert call.approval_request_id is None
    assert response.output_text == ANSWER
    assert mcp.calls == [("get_weather", {"city": "Paris"})]
    assert all(headers.get("x-api-key") == "k1" for headers in mcp.headers_seen)
    # the rounds' usage together: two prompts, each longer than the example
    assert response.usage.input_tokens > 2 * 150 and response.usage.output_tokens > 10
    stored = qwen.responses.retrieve(response.id)
    assert [item.model_dump() for item in stored.output] == [item.model_dump() for item in response.output]
    assert stored.tools[0].headers is None  # the request's headers are not kept


def _calls(response) -> list[tuple[str, str]]:
    return [(item.status, item.arguments) for item in response.output if item.type == "mcp_call"]


def test_a_server_is_listed_first_once_per_conversation_and_the_budget_spans_the_rounds(qwen, mcp):
    tools = [_tool(mcp, require_approval="never")]
    first = _respond(qwen, tools, PARIS, tool_choice={"type": "mcp", "server_label": "weather", "name": "get_weather"},
                     max_output_tokens=50)
    listed = first.output[0]
    assert listed.type == "mcp_list_tools" and listed.server_label == "weather" and listed.error is None
    assert [tool.model_dump() for tool in listed.tools] == [LISTED_TOOL]  # allowed_tools only
    # asked cold, the 0.5B calls again after each result; 50 output tokens for all the rounds end the
    # third call as it is written (it is never run)
    paris = '{"city": "Paris"}'
    assert _calls(first) == [("completed", paris), ("completed", paris), ("incomplete", "")]
    assert first.status == "incomplete" and first.incomplete_details.reason == "max_output_tokens"
    assert first.usage.output_tokens == 50
    assert mcp.calls == [("get_weather", {"city": "Paris"})] * 2
    again = _respond(qwen, tools, "And in Tokyo?", previous_response_id=first.id, tool_choice="required",
                     max_output_tokens=50)
    tokyo = '{"city": "Tokyo"}'
    assert _types(again) == ["mcp_call"] * 3  # not listed again
    assert _calls(again) == [("completed", tokyo), ("completed", tokyo), ("incomplete", "")]
    assert qwen.responses.retrieve(first.id).tool_choice.type == "mcp"


def _stream(client: openai.OpenAI, tools: list[dict], input_, **extra) -> list:
    with _respond(client, tools, input_, stream=True, **extra) as events:
        return list(events)


def test_streamed_events_come_in_openais_order(qwen, mcp):
    events = _stream(qwen, [_tool(mcp, require_approval="never")], _example()[1:], tool_choice="required")
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[2:6] == ["response.output_item.added", "response.mcp_list_tools.in_progress",
                          "response.mcp_list_tools.completed", "response.output_item.done"]
    call = kinds[6:kinds.index("response.mcp_call.completed") + 2]
    assert call[:2] == ["response.output_item.added", "response.mcp_call.in_progress"]
    assert set(call[2:-3]) == {"response.mcp_call_arguments.delta"}
    assert call[-3:] == ["response.mcp_call_arguments.done", "response.mcp_call.completed",
                         "response.output_item.done"]
    assert kinds[-1] == "response.completed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    final = events[-1].response
    deltas = "".join(event.delta for event in events if event.type == "response.mcp_call_arguments.delta")
    assert deltas == final.output[1].arguments == '{"city": "Paris"}'
    done = [event.item for event in events if event.type == "response.output_item.done"]
    assert [item.model_dump() for item in done] == [item.model_dump() for item in final.output]
    assert [event.output_index for event in events if event.type == "response.output_item.added"] == list(
        range(len(final.output)))
    # the same request unstreamed gives the same output (ids apart)
    plain = _respond(qwen, [_tool(mcp, require_approval="never")], _example()[1:], tool_choice="required")
    assert [_without_ids(item) for item in plain.output] == [_without_ids(item) for item in final.output]


def _without_ids(item) -> dict:
    return {key: value for key, value in item.model_dump().items() if key != "id"}


def test_a_call_needing_approval_waits_for_it_across_a_restart(tmp_path, default_models, mcp):
    home = home_with_models(tmp_path, {QWEN: target_path(QWEN05)})  # its own: two servers never share one
    (home / "settings.json").write_text('{"allow_per_request_mcp": true}')
    tools = [_tool(mcp)]  # require_approval omitted: every call needs approval, as on OpenAI
    server = RunningServer(home, free_port(), [])
    try:
        with _client(server) as client:
            first = _respond(client, tools, _example(), tool_choice="required")
    finally:
        server.stop()
    assert first.status == "completed"
    assert _types(first) == ["mcp_approval_request"]
    request = first.output[0]
    assert (request.server_label, request.name, request.arguments) == ("weather", "get_weather", '{"city": "Paris"}')
    assert mcp.calls == []
    server = RunningServer(home, free_port(), [])  # the request was stored: it survives a restart
    try:
        with _client(server) as client:
            approval = {"type": "mcp_approval_response", "approval_request_id": request.id, "approve": True}
            second = _respond(client, tools, [approval], previous_response_id=first.id)
            listed = client.responses.input_items.list(second.id)
            with pytest.raises(openai.BadRequestError) as refused:  # answered already, in second's chain
                _respond(client, tools, [approval], previous_response_id=second.id)
    finally:
        server.stop()
    assert _types(second) == ["mcp_call", "message"]
    call = second.output[0]
    assert (call.approval_request_id, call.arguments, call.output) == (request.id, '{"city": "Paris"}',
                                                                       "18 C, light rain")
    assert second.output_text == ANSWER
    assert mcp.calls == [("get_weather", {"city": "Paris"})]
    assert [item.type for item in listed.data] == ["mcp_approval_response"]
    assert refused.value.body["param"] == "input[0].approval_request_id"


def test_the_approval_flow_streamed(qwen, mcp):
    tools = [_tool(mcp, require_approval={"always": {"tool_names": ["get_weather"]}})]
    asked = _stream(qwen, tools, _example()[1:], tool_choice="required")
    kinds = [event.type for event in asked]
    # the list, then the request shown whole once written (no events of its own), then the end
    assert kinds[2:] == ["response.output_item.added", "response.mcp_list_tools.in_progress",
                         "response.mcp_list_tools.completed", "response.output_item.done",
                         "response.output_item.added", "response.output_item.done", "response.completed"]
    request = asked[-1].response.output[1]
    assert request.type == "mcp_approval_request" and asked[-2].item.model_dump() == request.model_dump()
    assert mcp.calls == []
    approval = {"type": "mcp_approval_response", "approval_request_id": request.id, "approve": True}
    ran = _stream(qwen, tools, [approval], previous_response_id=asked[-1].response.id)
    kinds = [event.type for event in ran]
    # the approved call runs first, its arguments as one delta; then the model answers
    assert kinds[2:9] == ["response.output_item.added", "response.mcp_call.in_progress",
                          "response.mcp_call_arguments.delta", "response.mcp_call_arguments.done",
                          "response.mcp_call.completed", "response.output_item.done", "response.output_item.added"]
    assert ran[4].delta == '{"city": "Paris"}'
    final = ran[-1].response
    assert _types(final) == ["mcp_call", "message"] and final.output_text == ANSWER
    assert final.output[0].approval_request_id == request.id
    assert mcp.calls == [("get_weather", {"city": "Paris"})]


def test_a_refused_call_is_not_run_and_the_model_is_told(qwen, qwen_server, mcp):
    tools = [_tool(mcp)]
    first = _respond(qwen, tools, _example(), tool_choice="required")
    request = first.output[0]
    refusal = {"type": "mcp_approval_response", "approval_request_id": request.id, "approve": False,
               "reason": "not now"}
    log = _PromptLog(qwen_server.base_url)
    try:
        second = _respond(qwen, tools, [refusal], previous_response_id=first.id, tool_choice="none",
                          max_output_tokens=30)
        log.wait_for(1)
    finally:
        log.close()
    assert mcp.calls == []
    assert _types(second) == ["message"]
    assert log.prompts[-1].endswith("<|im_start|>user\n<tool_response>\nThe user did not approve this tool call. "
                                    "(not now)\n</tool_response><|im_end|>\n<|im_start|>assistant\n")


class _PromptLog:
    """The prompts the server formats, from its model log (as conftest.PromptLog), subscribed at once."""

    def __init__(self, base_url: str):
        self.prompts: list[str] = []
        self._client = httpx.Client(base_url=base_url, timeout=None)
        self._response = self._client.send(self._client.build_request("GET", "/studiolo/log/stream"), stream=True)
        self._lines = self._response.iter_lines()

    def wait_for(self, count: int) -> None:
        for line in self._lines:
            event = json.loads(line[6:]) if line.startswith("data: ") else {}
            if event.get("type") == "input":
                self.prompts.append(event["prompt"])
                if len(self.prompts) >= count:
                    return

    def close(self) -> None:
        self._response.close()
        self._client.close()


class _FailingServer(McpServer):
    """Its tool call fails with a JSON-RPC error."""

    async def _call_tool(self, ctx, params):
        self.calls.append((params.name, params.arguments or {}))
        raise MCPError(code=-32001, message="the weather service is down")


def test_a_failing_call_is_an_mcp_call_with_its_error_which_the_model_reads(qwen):
    server = _FailingServer()
    try:
        response = _respond(qwen, [_tool(server, require_approval="never")], _example(), tool_choice="required",
                            max_output_tokens=40)
    finally:
        server.close()
    assert _types(response) == ["mcp_call", "message"]
    call = response.output[0]
    assert (call.status, call.arguments, call.output) == ("failed", '{"city": "Paris"}', None)
    assert call.error.model_dump() == {
        "type": "mcp_protocol_error", "code": -32001,
        "message": "MCP server 'weather' refused tools/call get_weather: the weather service is down"}
    assert server.calls == [("get_weather", {"city": "Paris"})]
    # the model read the error (cut short by the 40 tokens)
    assert response.output_text.startswith("It seems like the MCP server 'weather' refused the tool call")
    assert response.status == "incomplete"


def test_function_tools_beside_mcp_tools_end_the_response_for_the_client(qwen, mcp):
    clock = {"type": "function", "name": "get_time", "description": "Get the current local time in a city",
             "parameters": WEATHER_TOOL.input_schema}
    response = _respond(qwen, [_tool(mcp, require_approval="never"), clock], "Tell me about Rome.",
                        tool_choice={"type": "function", "name": "get_time"})
    assert _types(response) == ["mcp_list_tools", "function_call"]
    assert (response.output[1].name, response.output[1].arguments) == ("get_time", '{"city": "Rome"}')
    assert mcp.calls == []


def test_a_server_that_cannot_list_is_a_424(qwen):
    gone = {"type": "mcp", "server_label": "gone", "server_url": f"http://127.0.0.1:{free_port()}/mcp"}
    with pytest.raises(openai.APIStatusError) as failed:
        _respond(qwen, [gone], PARIS)
    assert failed.value.status_code == 424
    error = failed.value.body
    assert (error["type"], error["param"]) == ("external_connector_error", "tools[0]")
    assert error["message"].startswith("Error retrieving tool list from MCP server: 'gone'.")


@pytest.mark.parametrize(("tool", "param"), [
    ({"type": "mcp", "server_label": "w", "server_url": "file:///etc/passwd"}, "tools[0].server_url"),
    ({"type": "mcp", "server_url": "http://127.0.0.1:1/mcp"}, "tools[0].server_label"),
    ({"type": "mcp", "server_label": "w", "server_url": "http://127.0.0.1:1/mcp",
      "allowed_tools": {"read_only": True}}, "tools[0].allowed_tools.read_only"),
    ({"type": "web_search"}, "tools[0].type"),
])
def test_mcp_tools_it_cannot_serve_are_a_400(qwen, tool, param):
    with pytest.raises(openai.BadRequestError) as refused:
        _respond(qwen, [tool], PARIS)
    assert refused.value.body["param"] == param


def test_an_unknown_model_is_refused_before_any_server_is_reached(qwen, mcp):
    with pytest.raises(openai.NotFoundError):
        qwen.responses.create(model="no-such-model", input=PARIS, tools=[_tool(mcp)])
    assert mcp.headers_seen == []


def test_approving_a_request_not_made_is_a_400(qwen, mcp):
    approval = {"type": "mcp_approval_response", "approval_request_id": "mcpr_nope", "approve": True}
    with pytest.raises(openai.BadRequestError) as refused:
        _respond(qwen, [_tool(mcp)], [{"role": "user", "content": PARIS}, approval])
    assert refused.value.body["param"] == "input[1].approval_request_id"
    assert mcp.calls == []


def test_mcp_tools_are_refused_unless_the_settings_allow_them(client, mcp):
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.responses.create(model=SMOLLM, input=PARIS, tools=[_tool(mcp)])
    assert refused.value.body["param"] == "tools[0]"
    assert mcp.headers_seen == []


def test_a_client_that_leaves_ends_the_servers_sessions(qwen_server, mcp):
    body = {"model": QWEN, "input": PARIS, "tools": [_tool(mcp, require_approval="never")], "stream": True,
            "tool_choice": "required", "temperature": 0, "max_output_tokens": 200, **NO_PENALTY}
    with httpx.Client(base_url=qwen_server.base_url, timeout=60) as http:
        with http.stream("POST", "/v1/responses", json=body) as response:
            for line in response.iter_lines():
                event = json.loads(line[6:]) if line.startswith("data: ") else {}
                if event.get("type") == "response.created":
                    response_id = event["response"]["id"]
                if event.get("type") == "response.mcp_call.in_progress":
                    break  # the client leaves while the model writes the call
        deadline = time.monotonic() + 10
        while "DELETE" not in mcp.methods_seen and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "DELETE" in mcp.methods_seen
        calls = len(mcp.calls)
        time.sleep(1)
        assert len(mcp.calls) == calls <= 1  # no round after it left
        assert http.get(f"/v1/responses/{response_id}").status_code == 404  # nothing stored


# --- without a model: the approval rules, and what the model sees of MCP items ------------------------


@pytest.mark.parametrize(("require_approval", "needs"), [
    (None, {"a": True, "b": True}),  # OpenAI's default: every call
    ("never", {"a": False, "b": False}),
    ({"never": {"tool_names": ["a"]}}, {"a": False, "b": True}),
    ({"always": {"tool_names": ["a"]}}, {"a": True, "b": False}),
    ({"always": {"tool_names": ["a"]}, "never": {"tool_names": ["b"]}}, {"a": True, "b": False, "c": True}),
])
def test_require_approval_says_which_calls_wait(require_approval, needs):
    tool = {"type": "mcp", "server_label": "s", "server_url": "http://127.0.0.1:1/mcp"}
    if require_approval is not None:
        tool["require_approval"] = require_approval
    body = ResponseBody.model_validate({"model": QWEN, "input": "x", "tools": [tool]})
    policy = body.mcp_tools()[0].approval
    assert {name: policy.needed(name) for name in needs} == needs


def test_the_model_sees_mcp_items_as_function_calls_and_results():
    call = {"server_label": "s", "name": "get_weather", "arguments": '{"city": "Paris"}'}
    items = [
        {"type": "mcp_list_tools", "id": "mcpl_1", "server_label": "s", "tools": []},
        {"type": "mcp_call", "id": "mcp_1", **call, "output": "18 C", "error": None},
        {"type": "mcp_approval_request", "id": "mcpr_2", **call},
        {"type": "mcp_approval_response", "approval_request_id": "mcpr_2", "approve": True},
        {"type": "mcp_call", "id": "mcp_2", **call, "approval_request_id": "mcpr_2", "output": "19 C"},
        {"type": "mcp_approval_request", "id": "mcpr_3", **call},
        {"type": "mcp_approval_response", "approval_request_id": "mcpr_3", "approve": False, "reason": "no"},
        {"type": "mcp_call", "id": "mcp_4", **call, "output": None,
         "error": {"type": "http_error", "code": 502, "message": "gone"}},
    ]
    seen = [(m.role, [(c.id, c.name) for c in m.tool_calls], m.tool_call_id, m.content) for m in chat_messages(items)]
    assert seen == [
        ("assistant", [("mcp_1", "get_weather")], None, None), ("tool", [], "mcp_1", "18 C"),
        ("assistant", [("mcpr_2", "get_weather")], None, None), ("tool", [], "mcpr_2", "19 C"),
        ("assistant", [("mcpr_3", "get_weather")], None, None),
        ("tool", [], "mcpr_3", "The user did not approve this tool call. (no)"),
        ("assistant", [("mcp_4", "get_weather")], None, None), ("tool", [], "mcp_4", "The tool call failed: gone"),
    ]
