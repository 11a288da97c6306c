"""Reasoning on LM Studio's ``/api/v1/chat`` end to end, with httpx: ``reasoning`` output items before
the message, ``reasoning.start`` / ``reasoning.delta`` / ``reasoning.end`` events, ``stats.reasoning_output_tokens``,
the ``reasoning`` option into the template (off, low, medium, high, on; a 400 naming ``reasoning``
for an option the model's template does not list), and stored chats with their reasoning.

The models are tests/reasoning_model.py's copies of small instruct models under real reasoning
templates; none was trained to reason, so these tests check the plumbing, not thinking. THINKER
(Qwen2.5-Coder-0.5B under Qwen3's template) copies a ``<think>…</think>`` it is asked to write
verbatim (greedy: deterministic); OPENER (SmolLM2 under QwQ's template, which opens ``<think>`` in
the prompt) is cut by ``max_output_tokens`` inside its reasoning.
"""

from __future__ import annotations

import json

import httpx
import pytest

from studiolo.api.lmstudio.chat_render import Reply, output_items
from studiolo.service.mcp_turn import ToolCallDone, said_items
from studiolo.service.types import Finished, ReasoningDelta, TextDelta
from tests.conftest import SMOLLM
from tests.mcp_server import McpServer
from tests.reasoning_model import HARMONY, OPENER, THINKER
from tests.reasoning_wire import prompts_sent, reasoning_home, start_server

VERBATIM = "Write the text `<think>2 and 2 make 4.</think>The answer is 4.` verbatim."
THOUGHT, ANSWER = "2 and 2 make 4.", "The answer is 4."
QWEN3_OFF = "<|im_start|>assistant\n<think>\n\n</think>\n\n"  # Qwen3's generation prompt with thinking off
EFFORT_LINES = ("Reasoning: low", "Reasoning: medium", "Reasoning: high")  # gpt-oss' system message


@pytest.fixture(scope="module")
def rserver(tmp_path_factory, default_models):
    running = start_server(reasoning_home(tmp_path_factory, default_models))
    yield running
    running.stop()


def chat(server, **body) -> httpx.Response:
    return httpx.post(f"{server.base_url}/api/v1/chat", json={"temperature": 0, **body}, timeout=120)


def chat_events(server, **body) -> list[tuple[str, dict]]:
    events = []
    with httpx.stream("POST", f"{server.base_url}/api/v1/chat", json={"temperature": 0, "stream": True, **body},
                      timeout=120) as response:
        assert response.status_code == 200, response.read()
        kind = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data = json.loads(line[5:])
                assert data["type"] == kind
                events.append((kind, data))
    return events


# --- rendering ------------------------------------------------------------------------------------


def test_each_rounds_reasoning_comes_before_its_text_and_calls():
    """An MCP turn's rounds: what is stored (Reply) and what the next round's prompt gets (said_items)."""
    call = {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "weather", "arguments": "{}",
            "status": "completed"}
    result = {"type": "function_call_output", "call_id": "c1", "output": "Sunny"}
    reply = Reply()
    for event in (ReasoningDelta(0, "Paris "), ReasoningDelta(0, "first."), TextDelta(0, "Looking."),
                  ToolCallDone("weather", {}, "Sunny", {"type": "ephemeral_mcp"}, (call, result)),
                  ReasoningDelta(0, "Sunny it is."), TextDelta(0, "It is sunny."), Finished(0, "stop")):
        reply.follow(event)
    assert output_items(reply.output()) == [
        {"type": "reasoning", "content": "Paris first."}, {"type": "message", "content": "Looking."},
        {"type": "tool_call", "tool": "weather", "arguments": {}, "output": "Sunny",
         "provider_info": {"type": "ephemeral_mcp"}},
        {"type": "reasoning", "content": "Sunny it is."}, {"type": "message", "content": "It is sunny."}]
    items = said_items([ReasoningDelta(0, "a"), ReasoningDelta(0, "b"), TextDelta(0, "x"), ReasoningDelta(0, "c"),
                        TextDelta(0, "")])
    assert [(item["type"], item["content"][0]["text"]) for item in items] == [
        ("reasoning", "ab"), ("message", "x"), ("reasoning", "c")]


# --- output ---------------------------------------------------------------------------------------


def test_reasoning_is_an_item_before_the_message_whole_and_streamed(rserver):
    request = dict(model=THINKER.key, input=VERBATIM, max_output_tokens=30)
    whole = chat(rserver, **request).json()
    assert whole["output"] == [{"type": "reasoning", "content": THOUGHT}, {"type": "message", "content": ANSWER}]
    # "<think>2 and 2 make 4.</think>" is 13 of the 19 tokens (Qwen2.5 spells each tag in 3)
    assert (whole["stats"]["reasoning_output_tokens"], whole["stats"]["total_output_tokens"]) == (13, 19)

    events = chat_events(rserver, **request)
    kinds = [kind for kind, _ in events if kind != "prompt_processing.progress"]
    reasoning_deltas = kinds.count("reasoning.delta")
    message_deltas = kinds.count("message.delta")
    assert kinds == ["chat.start", "prompt_processing.start", "prompt_processing.end",
                     "reasoning.start", *["reasoning.delta"] * reasoning_deltas, "reasoning.end",
                     "message.start", *["message.delta"] * message_deltas, "message.end", "chat.end"]
    assert reasoning_deltas > 1 and message_deltas > 1
    assert "".join(data["content"] for kind, data in events if kind == "reasoning.delta") == THOUGHT
    assert "".join(data["content"] for kind, data in events if kind == "message.delta") == ANSWER
    for kind, data in events:
        if kind in ("reasoning.start", "reasoning.end"):
            assert data == {"type": kind}
    result = events[-1][1]["result"]
    assert result["output"] == whole["output"] and result["stats"]["reasoning_output_tokens"] == 13
    assert result["response_id"] != whole["response_id"]


def test_a_cut_inside_the_reasoning_ends_it_and_leaves_an_empty_message(rserver):
    """QwQ's template opens <think> in the prompt; cut by max_output_tokens, the reasoning never closes."""
    request = dict(model=OPENER.key, input="Hi", max_output_tokens=8)
    whole = chat(rserver, **request).json()
    assert whole["output"] == [{"type": "reasoning", "content": "I'm glad to hear that you"},
                               {"type": "message", "content": ""}]
    assert whole["stats"]["reasoning_output_tokens"] == whole["stats"]["total_output_tokens"] == 8
    events = chat_events(rserver, **request)
    kinds = [kind for kind, _ in events if kind.startswith(("reasoning.", "message."))]
    deltas = kinds.count("reasoning.delta")
    assert kinds == ["reasoning.start", *["reasoning.delta"] * deltas, "reasoning.end", "message.start", "message.end"]
    assert events[-1][1]["result"]["output"] == whole["output"]


def test_a_model_without_reasoning_has_no_reasoning_item(rserver):
    whole = chat(rserver, model=SMOLLM, input="Hi", max_output_tokens=4, reasoning="off").json()
    assert [item["type"] for item in whole["output"]] == ["message"]
    assert whole["stats"]["reasoning_output_tokens"] == 0


# --- the reasoning option -------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "option", "said"), [
    (THINKER.key, None, None), (THINKER.key, "on", None), (THINKER.key, "off", QWEN3_OFF),
    (HARMONY.key, None, "Reasoning: medium"), (HARMONY.key, "on", "Reasoning: medium"),
    (HARMONY.key, "low", "Reasoning: low"), (HARMONY.key, "high", "Reasoning: high"),
])
def test_the_option_reaches_the_template(rserver, model, option, said):
    with prompts_sent(rserver.base_url) as prompts:
        response = chat(rserver, model=model, input="Hi", max_output_tokens=1,
                        **({"reasoning": option} if option else {}))
    assert response.status_code == 200, response.text
    [prompt] = prompts
    if model == THINKER.key:
        assert (QWEN3_OFF in prompt) is (option == "off") and prompt.endswith("<|im_start|>assistant\n" if said is None
                                                                             else QWEN3_OFF)
    else:
        assert [line for line in EFFORT_LINES if line in prompt] == [said]


def test_thinking_off_makes_the_whole_output_the_message(rserver):
    whole = chat(rserver, model=THINKER.key, input=VERBATIM, max_output_tokens=30, reasoning="off").json()
    assert whole["output"] == [{"type": "message", "content": ANSWER}]
    assert whole["stats"]["reasoning_output_tokens"] == 0


@pytest.mark.parametrize(("model", "option", "says"), [
    (THINKER.key, "low", "it takes: off, on"),  # Qwen3's template switches thinking, with no efforts
    (THINKER.key, "high", "it takes: off, on"),
    (HARMONY.key, "off", "cannot switch its reasoning off"),  # gpt-oss always reasons
    (SMOLLM, "on", "it does not reason"),
    (SMOLLM, "medium", "it does not reason"),
])
def test_an_option_the_model_cannot_honour_is_a_400_naming_reasoning(rserver, model, option, says):
    for stream in (False, True):  # the model is loaded: refused before any stream
        response = chat(rserver, model=model, input="Hi", max_output_tokens=1, reasoning=option, stream=stream)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "reasoning" and says in error["message"], error


def loaded(server, key: str) -> list[str]:
    models = httpx.get(f"{server.base_url}/api/v1/models", timeout=30).json()["models"]
    return [instance["id"] for model in models if model["key"] == key for instance in model["loaded_instances"]]


def test_a_model_that_is_not_loaded_is_not_loaded_to_refuse_an_option(rserver):
    """The option is checked against the template in the model's file: a 400 before the stream (which
    would show the load) and before any load."""
    for instance_id in loaded(rserver, HARMONY.key):
        httpx.post(f"{rserver.base_url}/api/v1/models/unload", json={"instance_id": instance_id}, timeout=60)
    for stream in (True, False):
        response = chat(rserver, model=HARMONY.key, input="Hi", reasoning="off", stream=stream)
        assert response.status_code == 400 and response.json()["error"]["param"] == "reasoning", response.text
    assert loaded(rserver, HARMONY.key) == []


def test_an_unknown_option_is_a_400_naming_reasoning(rserver):
    response = chat(rserver, model=THINKER.key, input="Hi", reasoning="max")
    assert response.status_code == 400 and response.json()["error"]["param"] == "reasoning"


# --- stored chats ---------------------------------------------------------------------------------


def test_a_stored_chat_keeps_its_reasoning_and_the_template_decides_what_continues(rserver):
    first = chat(rserver, model=THINKER.key, input=VERBATIM, max_output_tokens=30).json()
    stored = httpx.get(f"{rserver.base_url}/v1/responses/{first['response_id']}", timeout=30).json()
    reasoning, message = stored["output"]  # the one store, read through the Responses API
    assert (reasoning["type"], reasoning["content"]) == ("reasoning", [{"type": "reasoning_text", "text": THOUGHT}])
    assert message["content"][0]["text"] == ANSWER
    assert stored["usage"]["output_tokens_details"]["reasoning_tokens"] == 13

    # Qwen3's template drops reasoning before the last user message: the continuation has the answer only
    with prompts_sent(rserver.base_url) as prompts:
        second = chat(rserver, model=THINKER.key, input="And 3 and 3?", previous_response_id=first["response_id"],
                      max_output_tokens=1)
    assert second.status_code == 200, second.text
    assert f"<|im_start|>assistant\n{ANSWER}<|im_end|>" in prompts[0] and f"<think>\n{THOUGHT}" not in prompts[0]


def test_a_stored_chat_continued_on_the_responses_api_gives_its_reasoning_back(rserver):
    """An earlier assistant turn's reasoning reaches the template (Qwen3's keeps it after the last
    user message): a turn whose input ends with the assistant's reply continues it."""
    first = chat(rserver, model=THINKER.key, input=VERBATIM, max_output_tokens=30).json()
    with prompts_sent(rserver.base_url) as prompts:
        response = httpx.post(f"{rserver.base_url}/v1/responses", timeout=120, json={
            "model": THINKER.key, "previous_response_id": first["response_id"], "max_output_tokens": 1,
            "temperature": 0, "input": [{"type": "message", "role": "assistant", "content": "Anything else?"}]})
    assert response.status_code == 200, response.text
    assert f"<|im_start|>assistant\n<think>\n{THOUGHT}\n</think>\n\n{ANSWER}<|im_end|>" in prompts[0]


def test_a_reasoning_budget_closes_the_reasoning_then_the_message_follows(rserver):
    """OPENER's prompt opens the reasoning; at the budget studiolo closes it and the model answers."""
    body = {"model": OPENER.key, "input": "Hi", "max_output_tokens": 24, "reasoning_budget": 6}
    response = chat(rserver, **body)
    assert response.status_code == 200, response.text
    result = response.json()
    kinds = [item["type"] for item in result["output"]]
    assert kinds == ["reasoning", "message"], result["output"]
    assert result["output"][0]["content"].strip() and result["output"][1]["content"].strip()
    assert result["stats"]["reasoning_output_tokens"] >= 6
    events = chat_events(rserver, **body)
    said = "".join(data["content"] for kind, data in events if kind == "reasoning.delta")
    assert said == result["output"][0]["content"]


def test_a_bad_reasoning_budget_is_a_400_naming_it(rserver):
    response = chat(rserver, model=OPENER.key, input="Hi", reasoning_budget="many")
    assert response.status_code == 400 and response.json()["error"]["param"] == "reasoning_budget"


# --- MCP tools after the reasoning ----------------------------------------------------------------

MCP_ROUNDS = 2  # the settings' mcp_max_rounds: rounds that may call; the one after answers


@pytest.fixture(scope="module")
def mcp_rserver(tmp_path_factory, default_models):
    home = reasoning_home(tmp_path_factory, default_models)
    (home / "settings.json").write_text('{"allow_per_request_mcp": true, "limits": {"mcp_max_rounds": %d}}' % MCP_ROUNDS)
    running = start_server(home)
    yield running
    running.stop()


def assert_rounds_reason_then_call(output: list[dict]) -> None:
    kinds = [item["type"] for item in output]
    assert kinds[-1] == "message" and kinds.count("tool_call") == MCP_ROUNDS
    assert all(kinds[i - 1] == "reasoning" for i, k in enumerate(kinds) if k == "tool_call")


CALL_VERBATIM = ("Write the text `<think>I will look it up.</think><tool_call>{\"name\": \"get_weather\", "
                 "\"arguments\": {\"city\": \"Paris\"}}</tool_call>` verbatim.")


def test_each_mcp_round_reasons_before_it_calls(mcp_rserver):
    """THINKER copies a reasoning and a call it is asked to write (greedy); the call runs on the MCP
    server, and each later round again reasons (it copies the tool's result) before it calls, until
    the turn stops offering tools and the model answers. Streamed as whole."""
    weather = McpServer()
    try:
        body = {"model": THINKER.key, "input": CALL_VERBATIM, "max_output_tokens": 60,
                "integrations": [{"type": "ephemeral_mcp", "server_label": "weather", "server_url": weather.url,
                                  "allowed_tools": ["get_weather"]}]}
        response = chat(mcp_rserver, **body)
        assert response.status_code == 200, response.text
        result = response.json()
        events = chat_events(mcp_rserver, **body)
    finally:
        weather.close()
    output = result["output"]
    call = {"type": "tool_call", "tool": "get_weather", "arguments": {"city": "Paris"}, "output": "18 C, light rain",
            "provider_info": {"type": "ephemeral_mcp", "server_label": "weather"}}
    assert output[:4] == [{"type": "reasoning", "content": "I will look it up."}, call,
                          {"type": "reasoning", "content": "18 C, light rain"}, call]
    assert_rounds_reason_then_call(output)
    assert weather.calls[0] == ("get_weather", {"city": "Paris"})
    assert result["stats"]["reasoning_output_tokens"] > 0
    # the streamed run reads its prompt from the cache the first left, so its rounding differs: the
    # answer after the last round may part at a near-tie, the rounds may not
    streamed_output = events[-1][1]["result"]["output"]
    assert streamed_output[:4] == output[:4]
    assert_rounds_reason_then_call(streamed_output)
    streamed = [data for kind, data in events if kind in ("reasoning.start", "reasoning.end", "tool_call.start")]
    assert [d["type"] for d in streamed[:4]] == ["reasoning.start", "reasoning.end", "tool_call.start",
                                                  "reasoning.start"]
