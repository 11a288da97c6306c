"""Tool use over Anthropic's Messages API with the ``anthropic`` SDK, on Qwen2.5-Coder-0.5B-Instruct
(its native Hermes/Qwen tool format): a tool-use loop (``tool_use``, then ``tool_result``, then an
answer) with ``tool_choice`` ``any``, ``tool``, ``auto`` and ``none``, ``disable_parallel_tool_use``,
and tool input streamed as ``input_json_delta`` pieces.

The calls go through the chat service's one constrained, format-aware path: greedy, each message
makes exactly the calls (and text) the same conversation makes over /v1/chat/completions.
"""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest

from studiolo.models.defaults import QWEN05, target_path
from tests.conftest import QWEN, RunningServer, free_port, home_with_models

GREEDY = {"temperature": 0, "repeat_penalty": 1.0}
SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "description": "The city name"}},
          "required": ["city"]}
WEATHER = {"name": "get_weather", "description": "Get the current weather in a city", "input_schema": SCHEMA}
CLOCK = {"name": "get_time", "description": "Get the current local time in a city", "input_schema": SCHEMA}
OPENAI_TOOLS = [{"type": "function", "function": {"name": tool["name"], "description": tool["description"],
                                                  "parameters": tool["input_schema"]}} for tool in (WEATHER, CLOCK)]
PARIS = [{"role": "user", "content": "What is the weather like in Paris today?"}]
TWO_CITIES = [{"role": "user", "content": "What's the weather in Paris and in Tokyo?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = home_with_models(tmp_path_factory.mktemp("anthropic-tools-home"), {QWEN: target_path(QWEN05)})
    running = RunningServer(home, free_port(), [])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def claude(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="not-needed", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="not-needed", max_retries=0, timeout=120)


def create(claude, messages, **fields):
    return claude.messages.create(model=QWEN, max_tokens=100, tools=[WEATHER, CLOCK], messages=messages,
                                  extra_body=GREEDY, **fields)


def chat_calls(client, messages, **fields) -> list[tuple[str, dict]]:
    reply = client.chat.completions.create(model=QWEN, max_tokens=100, temperature=0, tools=OPENAI_TOOLS,
                                           messages=messages, extra_body={"repeat_penalty": 1.0}, **fields)
    calls = reply.choices[0].message.tool_calls or []
    return [(call.function.name, json.loads(call.function.arguments)) for call in calls]


def uses(message) -> list[tuple[str, dict]]:
    return [(block.name, block.input) for block in message.content if block.type == "tool_use"]


def text_of(message) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


def test_any_calls_a_tool_as_required_does(claude, client):
    message = create(claude, PARIS, tool_choice={"type": "any"})
    assert uses(message) == chat_calls(client, PARIS, tool_choice="required") == [("get_weather", {"city": "Paris"})]
    assert message.stop_reason == "tool_use"
    block = message.content[-1]
    assert block.type == "tool_use" and block.id


def test_tool_names_the_tool_to_call(claude, client):
    message = create(claude, PARIS, tool_choice={"type": "tool", "name": "get_time"})
    named = {"type": "function", "function": {"name": "get_time"}}
    assert uses(message) == chat_calls(client, PARIS, tool_choice=named)
    assert [name for name, _ in uses(message)] == ["get_time"] and message.stop_reason == "tool_use"


def test_auto_is_the_chat_completions_auto(claude, client):
    message = create(claude, PARIS, tool_choice={"type": "auto"})
    assert uses(message) == chat_calls(client, PARIS, tool_choice="auto")
    assert uses(create(claude, PARIS)) == uses(message)  # auto is the default (call ids are new each time)


def test_none_offers_no_call(claude):
    message = create(claude, PARIS, tool_choice={"type": "none"})
    assert uses(message) == [] and text_of(message)
    assert message.stop_reason in ("end_turn", "max_tokens")


def test_disable_parallel_tool_use_makes_one_call(claude, client):
    several = create(claude, TWO_CITIES, tool_choice={"type": "any"})
    one = create(claude, TWO_CITIES, tool_choice={"type": "any", "disable_parallel_tool_use": True})
    assert len(uses(several)) == 2 and uses(several) == chat_calls(client, TWO_CITIES, tool_choice="required")
    assert uses(one) == [uses(several)[0]]
    assert uses(one) == chat_calls(client, TWO_CITIES, tool_choice="required", parallel_tool_calls=False)


def test_a_tool_use_loop_ends_with_an_answer(claude, client):
    """tool_use, then its tool_result, then (tool_choice none: the turn is the answer) the answer."""
    first = create(claude, PARIS, tool_choice={"type": "any"})
    call = first.content[-1]
    result = {"type": "tool_result", "tool_use_id": call.id, "content": [{"type": "text", "text": "Sunny, 24 C"}]}
    turns = [*PARIS, {"role": "assistant", "content": first.content}, {"role": "user", "content": [result]}]
    answer = create(claude, turns, tool_choice={"type": "none"})
    assert uses(answer) == [] and text_of(answer)
    openai_turns = [*PARIS, {"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": json.dumps(call.input)}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 C"}]
    expected = client.chat.completions.create(model=QWEN, max_tokens=100, temperature=0, tools=OPENAI_TOOLS,
                                              tool_choice="none", messages=openai_turns,
                                              extra_body={"repeat_penalty": 1.0})
    assert text_of(answer) == expected.choices[0].message.content
    # tools that may not be called are not in the prompt: count_tokens follows tool_choice too
    counted = claude.messages.count_tokens(model=QWEN, tools=[WEATHER, CLOCK], messages=turns,
                                           tool_choice={"type": "none"})
    assert counted.input_tokens == expected.usage.prompt_tokens
    offered = claude.messages.count_tokens(model=QWEN, tools=[WEATHER, CLOCK], messages=turns)
    assert offered.input_tokens > counted.input_tokens + 100


def test_an_error_result_says_so(claude):
    first = create(claude, PARIS, tool_choice={"type": "any"})
    call = first.content[-1]

    def count(is_error: bool) -> int:
        result = {"type": "tool_result", "tool_use_id": call.id, "content": "no such city", "is_error": is_error}
        turns = [*PARIS, {"role": "assistant", "content": first.content}, {"role": "user", "content": [result]}]
        return claude.messages.count_tokens(model=QWEN, tools=[WEATHER, CLOCK], messages=turns).input_tokens

    assert count(True) == count(False) + 2  # "Error: " before the result's text


def test_tool_input_streams_as_partial_json(claude, server):
    whole = create(claude, TWO_CITIES, tool_choice={"type": "any"})
    with claude.messages.stream(model=QWEN, max_tokens=100, tools=[WEATHER, CLOCK], messages=TWO_CITIES,
                                tool_choice={"type": "any"}, extra_body=GREEDY) as stream:
        final = stream.get_final_message()
    assert uses(final) == uses(whole) and final.stop_reason == "tool_use"
    body = {"model": QWEN, "max_tokens": 100, "tools": [WEATHER, CLOCK], "messages": TWO_CITIES, "stream": True,
            "tool_choice": {"type": "any"}, **GREEDY}
    events = []
    with httpx.stream("POST", f"{server.base_url}/v1/messages", json=body, timeout=120) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    starts = [event for event in events if event["type"] == "content_block_start"]
    assert [start["content_block"]["type"] for start in starts] == ["tool_use", "tool_use"]
    assert starts[0]["content_block"]["input"] == {} and starts[0]["content_block"]["name"] == "get_weather"
    for start, (_, expected_input) in zip(starts, uses(whole), strict=True):
        pieces = [event["delta"]["partial_json"] for event in events if event["type"] == "content_block_delta"
                  and event["index"] == start["index"]]
        assert all(isinstance(piece, str) for piece in pieces)
        assert json.loads("".join(pieces)) == expected_input
    stops = [event["index"] for event in events if event["type"] == "content_block_stop"]
    assert stops == [0, 1]
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def test_a_named_tool_that_is_not_offered_is_a_400(claude):
    with pytest.raises(anthropic.BadRequestError) as caught:
        create(claude, PARIS, tool_choice={"type": "tool", "name": "nope"})
    assert caught.value.body["error"]["message"].startswith("tool_choice: ")
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(model=QWEN, max_tokens=10, messages=PARIS, extra_body=GREEDY,
                               tools=[{"name": "t", "input_schema": {"type": "string"}}])
    assert caught.value.body["error"]["message"].startswith("tools.0.input_schema: ")
