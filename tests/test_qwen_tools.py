"""Native tool calls end to end on Qwen2.5-Coder-0.5B-Instruct, whose template speaks the Hermes/Qwen
format (``<tools>`` in the system prompt, calls in ``<tool_call>``, results in ``<tool_response>``),
through the openai client's chat completions and the Responses API's function calls.

What the 0.5B does, measured (greedy): it writes ``<tool_call>`` as text (it gives the special token
of that name a logprob near -24); under ``auto`` it usually forgets the tags and writes one call as a
```json fence or a bare object, which ``auto`` takes as a call under the grammar (docs/API.md, "Tool
calling"); it makes two calls in one reply only under ``required``; and it answers from a tool's
result only after an example turn that does (asked cold, it repeats its call).
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import mcp_types
import openai
import pytest

from studiolo.chat.tool_formats import HERMES, output_syntax
from studiolo.chat.tool_parser import CallArguments, CallStart, Text, ToolCallParser
from studiolo.config import RequestLimits
from studiolo.domain.chat import Tools, ToolSpec
from studiolo.models.defaults import QWEN05, target_path
from tests.conftest import GEMMA, QWEN, SMOLLM, RunningServer, free_port, hang_up, home_with_models
from tests.mcp_server import McpServer

PARAMETERS = {"type": "object", "properties": {"city": {"type": "string", "description": "The city name"}},
              "required": ["city"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city",
                                            "parameters": PARAMETERS}}
CLOCK = {"type": "function", "function": {"name": "get_time", "description": "Get the current local time in a city",
                                          "parameters": PARAMETERS}}
NAMED_CLOCK = {"type": "function", "function": {"name": "get_time"}}
FLAT_WEATHER = {"type": "function", **WEATHER["function"]}  # the Responses API's tools are flat
FLAT_CLOCK = {"type": "function", **CLOCK["function"]}
PARIS = "What is the weather like in Paris today?"
TWO_CITIES = "What's the weather in Paris and in Tokyo?"
NO_PENALTY = {"repeat_penalty": 1.0}
MAX_ROUNDS = 2  # the settings' mcp_max_rounds: rounds of a turn that may call; the one after answers
GREEDY = {"temperature": 0, "max_tokens": 120, "extra_body": NO_PENALTY}

# the template's own system prompt with the tools block (single braces: the doubled-brace quirk is
# only in the 1.5B's template)
TOOLS_PROMPT = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n# Tools\n\n"
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    + json.dumps(WEATHER) + "\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
)

# one earlier turn that answers from its tool's result: the 0.5B then does the same
EXAMPLE_TURN = [
    {"role": "user", "content": "What is the weather like in Rome today?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "24 C, sunny"},
    {"role": "assistant", "content": "It is 24 C and sunny in Rome."},
]


@pytest.fixture(scope="module")
def qwen_server(tmp_path_factory, default_models):
    models = {QWEN: target_path(QWEN05), SMOLLM: default_models[SMOLLM], GEMMA: default_models[GEMMA]}
    home = home_with_models(tmp_path_factory.mktemp("qwen-home"), models)
    # per-request MCP servers for /api/v1/chat's integrations; fewer rounds than the default 8 (the
    # 0.5B calls again in each: every round is a Qwen prefill and call, about 1.2 s on 2 cores)
    settings = {"allow_per_request_mcp": True, "limits": {"mcp_max_rounds": MAX_ROUNDS}}
    (home / "settings.json").write_text(json.dumps(settings))
    running = RunningServer(home, free_port(), [])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def qwen(qwen_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{qwen_server.base_url}/v1", api_key="not-needed", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def qhttp(qwen_server):
    with httpx.Client(base_url=qwen_server.base_url, timeout=300) as session:
        yield session


def _ask(client: openai.OpenAI, content: str | list, **extra):
    messages = [{"role": "user", "content": content}] if isinstance(content, str) else content
    body = {"model": QWEN, "messages": messages, "tools": [WEATHER, CLOCK], **GREEDY, **extra}
    return client.chat.completions.create(**body).choices[0]


def _calls(choice) -> list[tuple[str, str]]:
    return [(call.function.name, call.function.arguments) for call in choice.message.tool_calls or []]


# --- what the models report ---------------------------------------------------------------------


def test_models_report_tool_use_read_from_their_templates(qhttp):
    v0 = {model["id"]: model["capabilities"] for model in qhttp.get("/api/v0/models").json()["data"]}
    assert (v0[QWEN], v0[SMOLLM], v0[GEMMA]) == (["tool_use", "decisions"], ["decisions"], ["decisions"])
    v1 = {model["key"]: model["capabilities"] for model in qhttp.get("/api/v1/models").json()["models"]}
    assert [v1[key]["trained_for_tool_use"] for key in (QWEN, SMOLLM, GEMMA)] == [True, False, False]


# --- the prompt -------------------------------------------------------------------------------------


def _echoed_prompt(client: openai.OpenAI, messages: list, tools: list) -> str:
    choice = client.chat.completions.create(model=QWEN, messages=messages, tools=tools, tool_choice="required",
                                            max_tokens=1, temperature=0, extra_body={"echo": True})
    return choice.choices[0].message.content or ""


def test_the_template_renders_the_tools_block(qwen):
    prompt = _echoed_prompt(qwen, [{"role": "user", "content": PARIS}], [WEATHER])
    assert prompt.startswith(TOOLS_PROMPT + f"<|im_start|>user\n{PARIS}<|im_end|>\n<|im_start|>assistant\n")
    assert "{{" not in prompt


def test_calls_and_results_go_back_as_tool_call_and_tool_response(qwen):
    prompt = _echoed_prompt(qwen, EXAMPLE_TURN[:3], [WEATHER])
    assert prompt.startswith(TOOLS_PROMPT + (
        "<|im_start|>user\nWhat is the weather like in Rome today?<|im_end|>\n<|im_start|>assistant\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n24 C, sunny\n</tool_response><|im_end|>\n<|im_start|>assistant\n"))


# --- chat completions ---------------------------------------------------------------------------


def test_auto_calls_the_tool_the_question_needs(qwen):
    choice = _ask(qwen, PARIS)
    assert (choice.finish_reason, choice.message.content) == ("tool_calls", None)
    assert _calls(choice) == [("get_weather", '{"city": "Paris"}')]


def test_auto_answers_in_text_when_no_tool_is_needed(qwen):
    choice = _ask(qwen, "Hello! Who are you?")
    assert (choice.finish_reason, _calls(choice)) == ("stop", [])
    assert choice.message.content == "Hello! I'm Qwen, an AI language model created by Alibaba Cloud. " \
                                     "How can I assist you today?"


class _ModelLog:
    """The prompts and texts the model got and wrote, read from the server's model log
    (/studiolo/log/stream)."""

    def __init__(self, base_url: str):
        self.prompts: list[str] = []
        self.outputs: list[str] = []
        self._client = httpx.Client(base_url=base_url, timeout=None)
        self.ready = threading.Event()
        self._response: httpx.Response | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            with self._client.stream("GET", "/studiolo/log/stream") as response:
                self._response = response
                self.ready.set()
                for line in response.iter_lines():
                    event = json.loads(line[6:]) if line.startswith("data: ") else {}
                    if event.get("type") == "output":
                        self.outputs.append(event["text"])
                    elif event.get("type") == "input":
                        self.prompts.append(event["prompt"])
        except httpx.HTTPError:
            pass  # closed

    def close(self) -> None:
        hang_up(self._response)
        self._client.close()


def _subscribed(log: _ModelLog, client: openai.OpenAI) -> None:
    assert log.ready.wait(10)
    for _ in range(50):  # the log has its subscriber once a probe's output shows up
        _ask(client, "Hi", tool_choice="none", max_tokens=1)
        if log.outputs:
            return


def test_auto_takes_a_fenced_json_call_as_a_call(qwen, qwen_server):
    log = _ModelLog(qwen_server.base_url)
    try:
        _subscribed(log, qwen)
        # counted before the request: its output may be logged before the reply reaches us, and a
        # count taken after would wait out _wait_for_output's 10 s for an output that never comes
        before = len(log.outputs)
        choice = _ask(qwen, TWO_CITIES)
        written = _wait_for_output(log, before + 1)
    finally:
        log.close()
    assert written.startswith('```json\n{"name": "get_weather"'), written  # what the model wrote: a fence
    assert (choice.finish_reason, choice.message.content) == ("tool_calls", None)
    assert _calls(choice) == [("get_weather", '{"city": "Paris"}')]


def _wait_for_output(log: _ModelLog, count: int) -> str:
    deadline = time.monotonic() + 10
    while len(log.outputs) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return log.outputs[-1]


def test_required_makes_parallel_calls_for_two_cities(qwen):
    choice = _ask(qwen, TWO_CITIES, tool_choice="required")
    assert (choice.finish_reason, choice.message.content) == ("tool_calls", None)
    assert _calls(choice) == [("get_weather", '{"city": "Paris"}'), ("get_weather", '{"city": "Tokyo"}')]
    ids = [call.id for call in choice.message.tool_calls]
    assert len(set(ids)) == 2 and all(len(call_id) == 9 and call_id.isalnum() for call_id in ids)


def test_a_named_tool_is_called(qwen):
    choice = _ask(qwen, "Tell me about Rome.", tool_choice=NAMED_CLOCK)
    assert (choice.finish_reason, _calls(choice)) == ("tool_calls", [("get_time", '{"city": "Rome"}')])


def _streamed(client: openai.OpenAI, content: str, **extra) -> tuple[str | None, list[tuple[str, str]], str, int]:
    """Content, calls (name, joined arguments), finish_reason, and how many argument fragments came."""
    stream = client.chat.completions.create(model=QWEN, messages=[{"role": "user", "content": content}],
                                            tools=[WEATHER, CLOCK], stream=True, **GREEDY, **extra)
    texts, calls, reason, fragments = [], {}, "", 0
    for chunk in stream:
        choice = chunk.choices[0]
        texts.append(choice.delta.content or "")
        for piece in choice.delta.tool_calls or []:
            if piece.id is not None:
                calls[piece.index] = [piece.function.name, ""]
            if piece.function.arguments:
                calls[piece.index][1] += piece.function.arguments
                fragments += 1
        reason = choice.finish_reason or reason
    return "".join(texts) or None, [tuple(calls[i]) for i in sorted(calls)], reason, fragments


@pytest.mark.parametrize(("content", "extra"), [
    (PARIS, {}), (TWO_CITIES, {}), (TWO_CITIES, {"tool_choice": "required"}),
    ("Tell me about Rome.", {"tool_choice": NAMED_CLOCK}),
], ids=["auto", "auto-fenced", "required-parallel", "named"])
def test_streamed_arguments_reassemble_exactly_to_the_whole_answer(qwen, content, extra):
    # greedy runs may part at a near-tie when the machine is busy (tests/batching.py): a pair that
    # parted is run once more before judging; a reassembly bug parts them every time
    for _ in range(2):
        whole = _ask(qwen, content, **extra)
        streamed = _streamed(qwen, content, **extra)
        if streamed[:3] == (whole.message.content, _calls(whole), whole.finish_reason):
            break
    assert streamed[:3] == (whole.message.content, _calls(whole), whole.finish_reason)
    assert streamed[3] > len(streamed[1])  # the arguments came in several fragments per call


def test_a_round_trip_answers_from_the_tool_result(qwen):
    messages = [*EXAMPLE_TURN, {"role": "user", "content": PARIS}]
    first = _ask(qwen, messages, tool_choice="required")
    assert _calls(first) == [("get_weather", '{"city": "Paris"}')]
    call = first.message.tool_calls[0]
    messages += [first.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "18 C, light rain"}]
    final = _ask(qwen, messages)  # auto: the model chooses to answer now
    assert (final.finish_reason, _calls(final)) == ("stop", [])
    assert final.message.content == "It is 18 C and light rain in Paris."


# --- the Responses API --------------------------------------------------------------------------


def _respond(client: openai.OpenAI, input_, **extra):
    return client.responses.create(model=QWEN, input=input_, tools=[FLAT_WEATHER, FLAT_CLOCK], temperature=0,
                                   max_output_tokens=120, extra_body=NO_PENALTY, **extra)


def _function_calls(response) -> list[tuple[str, str]]:
    assert {item.type for item in response.output} == {"function_call"}, response.output
    return [(item.name, item.arguments) for item in response.output]


@pytest.mark.parametrize(("content", "choice", "expected"), [
    (PARIS, "auto", [("get_weather", '{"city": "Paris"}')]),
    (TWO_CITIES, "auto", [("get_weather", '{"city": "Paris"}')]),
    (TWO_CITIES, "required", [("get_weather", '{"city": "Paris"}'), ("get_weather", '{"city": "Tokyo"}')]),
    ("Tell me about Rome.", {"type": "function", "name": "get_time"}, [("get_time", '{"city": "Rome"}')]),
], ids=["auto", "auto-fenced", "required-parallel", "named"])
def test_responses_function_calls(qwen, content, choice, expected):
    response = _respond(qwen, content, tool_choice=choice)
    assert response.status == "completed"
    assert _function_calls(response) == expected
    assert len({item.call_id for item in response.output}) == len(expected)


def test_responses_streamed_arguments_reassemble_to_the_whole_answer(qwen):
    for _ in range(2):  # as in the chat completions test above: a pair that parted runs once more
        whole = _function_calls(_respond(qwen, TWO_CITIES, tool_choice="required"))
        names, arguments, done = {}, {}, {}
        for event in _respond(qwen, TWO_CITIES, tool_choice="required", stream=True):
            if event.type == "response.output_item.added":
                names[event.output_index] = event.item.name
            elif event.type == "response.function_call_arguments.delta":
                arguments[event.output_index] = arguments.get(event.output_index, "") + event.delta
            elif event.type == "response.function_call_arguments.done":
                done[event.output_index] = event.arguments
        streamed = [(names[i], arguments[i]) for i in sorted(names)]
        if streamed == whole:
            break
    assert streamed == whole
    assert [done[i] for i in sorted(done)] == [text for _, text in whole]


def test_responses_round_trip_answers_from_the_function_output(qwen):
    example = [
        {"role": "user", "content": "What is the weather like in Rome today?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Rome"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "24 C, sunny"},
        {"role": "assistant", "content": "It is 24 C and sunny in Rome."},
        {"role": "user", "content": PARIS},
    ]
    first = _respond(qwen, example, tool_choice="required")
    assert _function_calls(first) == [("get_weather", '{"city": "Paris"}')]
    result = {"type": "function_call_output", "call_id": first.output[0].call_id, "output": "18 C, light rain"}
    final = _respond(qwen, [result], previous_response_id=first.id)
    assert [item.type for item in final.output] == ["message"]
    assert final.output_text == "It is 18 C and light rain in Paris."


# --- LM Studio's /api/v1/chat: tools come from MCP servers, which the server calls -------------------



@pytest.fixture
def mcp():
    server = McpServer()
    yield server
    server.close()


def _integrations(mcp: McpServer) -> list[dict]:
    return [{"type": "ephemeral_mcp", "server_label": "weather", "server_url": mcp.url,
             "allowed_tools": ["get_weather"], "headers": {"x-api-key": "k1"}}]


def _v1_chat(mcp: McpServer, **extra) -> dict:
    return {"model": QWEN, "input": PARIS, "integrations": _integrations(mcp), "temperature": 0,
            "repeat_penalty": 1.0, "max_output_tokens": 60, **extra}


WEATHER_CALL = {"type": "tool_call", "tool": "get_weather", "arguments": {"city": "Paris"},
                "output": "18 C, light rain", "provider_info": {"type": "ephemeral_mcp", "server_label": "weather"}}


def test_the_default_mcp_rounds_are_eight():
    """The server here sets mcp_max_rounds; the default, which docs/API.md states, is 8."""
    assert RequestLimits().mcp_max_rounds == 8


def test_v1_chat_runs_the_mcp_tools_the_model_calls(qhttp, qwen, qwen_server, mcp):
    log = _ModelLog(qwen_server.base_url)
    try:
        _subscribed(log, qwen)
        before = len(log.prompts)
        response = qhttp.post("/api/v1/chat", json=_v1_chat(mcp))
    finally:
        log.close()
    assert response.status_code == 200, response.text
    body = response.json()
    # the 0.5B calls again after each result (as on chat completions without an example turn):
    # the turn stops offering tools after MAX_ROUNDS rounds that called, and the model answers
    assert body["output"][:MAX_ROUNDS] == [WEATHER_CALL] * MAX_ROUNDS
    assert [item["type"] for item in body["output"][MAX_ROUNDS:]] == ["message"]
    assert mcp.calls == [("get_weather", {"city": "Paris"})] * MAX_ROUNDS
    assert all(headers.get("x-api-key") == "k1" for headers in mcp.headers_seen)
    first, second = log.prompts[before:before + 2]
    assert '"name": "get_weather"' in first and "delete_everything" not in first  # allowed_tools only
    assert second.endswith("<|im_start|>user\n<tool_response>\n18 C, light rain\n</tool_response><|im_end|>\n"
                           "<|im_start|>assistant\n")
    assert body["response_id"].startswith("resp_")


def _v1_events(qhttp: httpx.Client, body: dict) -> list[tuple[str, dict]]:
    events, kind = [], None
    with qhttp.stream("POST", "/api/v1/chat", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
    return events


def test_v1_chat_streams_each_call_as_tool_call_events(qhttp, mcp):
    events = _v1_events(qhttp, _v1_chat(mcp))
    kinds = [kind for kind, _ in events if kind != "prompt_processing.progress"]
    info = WEATHER_CALL["provider_info"]
    assert kinds[:6] == ["chat.start", "prompt_processing.start", "prompt_processing.end", "tool_call.start",
                         "tool_call.arguments", "tool_call.success"]
    calls = [data for kind, data in events if kind.startswith("tool_call.")]
    assert calls[:3] == [
        {"type": "tool_call.start", "tool": "get_weather", "provider_info": info},
        {"type": "tool_call.arguments", "tool": "get_weather", "arguments": {"city": "Paris"}, "provider_info": info},
        {"type": "tool_call.success", "tool": "get_weather", "arguments": {"city": "Paris"},
         "output": "18 C, light rain", "provider_info": info}]
    assert len(calls) == 3 * MAX_ROUNDS
    # the round after the last call answers: one message, however long
    answer = kinds[max(i for i, kind in enumerate(kinds) if kind.startswith("tool_call.")) + 1:]
    assert answer[-2:] == ["message.end", "chat.end"] and answer.count("message.start") == 1, kinds
    assert set(answer) <= {"prompt_processing.start", "prompt_processing.end", "message.start", "message.delta",
                           "message.end", "chat.end"}, kinds
    result = events[-1][1]["result"]
    assert result["output"][:MAX_ROUNDS] == [WEATHER_CALL] * MAX_ROUNDS


def test_v1_chat_ends_its_mcp_sessions_when_refused_before_the_stream(qhttp, mcp):
    # the model not loaded: the unknown previous response is refused before the stream that would
    # show the load, after the servers were reached; their sessions must not be left open
    for instance in qhttp.get("/api/v1/models").json()["models"]:
        for loaded in instance.get("loaded_instances", []):
            qhttp.post("/api/v1/models/unload", json={"instance_id": loaded["id"]})
    body = _v1_chat(mcp, stream=True, previous_response_id="resp_" + "0" * 32)
    response = qhttp.post("/api/v1/chat", json=body)
    assert response.status_code == 404
    assert "POST" in mcp.methods_seen
    deadline = time.monotonic() + 10
    while "DELETE" not in mcp.methods_seen and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "DELETE" in mcp.methods_seen


def test_v1_chat_refuses_mcp_servers_unless_the_settings_allow_them(http, mcp):
    response = http.post("/api/v1/chat", json={**_v1_chat(mcp), "model": SMOLLM})
    assert response.status_code == 403
    assert response.json()["error"]["param"] == "integrations"
    assert mcp.calls == [] and mcp.headers_seen == []


def test_v1_chat_says_when_an_mcp_server_cannot_be_reached(qhttp):
    body = {"model": QWEN, "input": PARIS, "integrations": [
        {"type": "ephemeral_mcp", "server_label": "gone", "server_url": f"http://127.0.0.1:{free_port()}/mcp"}]}
    response = qhttp.post("/api/v1/chat", json=body)
    assert response.status_code == 502
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("mcp_connection_error", "integrations")


# a tool list past service/mcp.py's MAX_ANSWER_BYTES (4 MiB): as SSE the SDK's event bound ends it,
# as JSON the HTTP client's body bound
HUGE_TOOL = mcp_types.Tool(name="huge", description="x" * 5 * 2**20, input_schema={"type": "object"})


@pytest.mark.parametrize("json_response", [False, True])
def test_v1_chat_says_when_an_mcp_server_answers_too_much(qhttp, json_response):
    server = McpServer(json_response=json_response, extra_tools=(HUGE_TOOL,))
    try:
        response = qhttp.post("/api/v1/chat", json=_v1_chat(server))
    finally:
        server.close()
    assert response.status_code == 502
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("mcp_connection_error", "integrations")
    assert server.calls == []


@pytest.mark.parametrize(("integration", "param"), [  # mcp.json's plugins: tests/test_mcp_json.py
    ({"type": "ephemeral_mcp", "server_url": "http://127.0.0.1:1/mcp"}, "integrations[0].server_label"),
    ({"type": "ephemeral_mcp", "server_label": "x", "server_url": "file:///etc/passwd"}, "integrations[0].server_url"),
])
def test_v1_chat_integrations_it_cannot_serve_are_a_400(qhttp, integration, param):
    response = qhttp.post("/api/v1/chat", json={"model": QWEN, "input": PARIS, "integrations": [integration]})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


# --- the parser on untagged calls -----------------------------------------------------------------


def _parsed(syntax, text: str) -> list:
    """The parser's events, fed a character at a time (as a stream), merged."""
    parser = ToolCallParser(syntax, constrained=True)
    events = [event for char in text for event in parser.feed(char)] + parser.finish()
    merged: list = []
    for event in events:
        if merged and type(event) is type(merged[-1]) and not isinstance(event, CallStart):
            last = merged.pop()
            event = type(event)(last.text + event.text) if isinstance(event, Text) \
                else CallArguments(event.call, last.text + event.text)
        merged.append(event)
    return merged


AUTO = output_syntax(HERMES, Tools((ToolSpec("get_weather", None, PARAMETERS),), "auto"))
CALL = [CallStart(0, "get_weather"), CallArguments(0, '{"city": "Paris"}')]


@pytest.mark.parametrize("text", [
    '{"name": "get_weather", "arguments": {"city": "Paris"}}',
    '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
    '\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
])
def test_auto_reads_bare_fenced_and_tagged_calls_alike(text):
    assert AUTO.untagged
    assert _parsed(AUTO, text) == CALL


@pytest.mark.parametrize("text", ["```python\nprint(1)\n```", "``", "Use {braces} freely.", "```JSON is nice"])
def test_text_that_only_looks_like_a_fence_stays_text(text):
    assert _parsed(AUTO, text) == [Text(text)]


def test_untagged_calls_are_only_for_auto():
    required = output_syntax(HERMES, Tools((ToolSpec("get_weather", None, PARAMETERS),), "required"))
    assert not required.untagged
