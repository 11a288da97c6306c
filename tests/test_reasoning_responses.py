"""Reasoning on /v1/responses end to end, through the openai client's Responses API: reasoning items
before the answer (whole and streamed, with OpenAI's reasoning_text events), reasoning tokens,
``reasoning.effort`` into the template, reasoning items sent back in ``input``, and stored
conversations continued with ``previous_response_id`` (after a server restart too), and the 400s.

The models are tests/reasoning_model.py's copies of small instruct models under real reasoning
templates. None of them was trained to reason: these tests check the plumbing (template, splitting,
counting, storing, the wire), not thinking. The shapes come from the prompt, greedy and seeded
(deterministic): THINKER (Qwen2.5-Coder-0.5B under Qwen3's template) copies a ``<think>…</think>``
it is asked to write verbatim, and follows an earlier turn's reasoning-then-call in a tool loop;
OPENER (SmolLM2 under QwQ's template, which opens ``<think>`` in the prompt) is cut by
``max_output_tokens`` inside its reasoning. The outputs are the ones tests/test_reasoning_chat.py
gets from the same prompts through chat completions.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from studiolo.api.responses.render import OutputItems
from studiolo.service.items import chat_messages
from studiolo.service.types import Finished, ReasoningDelta, TextDelta, ToolCallDelta
from tests.conftest import SMOLLM
from tests.reasoning_model import HARMONY, OPENER, THINKER
from tests.reasoning_wire import prompts_sent, reasoning_home, start_server
from tests.responses_spec import event_errors, item_list_errors, response_errors

SEED = {"temperature": 0, "extra_body": {"seed": 1}}
VERBATIM = "Write the text `<think>2 and 2 make 4.</think>The answer is 4.` verbatim."
THOUGHT, ANSWER = "2 and 2 make 4.", "The answer is 4."
QWEN3_OFF = "<|im_start|>assistant\n<think>\n\n</think>\n\n"  # Qwen3's generation prompt with thinking off

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
EARLIER_REASONING = "I need the weather in Paris first."
TOOL_LOOP = [  # a tool loop: Qwen3's template keeps the reasoning of the turns after the last user message
    {"role": "user", "content": "What is the weather in Paris and in London?"},
    {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": EARLIER_REASONING}]},
    {"type": "function_call", "call_id": "call1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
    {"type": "function_call_output", "call_id": "call1", "output": "Sunny, 20 C"},
]
LOOP_REASONING = "The weather in Paris is sunny with a temperature of 20°C."  # what THINKER writes next


def think_block(text: str) -> str:
    return f"<|im_start|>assistant\n<think>\n{text}\n</think>\n\n<tool_call>"


@pytest.fixture(scope="module")
def rserver(tmp_path_factory, default_models):
    running = start_server(reasoning_home(tmp_path_factory, default_models))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(rserver) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{rserver.base_url}/v1", api_key="x", max_retries=0, timeout=120)


def post(server, **body) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/responses", json=body, timeout=120)


def streamed(client: openai.OpenAI, **request) -> list[dict]:
    with client.responses.create(stream=True, **request) as stream:
        return [event.model_dump(mode="json", exclude_unset=True) for event in stream]


# --- rendering ----------------------------------------------------------------------------------


def test_reasoning_items_come_first_and_later_items_count_from_them():
    output = OutputItems(with_logprobs=False)
    deltas = (ReasoningDelta(0, "Paris"), ReasoningDelta(0, " first."), TextDelta(0, "Let me look."),
              ToolCallDelta(0, 0, "call_1", "get_weather"), ToolCallDelta(0, 0, arguments="{}"),
              Finished(0, "tool_calls"))
    events = [event for delta in deltas for event in output.feed(delta)]
    assert [item["type"] for item in output.items] == ["reasoning", "message", "function_call"]
    assert output.items[0]["content"] == [{"type": "reasoning_text", "text": "Paris first."}]
    assert output.items[0]["summary"] == [] and output.items[0]["id"].startswith("rs_")
    added = [(event["output_index"], event["item"]["type"]) for event in events
             if event["type"] == "response.output_item.added"]
    assert added == [(0, "reasoning"), (1, "message"), (2, "function_call")]
    assert [event["delta"] for event in events if event["type"] == "response.reasoning_text.delta"] == \
        ["Paris", " first."]


def test_reasoning_cut_short_is_an_incomplete_item_and_an_empty_message():
    output = OutputItems(with_logprobs=False)
    for delta in (ReasoningDelta(0, "Hmm"), Finished(0, "length", "max_tokens")):
        output.feed(delta)
    assert [(item["type"], item["status"]) for item in output.items] == [("reasoning", "incomplete"),
                                                                       ("message", "incomplete")]
    assert output.status == "incomplete"


def test_reasoning_items_go_with_the_next_assistant_message():
    items = [{"type": "message", "role": "user", "content": "Hi"},
             {"type": "reasoning", "summary": [{"type": "summary_text", "text": "only a summary"}]},
             {"type": "message", "role": "assistant", "content": "Hello"},
             {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
             {"type": "reasoning", "content": [{"type": "reasoning_text", "text": "then this"}]},
             {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{}"},
             {"type": "reasoning", "content": [{"type": "reasoning_text", "text": "dropped"}]},
             {"type": "message", "role": "user", "content": "Bye"}]
    messages = chat_messages(items)
    assert [(m.role, m.content, [c.id for c in m.tool_calls], m.reasoning) for m in messages] == [
        ("user", "Hi", [], None), ("assistant", "Hello", ["c1"], "only a summary"),
        ("assistant", None, ["c2"], "then this"), ("user", "Bye", [], None)]


# --- output -------------------------------------------------------------------------------------


def test_reasoning_is_an_item_before_the_message_whole_and_streamed(rserver, client):
    request = dict(model=THINKER.key, input=VERBATIM, max_output_tokens=30, **SEED)
    whole = post(rserver, model=THINKER.key, input=VERBATIM, max_output_tokens=30, temperature=0, seed=1).json()
    assert response_errors(whole) == []
    reasoning, message = whole["output"]
    assert reasoning["type"] == "reasoning" and reasoning["id"].startswith("rs_")
    assert (reasoning["summary"], reasoning["content"], reasoning["status"]) == (
        [], [{"type": "reasoning_text", "text": THOUGHT}], "completed")
    assert message["content"][0]["text"] == ANSWER
    # "<think>2 and 2 make 4.</think>" is 13 of the 19 tokens (Qwen2.5 spells each tag in 3)
    usage = whole["usage"]
    assert (usage["output_tokens_details"]["reasoning_tokens"], usage["output_tokens"]) == (13, 19)
    assert whole["reasoning"] == {"effort": None, "summary": None}

    typed = client.responses.create(**request)
    assert typed.output_text == ANSWER and typed.output[0].content[0].text == THOUGHT

    events = streamed(client, **request)
    for event in events:
        assert event_errors(event) == [], event["type"]
    kinds = [event["type"] for event in events]
    assert kinds[:6] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added", "response.reasoning_text.delta",
                         "response.reasoning_text.delta"]
    first_text = kinds.index("response.output_text.delta")
    assert kinds[kinds.index("response.reasoning_text.done"):first_text] == [
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added"]
    deltas = [event for event in events if event["type"] == "response.reasoning_text.delta"]
    assert "".join(event["delta"] for event in deltas) == THOUGHT
    assert {(event["output_index"], event["content_index"]) for event in deltas} == {(0, 0)}
    texts = [event for event in events if event["type"] == "response.output_text.delta"]
    assert "".join(event["delta"] for event in texts) == ANSWER and {e["output_index"] for e in texts} == {1}
    done = next(event for event in events if event["type"] == "response.reasoning_text.done")
    assert (done["text"], done["item_id"]) == (THOUGHT, deltas[0]["item_id"])
    final = events[-1]["response"]
    assert events[-1]["type"] == "response.completed"
    assert [item["type"] for item in final["output"]] == ["reasoning", "message"]
    assert final["output"][0]["content"] == reasoning["content"] and final["output"][0]["id"] == done["item_id"]
    assert final["usage"]["output_tokens_details"]["reasoning_tokens"] == 13


def test_a_cut_inside_the_reasoning_leaves_an_incomplete_reasoning_item(client):
    """QwQ's template opens <think> in the prompt; cut by max_output_tokens, the reasoning never closes."""
    response = client.responses.create(model=OPENER.key, input="Hi", max_output_tokens=8, **SEED)
    assert response.status == "incomplete"
    reasoning, message = response.output
    assert (reasoning.type, reasoning.status, reasoning.content[0].text) == (
        "reasoning", "incomplete", "I'm glad to hear that you")
    assert message.type == "message" and response.output_text == ""
    assert response.usage.output_tokens_details.reasoning_tokens == response.usage.output_tokens == 8


def test_a_model_without_reasoning_has_no_reasoning_item(client):
    response = client.responses.create(model=SMOLLM, input="Hi", max_output_tokens=4,
                                       reasoning={"effort": "high"}, **SEED)
    assert [item.type for item in response.output] == ["message"]
    assert response.usage.output_tokens_details.reasoning_tokens == 0


# --- effort -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "effort", "said"), [
    (HARMONY.key, None, "Reasoning: medium"), (HARMONY.key, "minimal", "Reasoning: low"),
    (HARMONY.key, "high", "Reasoning: high"), (HARMONY.key, "xhigh", "Reasoning: high"),
    (THINKER.key, "none", QWEN3_OFF), (THINKER.key, "low", "<|im_start|>assistant\n"),
])
def test_the_effort_reaches_the_template_and_is_echoed(rserver, client, model, effort, said):
    reasoning = {"effort": effort, "summary": "auto"} if effort else None
    with prompts_sent(rserver.base_url) as prompts:
        response = client.responses.create(model=model, input="Hi", max_output_tokens=1, reasoning=reasoning, **SEED)
    [prompt] = prompts
    assert said in prompt
    if model == HARMONY.key:
        assert [line for line in ("Reasoning: low", "Reasoning: medium", "Reasoning: high") if line in prompt] == [said]
    else:
        assert (QWEN3_OFF in prompt) is (effort == "none")
    assert (response.reasoning.effort, response.reasoning.summary) == (effort, None)  # no summary is written


def test_thinking_off_makes_the_whole_output_the_answer(client):
    response = client.responses.create(model=THINKER.key, input=VERBATIM, max_output_tokens=30,
                                       reasoning={"effort": "none"}, **SEED)
    assert [item.type for item in response.output] == ["message"] and response.output_text == ANSWER
    assert response.usage.output_tokens_details.reasoning_tokens == 0


@pytest.mark.parametrize(("model", "body", "param", "says"), [
    (HARMONY.key, {"reasoning": {"effort": "none"}}, "reasoning.effort", "cannot switch its reasoning off"),
    (THINKER.key, {"reasoning": {"effort": "max"}}, "reasoning.effort", "xhigh"),
    (THINKER.key, {"reasoning": {"summary": "brief"}}, "reasoning.summary", "concise"),
    (THINKER.key, {"input": [{"type": "reasoning", "content": [{"type": "output_text", "text": "x"}]}]},
     "input[0].content[0].type", "reasoning_text"),
])
def test_refusals_name_the_field(rserver, model, body, param, says):
    response = post(rserver, **{"model": model, "input": "Hi", "max_output_tokens": 1, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and says in error["message"], error


# --- reasoning sent back, stored and continued ----------------------------------------------------


def test_a_reasoning_item_sent_back_reaches_the_template_and_a_call_follows_the_reasoning(rserver, client):
    request = dict(model=THINKER.key, input=TOOL_LOOP, tools=[WEATHER], max_output_tokens=60, store=False, **SEED)
    with prompts_sent(rserver.base_url) as prompts:
        response = client.responses.create(**request)
    assert think_block(EARLIER_REASONING) in prompts[0]
    reasoning, call = response.output
    assert (reasoning.type, reasoning.content[0].text) == ("reasoning", LOOP_REASONING)
    assert (call.type, call.name, json.loads(call.arguments)) == ("function_call", "get_weather", {"city": "London"})
    assert response.usage.output_tokens_details.reasoning_tokens == 21

    events = streamed(client, **request)
    added = [(event["output_index"], event["item"]["type"]) for event in events
             if event["type"] == "response.output_item.added"]
    assert added == [(0, "reasoning"), (1, "function_call")]
    arguments = [event for event in events if event["type"] == "response.function_call_arguments.delta"]
    assert {event["output_index"] for event in arguments} == {1}
    assert "".join(event["delta"] for event in arguments) == call.arguments


def continue_loop(client, previous_id: str, call_id: str):
    """The tool loop's next turn: London's weather, answering the stored response's call."""
    result = {"type": "function_call_output", "call_id": call_id, "output": "Rainy, 15 C"}
    return client.responses.create(model=THINKER.key, previous_response_id=previous_id, tools=[WEATHER],
                                   input=[result], max_output_tokens=1, **SEED)


def test_stored_reasoning_continues_with_previous_response_id_and_after_a_restart(tmp_path_factory, default_models):
    home = reasoning_home(tmp_path_factory, default_models)  # its own store, for its own restart
    rserver = start_server(home)
    try:
        client = openai.OpenAI(base_url=f"{rserver.base_url}/v1", api_key="x", max_retries=0, timeout=120)
        prompts = first_turn_and_its_continuation(rserver, client)
    finally:
        rserver.stop()
    restarted = start_server(home)
    try:
        again = openai.OpenAI(base_url=f"{restarted.base_url}/v1", api_key="x", max_retries=0, timeout=120)
        first_id, call_id = prompts.pop()
        with prompts_sent(restarted.base_url) as after:
            continue_loop(again, first_id, call_id)
        assert after == prompts  # the reasoning came back from the store
    finally:
        restarted.stop()


def first_turn_and_its_continuation(rserver, client) -> list:
    """A tool loop's turn stored, then continued; the continuation's prompt, then (the stored
    response's id, its call's id)."""
    first = client.responses.create(model=THINKER.key, input=TOOL_LOOP, tools=[WEATHER], max_output_tokens=60, **SEED)
    call = first.output[1]
    stored = client.responses.retrieve(first.id)
    assert [item.type for item in stored.output] == ["reasoning", "function_call"]
    assert stored.output[0].content[0].text == LOOP_REASONING
    assert stored.usage.output_tokens_details.reasoning_tokens == 21
    listed = httpx.get(f"{rserver.base_url}/v1/responses/{first.id}/input_items?order=asc", timeout=30).json()
    assert item_list_errors(listed) == []
    assert listed["data"][1]["type"] == "reasoning" and listed["data"][1]["id"].startswith("rs_")
    assert listed["data"][1]["content"] == [{"type": "reasoning_text", "text": EARLIER_REASONING}]

    # both turns' reasoning stays in the prompt: Qwen3's template keeps it within a tool loop
    with prompts_sent(rserver.base_url) as prompts:
        continue_loop(client, first.id, call.call_id)
    assert think_block(EARLIER_REASONING) in prompts[0] and think_block(LOOP_REASONING) in prompts[0]
    return [*prompts, (first.id, call.call_id)]


def test_a_new_user_message_leaves_earlier_reasoning_out_as_qwen3_says(rserver, client):
    first = client.responses.create(model=THINKER.key, input=VERBATIM, max_output_tokens=30, **SEED)
    assert first.output[0].type == "reasoning"
    with prompts_sent(rserver.base_url) as prompts:
        client.responses.create(model=THINKER.key, input="And 3 and 3?", previous_response_id=first.id,
                                max_output_tokens=1, **SEED)
    assert f"<|im_start|>assistant\n{ANSWER}<|im_end|>" in prompts[0] and f"<think>\n{THOUGHT}" not in prompts[0]


def test_a_compaction_summary_leaves_the_reasoning_out(rserver):
    """QwQ's template opens <think>; cut inside it, the model wrote reasoning only: no summary text."""
    response = httpx.post(f"{rserver.base_url}/v1/responses/compact", timeout=120, json={
        "model": OPENER.key, "input": "Hi", "max_output_tokens": 8, "temperature": 0, "seed": 1})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["output"][-1] == {**body["output"][-1], "type": "compaction", "encrypted_content": ""}
    assert body["usage"]["output_tokens_details"]["reasoning_tokens"] == body["usage"]["output_tokens"] == 8


def test_a_reasoning_budget_closes_the_reasoning_and_a_schema_holds_the_answer(client):
    """OPENER's prompt opens the reasoning; at the budget studiolo closes it, and the answer follows
    ``text.format`` (the constraint waits for the answer), whole and streamed alike."""
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    request = {"model": OPENER.key, "input": "Hi", "max_output_tokens": 40, "temperature": 0,
               "extra_body": {"seed": 1, "reasoning_budget": 6},
               "text": {"format": {"type": "json_schema", "name": "n", "schema": schema}}}
    response = client.responses.create(**request)
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and reasoning.content[0].text.strip()
    assert json.loads(response.output_text).keys() == {"n"}
    assert response.usage.output_tokens_details.reasoning_tokens >= 6
    events = streamed(client, **request)
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_text.delta")
    assert deltas == reasoning.content[0].text
    final = events[-1]["response"]["output"][-1]["content"][0]["text"]
    assert final == response.output_text


def test_a_bad_reasoning_budget_is_a_400_naming_it(rserver):
    response = post(rserver, model=OPENER.key, input="Hi", reasoning_budget=-1)
    assert response.status_code == 400 and response.json()["error"]["param"] == "reasoning_budget"
