"""Reasoning on /v1/chat/completions end to end, through the openai client: the reasoning apart from
the answer (whole and streamed), ``reasoning_effort`` and ``chat_template_kwargs`` into the template,
reasoning sent back in the history, reasoning tokens, the server's three reasoning outputs, tool calls
after the reasoning, the model lists and the model log.

The models are tests/reasoning_model.py's copies of small instruct models under real reasoning
templates (THINKER: Qwen2.5-Coder-0.5B with Qwen3's; OPENER: SmolLM2 with QwQ's, which opens
``<think>`` in the prompt; HARMONY: SmolLM2 with gpt-oss's). None of them was trained to reason: these
tests check the plumbing (template, splitting, counting, the wire), not thinking. The shapes come from
the prompt (greedy, seeded: deterministic): THINKER copies a ``<think>…</think>`` it is asked to write
verbatim, and follows an earlier turn's reasoning-then-call in a tool loop; OPENER's output starts
inside the reasoning and a ``max_tokens`` cut leaves it unclosed; HARMONY's analysis message is opened
with ``resume_response``, and the model (copying its system prompt) closes it with ``<|end|>``.
"""

from __future__ import annotations

import io
import json
import threading

import httpx
import openai
import pytest

from studiolo.cli.log_cmd import human_console, render_event
from studiolo.service.model_log import LogHub, model_output_event
from tests.conftest import SMOLLM, RunningServer, free_port, home_with_models
from tests.reasoning_model import HARMONY, OPENER, THINKER, link_reasoning_models

GREEDY = {"temperature": 0, "seed": 1}
VERBATIM = [{"role": "user", "content": "Write the text `<think>2 and 2 make 4.</think>The answer is 4.` verbatim."}]
THOUGHT, ANSWER = "2 and 2 make 4.", "The answer is 4."
HI = [{"role": "user", "content": "Hi"}]
QWEN3_OPEN = "<|im_start|>assistant\n"  # Qwen3's generation prompt with thinking on
QWEN3_OFF = "<|im_start|>assistant\n<think>\n\n</think>\n\n"  # and with thinking off

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
PARIS_CALL = {"id": "call1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
# a tool loop: Qwen3's template keeps the reasoning of the turns after the last user message
TOOL_LOOP = [
    {"role": "user", "content": "What is the weather in Paris and in London?"},
    {"role": "assistant", "content": None, "reasoning_content": "I need the weather in Paris first.",
     "tool_calls": [PARIS_CALL]},
    {"role": "tool", "tool_call_id": "call1", "content": "Sunny, 20 C"},
]


def start_server(tmp_path_factory, default_models, *args: str) -> RunningServer:
    home = home_with_models(tmp_path_factory.mktemp("reasoning-home"), {SMOLLM: default_models[SMOLLM]})
    link_reasoning_models(home)
    return RunningServer(home, free_port(), ["--parallel", "1", "--context-length", "2048", *args])


@pytest.fixture(scope="module")
def rserver(tmp_path_factory, default_models):
    running = start_server(tmp_path_factory, default_models)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def rclient(rserver) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{rserver.base_url}/v1", api_key="x", max_retries=0, timeout=120)


def streamed(client: openai.OpenAI, field: str = "reasoning_content", **request) -> dict:
    """A streamed chat's pieces joined: reasoning, content, calls, the order the kinds came in, usage."""
    joined: dict = {"reasoning": "", "content": "", "calls": {}, "kinds": [], "usage": None, "finish": None}
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **request):
        if chunk.usage is not None:
            joined["usage"] = chunk.usage
        for choice in chunk.choices:
            delta, extra = choice.delta, choice.delta.model_extra or {}
            kinds = [kind for kind, there in (("reasoning", extra.get(field) is not None),
                                              ("content", bool(delta.content)),
                                              ("call", bool(delta.tool_calls))) if there]
            assert len(kinds) <= 1, f"one kind of piece per chunk: {chunk}"
            joined["kinds"] += [k for k in kinds if not joined["kinds"] or joined["kinds"][-1] != k]
            joined["reasoning"] += extra.get(field) or ""
            joined["content"] += delta.content or ""
            for call in delta.tool_calls or ():
                entry = joined["calls"].setdefault(call.index, {"name": None, "arguments": ""})
                entry["name"] = entry["name"] or call.function.name
                entry["arguments"] += call.function.arguments or ""
            joined["finish"] = choice.finish_reason or joined["finish"]
    return joined


def reasoning_of(message) -> str | None:
    return (message.model_extra or {}).get("reasoning_content")


# --- splitting ----------------------------------------------------------------------------------


def test_thinker_reasoning_comes_apart_from_the_answer_whole_and_streamed(rclient):
    request = dict(model=THINKER.key, messages=VERBATIM, max_tokens=30, **GREEDY)
    whole = rclient.chat.completions.create(**request)
    message = whole.choices[0].message
    assert (reasoning_of(message), message.content) == (THOUGHT, ANSWER)
    assert whole.choices[0].finish_reason == "stop"
    # "<think>2 and 2 make 4.</think>" is 13 of the 19 tokens (Qwen2.5 spells each tag in 3)
    assert (whole.usage.completion_tokens_details.reasoning_tokens, whole.usage.completion_tokens) == (13, 19)

    parts = streamed(rclient, **request)
    assert (parts["reasoning"], parts["content"], parts["finish"]) == (THOUGHT, ANSWER, "stop")
    assert parts["kinds"] == ["reasoning", "content"]
    assert parts["usage"].completion_tokens_details.reasoning_tokens == 13


def test_opener_output_starts_inside_the_reasoning_and_a_cut_leaves_it_all_reasoning(rclient):
    """QwQ's template opens <think> in the prompt; cut by max_tokens, the reasoning never closes."""
    request = dict(model=OPENER.key, messages=HI, max_tokens=8, **GREEDY)
    whole = rclient.chat.completions.create(**request)
    message = whole.choices[0].message
    assert reasoning_of(message) == "I'm glad to hear that you"
    assert message.content == "" and whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens_details.reasoning_tokens == whole.usage.completion_tokens == 8
    parts = streamed(rclient, **request)
    assert (parts["reasoning"], parts["content"], parts["kinds"]) == ("I'm glad to hear that you", "", ["reasoning"])


def test_harmony_analysis_channel_is_reasoning_and_the_next_message_the_answer(rclient):
    """The analysis message is opened by resume_response; the model copies its system prompt and
    ends the message with <|end|>; what follows, in a message of no channel, is answer text."""
    request = dict(model=HARMONY.key, messages=[{"role": "user", "content": "Hi"}], max_tokens=90,
                   extra_body={"resume_response": "<|channel|>analysis<|message|>"}, **GREEDY)
    whole = rclient.chat.completions.create(**request)
    message = whole.choices[0].message
    reasoning = reasoning_of(message)
    assert reasoning.startswith("You are ChatGPT, a large language model trained by OpenAI.\n")
    assert reasoning.endswith("Channel must be included for every message.")
    assert "<|" not in reasoning  # the markers are not text of either part
    # then it starts copying its system prompt again, as the answer, until max_tokens. Where the copy
    # skips lines is a near-tie (tests/batching.py): 77 reasoning tokens on one CPU, 68 on another
    assert message.content.startswith("You are") and reasoning.startswith(message.content)
    usage = whole.usage
    assert usage.completion_tokens == 90 and 0 < usage.completion_tokens_details.reasoning_tokens < 90
    parts = streamed(rclient, **request)
    assert (parts["reasoning"], parts["content"]) == (reasoning, message.content)
    assert parts["kinds"] == ["reasoning", "content"]


def test_a_model_without_reasoning_sends_no_reasoning_field(rserver):
    """SmolLM2's own template knows no <think>: text after a <think> it is given stays content."""
    body = httpx.post(f"{rserver.base_url}/v1/chat/completions", timeout=60, json={
        "model": SMOLLM, "messages": HI, "max_tokens": 8, "reasoning_effort": "high",
        "resume_response": "<think>", **GREEDY}).json()
    message = body["choices"][0]["message"]
    assert "reasoning_content" not in message and message["content"]
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0


# --- effort and template variables --------------------------------------------------------------


def echoed_prompt(client: openai.OpenAI, model: str, **extra) -> str:
    """The prompt as the template rendered it (chat echo), with one token of output after it."""
    body = extra.pop("extra_body", {})
    response = client.chat.completions.create(model=model, messages=HI, max_tokens=1, **GREEDY, **extra,
                                              extra_body={"echo": True, **body})
    return response.choices[0].message.content


@pytest.mark.parametrize(("extra", "thinking"), [
    ({}, True),
    ({"reasoning_effort": "minimal"}, True),  # an effort on a model that only thinks or not: on
    ({"reasoning_effort": "none"}, False),
    ({"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}}, False),
    # the explicit reasoning option wins over chat_template_kwargs
    ({"reasoning_effort": "high", "extra_body": {"chat_template_kwargs": {"enable_thinking": False}}}, True),
])
def test_effort_and_template_kwargs_switch_qwen3_thinking(rclient, extra, thinking):
    prompt = echoed_prompt(rclient, THINKER.key, **extra)
    assert QWEN3_OPEN in prompt and (QWEN3_OFF in prompt) is not thinking


def test_thinking_off_leaves_the_whole_output_answer(rclient):
    response = rclient.chat.completions.create(model=THINKER.key, messages=VERBATIM, max_tokens=30,
                                               reasoning_effort="none", **GREEDY)
    message = response.choices[0].message
    assert reasoning_of(message) is None and message.content == ANSWER
    assert response.usage.completion_tokens_details.reasoning_tokens == 0
    # QwQ's template closes the <think> it opens: its output is answer from the start
    prompt = echoed_prompt(rclient, OPENER.key, reasoning_effort="none")
    assert "<|im_start|>assistant\n<think>\n</think>" in prompt


@pytest.mark.parametrize(("effort", "line"), [
    (None, "Reasoning: medium"), ("minimal", "Reasoning: low"), ("low", "Reasoning: low"),
    ("high", "Reasoning: high"), ("xhigh", "Reasoning: high"),
])
def test_efforts_reach_the_gpt_oss_template(rclient, effort, line):
    prompt = echoed_prompt(rclient, HARMONY.key, **({"reasoning_effort": effort} if effort else {}))
    assert [said for said in ("Reasoning: low", "Reasoning: medium", "Reasoning: high") if said in prompt] == [line]


@pytest.mark.parametrize(("model", "body", "param", "says"), [
    (HARMONY.key, {"reasoning_effort": "none"}, "reasoning_effort", "cannot switch its reasoning off"),
    (THINKER.key, {"reasoning_effort": "max"}, "reasoning_effort", "xhigh"),
    (THINKER.key, {"chat_template_kwargs": {"add_generation_prompt": False}}, "chat_template_kwargs",
     "add_generation_prompt"),
    (THINKER.key, {"chat_template_kwargs": {"messages": []}}, "chat_template_kwargs", "messages"),
    (THINKER.key, {"chat_template_kwargs": ["enable_thinking"]}, "chat_template_kwargs", "dictionary"),
])
def test_refusals_name_the_field(rserver, model, body, param, says):
    response = httpx.post(f"{rserver.base_url}/v1/chat/completions", timeout=60,
                          json={"model": model, "messages": HI, "max_tokens": 1, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and says in error["message"]


# --- history and tools --------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["reasoning_content", "reasoning"])
def test_reasoning_sent_back_reaches_the_template_and_a_call_after_reasoning_is_a_call(rclient, key):
    messages = [dict(m) for m in TOOL_LOOP]
    messages[1][key] = messages[1].pop("reasoning_content")
    request = dict(model=THINKER.key, messages=messages, tools=[WEATHER], max_tokens=60, **GREEDY)
    prompt = rclient.chat.completions.create(**{**request, "max_tokens": 1, "extra_body": {"echo": True}})
    assert ("<|im_start|>assistant\n<think>\nI need the weather in Paris first.\n</think>\n\n<tool_call>"
            in prompt.choices[0].message.content)

    whole = rclient.chat.completions.create(**request)
    choice = whole.choices[0]
    assert reasoning_of(choice.message) == "The weather in Paris is sunny with a temperature of 20°C."
    assert choice.message.content is None and choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "London"})
    assert whole.usage.completion_tokens_details.reasoning_tokens == 21

    parts = streamed(rclient, **request)
    assert parts["reasoning"] == reasoning_of(choice.message) and parts["content"] == ""
    assert parts["calls"] == {0: {"name": "get_weather", "arguments": call.function.arguments}}
    assert parts["kinds"] == ["reasoning", "call"] and parts["finish"] == "tool_calls"


def test_without_reasoning_sent_back_the_template_has_none_to_keep(rclient):
    messages = [dict(m) for m in TOOL_LOOP]
    del messages[1]["reasoning_content"]
    response = rclient.chat.completions.create(model=THINKER.key, messages=messages, tools=[WEATHER], max_tokens=1,
                                               extra_body={"echo": True}, **GREEDY)
    assert "<think>" not in response.choices[0].message.content


# --- the server's reasoning output --------------------------------------------------------------


@pytest.mark.parametrize("setting", ["reasoning", "content"])
def test_the_server_setting_says_where_reasoning_goes(tmp_path_factory, default_models, setting):
    server = start_server(tmp_path_factory, default_models, "--reasoning-output", setting)
    try:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=120)
        request = dict(model=THINKER.key, messages=VERBATIM, max_tokens=30, **GREEDY)
        whole = client.chat.completions.create(**request)
        message = whole.choices[0].message
        extra = message.model_extra or {}
        assert "reasoning_content" not in extra
        assert whole.usage.completion_tokens_details.reasoning_tokens == 13  # counted either way
        parts = streamed(client, field="reasoning", **request)
        if setting == "reasoning":  # the same text under the name gpt-oss clients read
            assert (extra["reasoning"], message.content) == (THOUGHT, ANSWER)
            assert (parts["reasoning"], parts["content"]) == (THOUGHT, ANSWER)
        else:  # left in the content, in tags
            assert "reasoning" not in extra
            assert message.content == f"<think>{THOUGHT}</think>\n\n{ANSWER}"
            assert (parts["reasoning"], parts["content"]) == ("", message.content)
    finally:
        server.stop()


# --- model lists and the model log --------------------------------------------------------------


def test_model_lists_read_reasoning_from_the_template(rserver):
    v1 = {m["key"]: m for m in httpx.get(f"{rserver.base_url}/api/v1/models", timeout=30).json()["models"]}
    assert v1[THINKER.key]["capabilities"]["reasoning"] == {"allowed_options": ["off", "on"], "default": "on"}
    assert v1[OPENER.key]["capabilities"]["reasoning"] == {"allowed_options": ["off", "on"], "default": "on"}
    assert v1[HARMONY.key]["capabilities"]["reasoning"] == {"allowed_options": ["low", "medium", "high"],
                                                            "default": "medium"}
    assert "reasoning" not in v1[SMOLLM]["capabilities"]
    v0 = {m["id"]: m for m in httpx.get(f"{rserver.base_url}/api/v0/models", timeout=30).json()["data"]}
    assert v0[THINKER.key]["capabilities"] == ["tool_use", "reasoning", "decisions"]
    # gpt-oss' template cannot switch thinking off: its decisions would be read inside its reasoning
    assert v1[HARMONY.key]["capabilities"]["decisions"] is False and v1[OPENER.key]["capabilities"]["decisions"]
    assert "reasoning" in v0[HARMONY.key]["capabilities"] and "reasoning" not in v0[SMOLLM]["capabilities"]


def test_the_model_log_shows_reasoning_apart_from_the_answer(rserver, rclient):
    events: list[dict] = []
    subscribed = threading.Event()

    def read() -> None:
        with httpx.stream("GET", f"{rserver.base_url}/studiolo/log/stream", params={"source": "model"},
                          timeout=60) as response:
            subscribed.set()
            for line in response.iter_lines():
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
                    if events[-1].get("type") == "output":
                        return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert subscribed.wait(30)
    # the subscription is live once the server has answered its headers; a request then is logged
    rclient.chat.completions.create(model=THINKER.key, messages=VERBATIM, max_tokens=30, **GREEDY)
    reader.join(60)
    output = events[-1]
    assert output["type"] == "output" and (output["reasoning"], output["text"]) == (THOUGHT, ANSWER)


def test_the_log_command_prints_reasoning_under_its_own_heading():
    buffer = io.StringIO()
    event = model_output_event("chatcmpl-1", "some/model", 0, ANSWER, 19, "eos", 10.0, 0.5, reasoning=THOUGHT)
    render_event(human_console(buffer), LogHub.stamp("model", event))
    header, *body, stats = buffer.getvalue().splitlines()
    assert header.endswith(" output chatcmpl-1 some/model choice 0")
    assert body == ["reasoning:", THOUGHT, "answer:", ANSWER]
    assert stats.startswith("19 tokens")
