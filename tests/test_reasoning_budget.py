"""Reasoning budgets and constraints that wait for the answer, end to end through
``/v1/chat/completions`` with the openai client, streamed and whole: THINKER (Qwen 0.5B with
Qwen3's template: the output may open ``<think>``, and the gate opens it when a budget or a
constraint asks) and OPENER (SmolLM2 with QwQ's template: the prompt opens ``<think>``).

These models were not trained to reason (tests/reasoning_model.py): the tests check the plumbing.
The reasoning is left in the content here (the split into ``reasoning_content`` is other work), so
the tests split the content on ``</think>`` themselves. Greedy runs: the streamed content is the
whole one, exactly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import RunningServer, free_port
from tests.reasoning_model import HARMONY, OPENER, THINKER, link_reasoning_models

CLOSE = "</think>"
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


def whole_and_streamed(client, **kwargs) -> tuple[str, list, str]:
    """The content, tool calls and finish reason of a greedy request, asserted equal streamed and whole."""
    kwargs.setdefault("temperature", 0)
    kwargs.setdefault("max_tokens", 40)
    whole = client.chat.completions.create(**kwargs).choices[0]
    content, calls, finish = "", {}, None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for call in choice.delta.tool_calls or ():
                entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
                entry["name"] += call.function.name or ""
                entry["arguments"] += call.function.arguments or ""
            finish = choice.finish_reason or finish
    whole_calls = [{"name": c.function.name, "arguments": c.function.arguments}
                   for c in whole.message.tool_calls or ()]
    assert (content, [calls[i] for i in sorted(calls)], finish) == \
        (whole.message.content or "", whole_calls, whole.finish_reason)
    return content, whole_calls, finish


def split(content: str) -> tuple[str, str]:
    """(reasoning, answer): the content around the close marker, without the whitespace after it."""
    assert CLOSE in content, content
    reasoning, answer = content.split(CLOSE, 1)
    return reasoning, answer.lstrip()


def cut_at(client, model: str, budget: int) -> list:
    """The output's tokens with their logprobs, for a budget: where the reasoning was cut shows."""
    response = client.chat.completions.create(model=model, messages=STORY, temperature=0, max_tokens=24,
                                              logprobs=True, extra_body={"reasoning_budget": budget})
    return response.choices[0].logprobs.content


@pytest.mark.parametrize(("model", "opened"), [(THINKER.key, True), (OPENER.key, False)])
def test_a_budget_cuts_the_reasoning_then_the_model_answers(client, model, opened):
    """``opened``: the gate opened ``<think>`` itself (the budget counts its tokens too)."""
    budget = 7
    tokens = cut_at(client, model, budget)
    text = "".join(token.token for token in tokens)
    reasoning, answer = split(text)
    assert text.startswith("<think>\n") == opened
    cut = re.match(r"\n?</think>\n\n", text[len("".join(t.token for t in tokens[:budget])):])
    assert cut, text  # the cut follows the budget's tokens exactly
    gate_tokens = [t for t in tokens if t.logprob == 0.0]  # what studiolo appended: certain
    assert "".join(t.token for t in gate_tokens).endswith(cut.group())
    assert reasoning.strip() and answer.strip()
    content, _, _ = whole_and_streamed(client, model=model, messages=STORY, max_tokens=24,
                                       extra_body={"reasoning_budget": budget})
    assert content == text


@pytest.mark.parametrize("model", [THINKER.key, OPENER.key])
def test_a_budget_of_zero_closes_the_reasoning_at_once(client, model):
    content, _, _ = whole_and_streamed(client, model=model, messages=STORY, max_tokens=10,
                                       extra_body={"reasoning_budget": 0})
    assert content.startswith("<think>\n</think>\n\n" if model == THINKER.key else "</think>\n\n"), content
    assert split(content)[1]


@pytest.mark.parametrize("model", [THINKER.key, OPENER.key])
def test_response_format_applies_to_the_answer_after_the_reasoning(client, model):
    content, _, finish = whole_and_streamed(
        client, model=model, messages=STORY, max_tokens=60, extra_body={"reasoning_budget": 6},
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA}})
    reasoning, answer = split(content)
    assert reasoning.strip() and not reasoning.lstrip().startswith("{")  # free text, not the schema's
    jsonschema.validate(json.loads(answer), ANSWER_SCHEMA)
    assert finish == "stop"


@pytest.mark.parametrize("model", [THINKER.key, OPENER.key])
def test_guided_regex_and_json_apply_to_the_answer(client, model):
    content, _, _ = whole_and_streamed(client, model=model, messages=SUM, max_tokens=40,
                                       extra_body={"reasoning_budget": 5, "guided_regex": "[0-9]{3}"})
    assert re.fullmatch("[0-9]{3}", split(content)[1])
    content, _, _ = whole_and_streamed(client, model=model, messages=SUM, max_tokens=60,
                                       extra_body={"reasoning_budget": 5, "guided_json": ANSWER_SCHEMA})
    jsonschema.validate(json.loads(split(content)[1]), ANSWER_SCHEMA)


def test_a_constraint_without_a_budget_still_waits_for_the_answer(client):
    """No budget: the reasoning runs free (and cannot end the output) until max_tokens; nothing of
    it is held to the regex."""
    content, _, finish = whole_and_streamed(client, model=OPENER.key, messages=STORY, max_tokens=12,
                                            extra_body={"guided_regex": "[0-9]{3}"})
    assert finish == "length" and CLOSE not in content and not re.fullmatch("[0-9]*", content)


def test_a_required_tool_call_comes_after_the_reasoning(client):
    content, calls, finish = whole_and_streamed(client, model=THINKER.key, messages=SUM, max_tokens=60,
                                                tools=[MULTIPLY], tool_choice="required",
                                                extra_body={"reasoning_budget": 6})
    assert content.startswith("<think>\n") and content.rstrip().endswith(CLOSE)  # the call is parsed out
    assert [call["name"] for call in calls] == ["multiply"]
    jsonschema.validate(json.loads(calls[0]["arguments"]), MULTIPLY["function"]["parameters"])
    assert finish == "tool_calls"


def test_a_budget_on_harmony_closes_the_analysis_and_opens_the_final_channel(client):
    content, _, _ = whole_and_streamed(client, model=HARMONY.key, messages=STORY, max_tokens=40,
                                       extra_body={"reasoning_budget": 4})
    assert "<|end|><|start|>assistant<|channel|>final<|message|>" in content
    assert content.split("<|channel|>final<|message|>", 1)[1]


def test_a_model_default_budget_applies_unless_the_request_gives_one(client, home):
    settings = home / "model-settings" / f"{OPENER.key}.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    field = {"key": "studiolo.prediction.reasoningBudget", "value": 5}
    free, _, _ = whole_and_streamed(client, model=OPENER.key, messages=STORY, max_tokens=20)
    try:
        settings.write_text(json.dumps({"operation": {"fields": [field]}}))
        by_default, _, _ = whole_and_streamed(client, model=OPENER.key, messages=STORY, max_tokens=20)
        explicit, _, _ = whole_and_streamed(client, model=OPENER.key, messages=STORY, max_tokens=20,
                                            extra_body={"reasoning_budget": 5})
        own, _, _ = whole_and_streamed(client, model=OPENER.key, messages=STORY, max_tokens=20,
                                       extra_body={"reasoning_budget": 9})
    finally:
        settings.unlink()
    assert CLOSE not in free
    assert by_default == explicit and CLOSE in by_default
    assert own != by_default and CLOSE in own


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
