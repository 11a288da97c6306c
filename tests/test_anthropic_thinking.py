"""Thinking over Anthropic's Messages API with the ``anthropic`` SDK: a reasoning model's reasoning as
``thinking`` blocks (streamed as ``thinking_delta``, then an empty ``signature_delta``), ``thinking``
``enabled`` with ``budget_tokens`` as the reasoning budget, ``disabled`` as reasoning off, and thinking
blocks sent back in the history.

THINKER is tests/reasoning_model.py's Qwen2.5-Coder-0.5B under Qwen3's template, HARMONY SmolLM2
under gpt-oss': neither was trained to reason, so these tests check the plumbing (the same service
as chat completions' reasoning, exactly: greedy), not thinking. THINKER copies a
``<think>…</think>`` it is asked to write verbatim.
"""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest

from tests.conftest import RunningServer, free_port
from tests.reasoning_model import HARMONY, THINKER, link_reasoning_models

GREEDY = {"temperature": 0, "seed": 1}
VERBATIM = [{"role": "user", "content": "Write the text `<think>2 and 2 make 4.</think>The answer is 4.` verbatim."}]
THOUGHT, ANSWER = "2 and 2 make 4.", "The answer is 4."
STORY = [{"role": "user", "content": "Write a long story about a cat."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = link_reasoning_models(tmp_path_factory.mktemp("anthropic-thinking-home"), (THINKER, HARMONY))
    running = RunningServer(home, free_port(), ["--parallel", "1", "--context-length", "2048"])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def claude(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="not-needed", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="not-needed", max_retries=0, timeout=300)


def blocks(message) -> list[tuple[str, str]]:
    return [(block.type, block.thinking if block.type == "thinking" else block.text) for block in message.content]


def test_reasoning_is_a_thinking_block(claude, client):
    message = claude.messages.create(model=THINKER.key, max_tokens=40, messages=VERBATIM, extra_body=GREEDY)
    assert blocks(message) == [("thinking", THOUGHT), ("text", ANSWER)]
    assert message.content[0].signature == ""  # studiolo signs nothing
    expected = client.chat.completions.create(model=THINKER.key, max_tokens=40, messages=VERBATIM, **GREEDY)
    assert expected.choices[0].message.reasoning_content == THOUGHT
    assert message.usage.output_tokens == expected.usage.completion_tokens
    thinking_tokens = expected.usage.completion_tokens_details.reasoning_tokens
    assert message.usage.output_tokens_details.thinking_tokens == thinking_tokens > 0


def test_thinking_streams_with_a_signature_before_its_stop(claude, server):
    with claude.messages.stream(model=THINKER.key, max_tokens=40, messages=VERBATIM, extra_body=GREEDY) as stream:
        final = stream.get_final_message()
    assert blocks(final) == [("thinking", THOUGHT), ("text", ANSWER)]
    body = {"model": THINKER.key, "max_tokens": 40, "messages": VERBATIM, "stream": True, **GREEDY}
    with httpx.stream("POST", f"{server.base_url}/v1/messages", json=body, timeout=300) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    first = [event for event in events if event.get("index") == 0]
    assert first[0]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert {event["delta"]["type"] for event in first[1:-2]} == {"thinking_delta"}
    assert "".join(event["delta"]["thinking"] for event in first[1:-2]) == THOUGHT
    assert first[-2]["delta"] == {"type": "signature_delta", "signature": ""}
    assert first[-1] == {"type": "content_block_stop", "index": 0}
    second = [event for event in events if event.get("index") == 1]
    assert second[0]["content_block"] == {"type": "text", "text": ""}


def test_enabled_thinking_has_its_budget(claude, client):
    thinking = {"type": "enabled", "budget_tokens": 5}
    message = claude.messages.create(model=THINKER.key, max_tokens=30, messages=STORY, thinking=thinking,
                                     extra_body=GREEDY)
    expected = client.chat.completions.create(model=THINKER.key, max_tokens=30, messages=STORY,
                                              extra_body={"reasoning_budget": 5}, **GREEDY)
    reasoning = expected.choices[0].message.reasoning_content
    assert reasoning and blocks(message)[0] == ("thinking", reasoning)
    assert "".join(text for kind, text in blocks(message) if kind == "text") == expected.choices[0].message.content
    assert message.usage.output_tokens_details.thinking_tokens <= 5 + 4  # the budget, and the close studiolo wrote


def test_disabled_thinking_switches_it_off(claude, client):
    message = claude.messages.create(model=THINKER.key, max_tokens=20, messages=STORY,
                                     thinking={"type": "disabled"}, extra_body=GREEDY)
    expected = client.chat.completions.create(model=THINKER.key, max_tokens=20, messages=STORY,
                                              reasoning_effort="none", **GREEDY)
    assert [kind for kind, _ in blocks(message)] == ["text"]
    assert blocks(message)[0][1] == expected.choices[0].message.content
    on = claude.messages.count_tokens(model=THINKER.key, messages=STORY, thinking={"type": "enabled",
                                                                                   "budget_tokens": 10})
    off = claude.messages.count_tokens(model=THINKER.key, messages=STORY, thinking={"type": "disabled"})
    assert off.input_tokens > on.input_tokens  # Qwen3's template writes the empty <think></think> in the prompt


def test_a_model_that_cannot_stop_reasoning_refuses_disabled(claude):
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(model=HARMONY.key, max_tokens=5, messages=STORY, thinking={"type": "disabled"})
    assert caught.value.body["error"]["message"].startswith("thinking: this model cannot switch its reasoning off")


def test_thinking_blocks_go_back_to_the_template(claude):
    """Qwen3's template keeps the reasoning of the turns after the last user message (a tool loop)."""
    tool = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
    call = {"type": "tool_use", "id": "call1", "name": "get_weather", "input": {"city": "Paris"}}
    result = {"type": "tool_result", "tool_use_id": "call1", "content": "Sunny"}

    def count(assistant: list[dict]) -> int:
        turns = [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": assistant},
                 {"role": "user", "content": [result]}]
        return claude.messages.count_tokens(model=THINKER.key, tools=[tool], messages=turns).input_tokens

    thought = {"type": "thinking", "thinking": "I need the weather in Paris first.", "signature": "anything"}
    assert count([thought, call]) > count([call]) + 5
