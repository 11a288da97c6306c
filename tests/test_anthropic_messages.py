"""Anthropic's Messages API end to end with the ``anthropic`` SDK (and httpx for the raw stream):
plain, system, multi-turn, prefill, streaming (the SDK's helpers and the raw events in order),
stop sequences, count_tokens, and every error shape.

A message is a chat of the same service as a chat completion, so with greedy decoding its text is
exactly the chat completion's for the same conversation: the tests compare them, and count_tokens
with the prompt tokens both report. SDK 2.17's ``messages.create`` no longer takes ``temperature``
(nor top_p, top_k): they go in ``extra_body``, as studiolo's own ``repeat_penalty``.
"""

from __future__ import annotations

import json
import threading

import anthropic
import httpx
import openai
import pytest

from studiolo.models.defaults import QWEN05, target_path
from tests.conftest import QWEN, SMOLLM, RunningServer, free_port, home_with_models

GREEDY = {"temperature": 0, "repeat_penalty": 1.0}
HELLO = [{"role": "user", "content": "Say hello"}]
MULTI_TURN = [
    {"role": "user", "content": "My name is Ada."},
    {"role": "assistant", "content": "Nice to meet you, Ada!"},
    {"role": "user", "content": "What is my name?"},
]


@pytest.fixture(scope="module")
def server(tmp_path_factory, chat_models):
    home = home_with_models(tmp_path_factory.mktemp("anthropic-home"),
                            {**chat_models, QWEN: target_path(QWEN05)})
    running = RunningServer(home, free_port(), [])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def claude(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="not-needed", max_retries=0, timeout=120,
                               default_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"})


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="not-needed", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=120) as session:
        yield session


def chat(client: openai.OpenAI, messages: list[dict], max_tokens: int, model: str = SMOLLM, **extra):
    return client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                          temperature=0, extra_body={"repeat_penalty": 1.0, **extra})


def text_of(message) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


def prompt_tokens(message) -> int:
    """All the prompt's tokens: Anthropic's input_tokens leave out those read from the cache."""
    usage = message.usage
    return usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens


def test_a_message_is_the_chat_completions_answer(claude, client):
    message = claude.messages.create(model=SMOLLM, max_tokens=12, messages=HELLO, extra_body=GREEDY)
    expected = chat(client, HELLO, 12)
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == SMOLLM
    assert [block.type for block in message.content] == ["text"]
    assert text_of(message) == expected.choices[0].message.content and text_of(message)
    assert message.stop_reason == "max_tokens" and message.stop_sequence is None
    assert prompt_tokens(message) == expected.usage.prompt_tokens
    assert message.usage.output_tokens == expected.usage.completion_tokens == 12
    assert message.usage.cache_creation_input_tokens == 0


def test_a_short_answer_ends_its_turn(claude):
    message = claude.messages.create(model=SMOLLM, max_tokens=200, messages=HELLO, extra_body=GREEDY)
    assert message.stop_reason == "end_turn" and message.usage.output_tokens < 200


def test_system_as_text_and_as_blocks(claude, client):
    blocks = [{"type": "text", "text": "You are a pirate."}, {"type": "text", "text": "Answer in one line."}]
    as_blocks = claude.messages.create(model=SMOLLM, max_tokens=15, system=blocks, messages=HELLO, extra_body=GREEDY)
    as_text = claude.messages.create(model=SMOLLM, max_tokens=15, system="You are a pirate.\nAnswer in one line.",
                                     messages=HELLO, extra_body=GREEDY)
    expected = chat(client, [{"role": "system", "content": "You are a pirate.\nAnswer in one line."}, *HELLO], 15)
    assert text_of(as_blocks) == text_of(as_text) == expected.choices[0].message.content
    plain = claude.messages.create(model=SMOLLM, max_tokens=15, messages=HELLO, extra_body=GREEDY)
    assert text_of(plain) != text_of(as_text)  # the system prompt reached the model


def test_multi_turn(claude, client):
    message = claude.messages.create(model=SMOLLM, max_tokens=15, messages=MULTI_TURN, extra_body=GREEDY)
    assert text_of(message) == chat(client, MULTI_TURN, 15).choices[0].message.content


def test_a_last_assistant_message_is_continued(claude, client):
    prefilled = [*HELLO, {"role": "assistant", "content": "Ahoy"}]
    message = claude.messages.create(model=SMOLLM, max_tokens=10, messages=prefilled, extra_body=GREEDY)
    expected = chat(client, HELLO, 10, resume_response="Ahoy")  # BladeLLM's continuation, the same prompt
    assert text_of(message) == expected.choices[0].message.content
    assert not text_of(message).startswith("Ahoy")


def test_the_stream_helpers_give_the_whole_message(claude):
    whole = claude.messages.create(model=SMOLLM, max_tokens=20, messages=MULTI_TURN, extra_body=GREEDY)
    with claude.messages.stream(model=SMOLLM, max_tokens=20, messages=MULTI_TURN, extra_body=GREEDY) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1 and "".join(pieces) == text_of(final) == text_of(whole)
    assert final.stop_reason == whole.stop_reason and final.id.startswith("msg_")
    assert prompt_tokens(final) == prompt_tokens(whole)
    assert final.usage.output_tokens == whole.usage.output_tokens


def raw_events(http: httpx.Client, body: dict) -> list[tuple[str, dict]]:
    events, name = [], None
    with http.stream("POST", "/v1/messages", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    return events


def test_raw_events_come_named_and_in_anthropics_order(http, claude):
    body = {"model": SMOLLM, "max_tokens": 12, "messages": HELLO, **GREEDY}
    events = raw_events(http, body)
    names = [name for name, _ in events]
    first_block = names.index("content_block_start")
    assert names[0] == "message_start" and set(names[1:first_block]) == {"ping"}  # the prefill's chunks
    assert names[first_block + 1] == "ping"
    names = [name for name in names if name != "ping"]
    assert names[:2] == ["message_start", "content_block_start"]
    assert set(names[2:-3]) == {"content_block_delta"}
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    events = [(name, data) for name, data in events if name != "ping"]
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["output_tokens"] == 0
    assert events[1][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert {delta["type"] for delta in deltas} == {"text_delta"}
    whole = claude.messages.create(model=SMOLLM, max_tokens=12, messages=HELLO, extra_body=GREEDY)
    assert "".join(delta["text"] for delta in deltas) == text_of(whole)
    end = events[-2][1]
    assert end["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert end["usage"]["output_tokens"] == 12
    assert end["usage"]["input_tokens"] + end["usage"]["cache_read_input_tokens"] == start["usage"]["input_tokens"]


def test_a_stop_sequence_ends_the_message_and_is_named(claude, http):
    free = text_of(claude.messages.create(model=SMOLLM, max_tokens=20, messages=HELLO, extra_body=GREEDY))
    word = free.split()[2]  # a word in the middle of the free answer
    message = claude.messages.create(model=SMOLLM, max_tokens=20, messages=HELLO, stop_sequences=["qqq", word],
                                     extra_body=GREEDY)
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == word
    assert text_of(message) == free[:free.index(word)]
    body = {"model": SMOLLM, "max_tokens": 20, "messages": HELLO, "stop_sequences": [word], **GREEDY}
    end = [data for name, data in raw_events(http, body) if name == "message_delta"][0]
    assert end["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": word}


@pytest.mark.parametrize("request_body", [
    {"model": SMOLLM, "messages": HELLO},
    {"model": SMOLLM, "system": "You are a pirate.", "messages": MULTI_TURN},
    {"model": SMOLLM, "system": [{"type": "text", "text": "Be brief."}], "messages": [
        *MULTI_TURN, {"role": "assistant", "content": "Your name"}]},
    {"model": QWEN, "system": "Use tools.", "messages": HELLO, "tools": [
        {"name": "get_weather", "description": "The weather in a city", "input_schema": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]},
], ids=["plain", "system-multi-turn", "system-blocks-prefill", "tools"])
def test_count_tokens_is_the_prompt_a_message_builds(claude, request_body):
    counted = claude.messages.count_tokens(**request_body)
    message = claude.messages.create(max_tokens=1, extra_body=GREEDY, **request_body)
    assert counted.input_tokens == prompt_tokens(message) > 10


def test_count_tokens_counts_the_tools(claude):
    tool = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
    bare = claude.messages.count_tokens(model=QWEN, messages=HELLO).input_tokens
    assert claude.messages.count_tokens(model=QWEN, messages=HELLO, tools=[tool]).input_tokens > bare + 20


def error_of(call) -> tuple[int, dict]:
    with pytest.raises(anthropic.APIStatusError) as caught:
        call()
    return caught.value.status_code, caught.value.body


def test_a_bad_field_is_a_400_naming_it_as_anthropic_does(claude):
    status, body = error_of(lambda: claude.messages.create(
        model=SMOLLM, max_tokens=5, messages=[HELLO[0], {"role": "assistant", "content": [{"type": "video"}]}]))
    assert status == 400 and body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith("messages.1.content.0: Input tag 'video'")
    status, body = error_of(lambda: claude.messages.create(model=SMOLLM, max_tokens=5, messages=HELLO,
                                                           extra_body={"temperature": 1.5}))
    assert status == 400 and body["error"]["message"].startswith("temperature: ")
    status, body = error_of(lambda: claude.messages.create(model=SMOLLM, max_tokens=0, messages=HELLO))
    assert status == 400 and body["error"]["message"].startswith("max_tokens: ")


def test_a_missing_field_and_a_bad_block_by_hand(http):
    response = http.post("/v1/messages", json={"model": SMOLLM, "messages": HELLO})
    assert response.status_code == 400
    assert response.json()["error"] == {"type": "invalid_request_error", "message": "max_tokens: Field required"}
    bad_source = {"type": "image", "source": {"type": "base64", "media_type": "image/png"}}
    response = http.post("/v1/messages", json={"model": SMOLLM, "max_tokens": 5, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Look"}, bad_source]}]})
    assert response.json()["error"]["message"] == "messages.0.content.1.source.data: Field required"
    response = http.post("/v1/messages/count_tokens", json={"model": SMOLLM, "messages": [
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "nope", "content": "1"}]}]})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("messages.0.content.0.tool_use_id: no earlier assistant")


def test_an_unknown_model_is_a_404_not_found_error(claude):
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.messages.create(model="nobody/nothing", max_tokens=5, messages=HELLO)
    assert caught.value.body["error"]["type"] == "not_found_error"
    assert caught.value.body["error"]["message"].startswith("model: ")
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.count_tokens(model="nobody/nothing", messages=HELLO)


def test_too_many_tokens_is_a_400_naming_messages(claude):
    status, body = error_of(lambda: claude.messages.create(
        model=SMOLLM, max_tokens=5, messages=[{"role": "user", "content": "word " * 5000}]))
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith("messages: the prompt is ") and "context" in body["error"]["message"]


def test_a_bad_image_is_a_400_naming_its_data(claude):
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "not base64!"}}
    status, body = error_of(lambda: claude.messages.create(
        model=SMOLLM, max_tokens=5, messages=[{"role": "user", "content": [image]}]))
    assert status == 400
    assert body["error"]["message"] == "messages.0.content.0.source.data: the image's base64 data is broken"


def test_an_unknown_route_under_messages_is_a_404_in_anthropics_shape(http):
    response = http.post("/v1/messages/batches", json={})
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error"


def test_a_failure_mid_stream_is_an_error_event(http):
    """The model unloaded under a running stream: an ``error`` event (503 unavailable is Anthropic's
    529 overloaded_error), after the text that came before it."""
    assert http.post("/api/v1/models/load", json={"model": SMOLLM}).status_code == 200
    body = {"model": SMOLLM, "max_tokens": 2000, "stream": True, "messages": [
        {"role": "user", "content": "Write a very long story about a cat."}], **GREEDY}
    events, name, unloading = [], None, None
    with httpx.Client(base_url=str(http.base_url), timeout=120) as other, \
            http.stream("POST", "/v1/messages", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
                if name == "content_block_delta" and unloading is None:
                    unloading = threading.Thread(target=lambda: other.post(
                        "/api/v1/models/unload", json={"instance_id": SMOLLM}))
                    unloading.start()
        assert unloading is not None
        unloading.join()  # before its client closes
    assert events[-1][0] == "error"
    assert events[-1][1]["type"] == "error" and events[-1][1]["error"]["type"] == "overloaded_error"
    assert "message_stop" not in [name for name, _ in events]


ENDLESS = {"model": SMOLLM, "max_tokens": 100000, "ignore_eos": True, **GREEDY}
FOLLOW_UP_SECONDS = 30.0  # a 4-token answer, on a busy machine


def test_clients_that_leave_cancel_their_generations(server, http):
    """Streams hung up after their first event and whole messages given up on: their sequences end
    (6 of each, more than the 4 parallel slots), so a later message is answered at once."""
    for index in range(6):
        body = {**ENDLESS, "stream": True, "messages": [{"role": "user", "content": f"Tell saga {index}"}]}
        with http.stream("POST", "/v1/messages", json=body) as response:
            assert response.status_code == 200
            next(line for line in response.iter_lines() if line.startswith("data:"))
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{server.base_url}/v1/messages", timeout=0.5,
                       json={**ENDLESS, "messages": [{"role": "user", "content": f"Tell tale {index}"}]})
    response = http.post("/v1/messages", json={"model": SMOLLM, "max_tokens": 4, "messages": HELLO, **GREEDY},
                         timeout=FOLLOW_UP_SECONDS)
    assert response.status_code == 200 and response.json()["usage"]["output_tokens"] == 4
