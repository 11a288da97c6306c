"""Reasoning budgets and constraints that wait for the answer, end to end through
``/v1/chat/completions`` with the openai client, streamed and whole: THINKER (Qwen 0.5B with
Qwen3's template: the output may open ``<think>``, and the gate opens it when a budget or a
constraint asks) and OPENER (SmolLM2 with QwQ's template: the prompt opens ``<think>``).

These models were not trained to reason (tests/reasoning_model.py): the tests check the plumbing.
The reasoning comes apart in ``reasoning_content``, the answer in ``content`` (docs/API.md
"Reasoning"). Greedy runs: the streamed reasoning and content are the whole ones, exactly.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import RunningServer, free_port
from tests.reasoning_model import HARMONY, OPENER, THINKER, link_reasoning_models

STORY = [{"role": "user", "content": "Write a long story about a cat."}]
SUM = [{"role": "user", "content": "What is 17 times 23?"}]
ANSWER_SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"],
                 "additionalProperties": False}
MULTIPLY = {"type": "function", "function": {"name": "multiply", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"], "additionalProperties": False}}}


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return link_reasoning_models(tmp_path_factory.mktemp("reasoning-budget-home"))


@pytest.fixture(scope="module")
def server(home):
    running = RunningServer(home, free_port(), [])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="not-needed", max_retries=0, timeout=300)


@dataclass
class Reply:
    reasoning: str  # message.reasoning_content ("" when there is none)
    content: str
    calls: list
    finish: str | None
    reasoning_tokens: int


def whole_and_streamed(client, **kwargs) -> Reply:
    """A greedy request's reasoning, answer, tool calls and finish reason, asserted equal streamed and whole."""
    kwargs.setdefault("temperature", 0)
    kwargs.setdefault("max_tokens", 40)
    response = client.chat.completions.create(**kwargs)
    whole = response.choices[0]
    reasoning, content, calls, finish = "", "", {}, None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            reasoning += getattr(choice.delta, "reasoning_content", None) or ""
            content += choice.delta.content or ""
            for call in choice.delta.tool_calls or ():
                entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
                entry["name"] += call.function.name or ""
                entry["arguments"] += call.function.arguments or ""
            finish = choice.finish_reason or finish
    whole_calls = [{"name": c.function.name, "arguments": c.function.arguments}
                   for c in whole.message.tool_calls or ()]
    whole_reasoning = getattr(whole.message, "reasoning_content", None) or ""
    assert (reasoning, content, [calls[i] for i in sorted(calls)], finish) == \
        (whole_reasoning, whole.message.content or "", whole_calls, whole.finish_reason)
    details = response.usage.completion_tokens_details
    return Reply(reasoning, content, whole_calls, finish, details.reasoning_tokens if details else 0)


@pytest.mark.parametrize("model", [THINKER.key, OPENER.key])
def test_a_budget_cuts_the_reasoning_then_the_model_answers(client, model):
    """The budget's tokens are the free run's first reasoning tokens; then studiolo closes the
    reasoning (the gate's own tokens count as reasoning too) and the model answers."""
    free = whole_and_streamed(client, model=model, messages=STORY, max_tokens=24)
    cut = whole_and_streamed(client, model=model, messages=STORY, max_tokens=24,
                             extra_body={"reasoning_budget": 7})
    assert cut.reasoning.strip() and cut.content.strip()
    if model == OPENER.key:  # the prompt opened the reasoning: the free run's reasoning goes on
        assert free.reasoning.startswith(cut.reasoning.rstrip())
    assert 7 <= cut.reasoning_tokens <= 7 + 4  # the budget, and the closing marker's tokens


@pytest.mark.parametrize("model", [THINKER.key, OPENER.key])
def test_a_budget_of_zero_closes_the_reasoning_at_once(client, model):
    reply = whole_and_streamed(client, model=model, messages=STORY, max_tokens=10,
                               extra_body={"reasoning_budget": 0})
    assert not reply.reasoning.strip() and reply.content.strip()


@pytest.mark.parametrize("model", [THINKER.key, OPENER.key])
def test_response_format_applies_to_the_answer_after_the_reasoning(client, model):
    reply = whole_and_streamed(
        client, model=model, messages=STORY, max_tokens=60, extra_body={"reasoning_budget": 6},
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA}})
    assert reply.reasoning.strip() and not reply.reasoning.lstrip().startswith("{")  # free text, not the schema's
    jsonschema.validate(json.loads(reply.content), ANSWER_SCHEMA)
    assert reply.finish == "stop"


@pytest.mark.parametrize("model", [THINKER.key, OPENER.key])
def test_guided_regex_and_json_apply_to_the_answer(client, model):
    reply = whole_and_streamed(client, model=model, messages=SUM, max_tokens=40,
                               extra_body={"reasoning_budget": 5, "guided_regex": "[0-9]{3}"})
    assert reply.reasoning.strip() and re.fullmatch("[0-9]{3}", reply.content)
    reply = whole_and_streamed(client, model=model, messages=SUM, max_tokens=60,
                               extra_body={"reasoning_budget": 5, "guided_json": ANSWER_SCHEMA})
    jsonschema.validate(json.loads(reply.content), ANSWER_SCHEMA)


def test_a_constraint_without_a_budget_still_waits_for_the_answer(client):
    """No budget: the reasoning runs free (and cannot end the output) until max_tokens; nothing of
    it is held to the regex."""
    reply = whole_and_streamed(client, model=OPENER.key, messages=STORY, max_tokens=12,
                               extra_body={"guided_regex": "[0-9]{3}"})
    assert reply.finish == "length" and reply.content == ""
    assert reply.reasoning.strip() and not re.fullmatch("[0-9]*", reply.reasoning)


def test_a_required_tool_call_comes_after_the_reasoning(client):
    reply = whole_and_streamed(client, model=THINKER.key, messages=SUM, max_tokens=60,
                               tools=[MULTIPLY], tool_choice="required", extra_body={"reasoning_budget": 6})
    assert reply.reasoning.strip() and not reply.content.strip()  # the call is parsed out
    assert [call["name"] for call in reply.calls] == ["multiply"]
    jsonschema.validate(json.loads(reply.calls[0]["arguments"]), MULTIPLY["function"]["parameters"])
    assert reply.finish == "tool_calls"


def test_a_budget_on_harmony_closes_the_analysis_and_opens_the_final_channel(client):
    """The gate writes the analysis channel's header (SmolLM2 spells Harmony's markers in 11
    ordinary tokens, which the budget counts too), 5 tokens of reasoning, then the cut."""
    reply = whole_and_streamed(client, model=HARMONY.key, messages=STORY, max_tokens=40,
                               extra_body={"reasoning_budget": 16})
    assert reply.reasoning.strip() and reply.content.strip()
    assert "<|" not in reply.reasoning + reply.content  # the channel markers are parsed out


def test_a_model_default_budget_applies_unless_the_request_gives_one(client, home):
    settings = home / "model-settings" / f"{OPENER.key}.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    field = {"key": "studiolo.prediction.reasoningBudget", "value": 5}
    free = whole_and_streamed(client, model=OPENER.key, messages=STORY, max_tokens=20)
    try:
        settings.write_text(json.dumps({"operation": {"fields": [field]}}))
        by_default = whole_and_streamed(client, model=OPENER.key, messages=STORY, max_tokens=20)
        explicit = whole_and_streamed(client, model=OPENER.key, messages=STORY, max_tokens=20,
                                      extra_body={"reasoning_budget": 5})
        own = whole_and_streamed(client, model=OPENER.key, messages=STORY, max_tokens=20,
                                 extra_body={"reasoning_budget": 9})
    finally:
        settings.unlink()
    assert free.content == ""  # all reasoning within max_tokens
    assert by_default == explicit and by_default.content
    assert own != by_default and own.content


@pytest.mark.parametrize("budget", [-1, 1.5, "many", True])
def test_a_bad_budget_is_a_400_naming_it(server, budget):
    response = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=60, json={
        "model": OPENER.key, "messages": SUM, "reasoning_budget": budget})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "reasoning_budget"


def test_a_budget_with_harmony_tools_is_a_400_naming_it(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=HARMONY.key, messages=SUM, tools=[MULTIPLY], tool_choice="required",
                                       max_tokens=8, extra_body={"reasoning_budget": 4})
    assert refused.value.body["param"] == "reasoning_budget"
