"""LM Studio's stateful chat, POST /api/v1/chat: stored responses, continuation and branching,
streamed events, and conversations that survive a SIGKILL of the server.

A server of its own (its own STUDIOLO_HOME, so its response store is this module's alone). What
the model saw is read from the prompt log (/studiolo/log/stream), not inferred from its answers.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time

import httpx
import pytest

from studiolo.service.conversations import Conversations
from studiolo.service.items import assistant_message, user_message
from studiolo.store.responses import ResponseStore
from tests.conftest import GEMMA, MINILM, SMOLLM, RunningServer, free_port, hang_up, home_with_models

CHAT = "/api/v1/chat"


@pytest.fixture(scope="module")
def chat_home(tmp_path_factory, default_models):
    return home_with_models(tmp_path_factory.mktemp("stateful-home"), default_models)


@pytest.fixture(scope="module")
def chat_server(chat_home):
    running = RunningServer(chat_home, free_port(), [])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def api(chat_server):
    with httpx.Client(base_url=chat_server.base_url, timeout=120) as session:
        yield session


def say(api: httpx.Client, text: str, previous: str | None = None, **extra) -> dict:
    body = {"model": SMOLLM, "input": text, "temperature": 0, "max_output_tokens": 24, **extra}
    if previous is not None:
        body["previous_response_id"] = previous
    response = api.post(CHAT, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def reply(result: dict) -> str:
    return "".join(item["content"] for item in result["output"] if item["type"] == "message")


class PromptLog:
    """The prompts the server formats, read from its model log in a background thread."""

    def __init__(self, base_url: str):
        self.prompts: list[str] = []
        self._client = httpx.Client(base_url=base_url, timeout=None)
        self._response: httpx.Response | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            with self._client.stream("GET", "/studiolo/log/stream") as response:
                self._response = response
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        event = json.loads(line[6:])
                        if event.get("type") == "input":
                            self.prompts.append(event["prompt"])
        except httpx.HTTPError:
            pass  # closed

    def prompt_after(self, action) -> str:
        """The prompt of the request ``action`` sends (the log subscribes before it is sent)."""
        count = len(self.prompts)
        action()
        deadline = time.monotonic() + 10
        while len(self.prompts) == count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.prompts[count]

    def close(self) -> None:
        hang_up(self._response)
        self._client.close()


@pytest.fixture
def prompt_log(chat_server, api):
    log = PromptLog(chat_server.base_url)
    for _ in range(100):  # wait until subscribed: probe until a prompt shows up
        say(api, "ping", max_output_tokens=1)
        if log.prompts:
            break
    yield log
    log.close()


def test_a_chat_answers_with_stats_and_a_response_id(api):
    result = say(api, "My favorite color is blue.")
    assert result["model_instance_id"] == SMOLLM and reply(result)
    assert result["response_id"].startswith("resp_")
    stats = result["stats"]
    assert stats["input_tokens"] > 5 and stats["total_output_tokens"] == 24 and stats["reasoning_output_tokens"] == 0
    assert stats["tokens_per_second"] > 0 and stats["time_to_first_token_seconds"] > 0
    assert stats["stop_reason"] == "maxPredictedTokensReached"  # studiolo's, in v0's words


def test_a_continuation_sees_every_earlier_turn(api, prompt_log):
    first = say(api, "My favorite color is blue.")
    second = say(api, "And my cat is called Tom.", first["response_id"])
    prompt = prompt_log.prompt_after(lambda: say(api, "What do you know about me?", second["response_id"]))
    for text in ("My favorite color is blue.", reply(first), "And my cat is called Tom.", reply(second)):
        assert text in prompt
    assert prompt.index("blue") < prompt.index("Tom") < prompt.index("What do you know")
    third = say(api, "What do you know about me?", second["response_id"])
    assert third["stats"]["input_tokens"] > second["stats"]["input_tokens"] + 24


def test_branches_from_one_response_do_not_see_each_other(api, prompt_log):
    root = say(api, "I live in Paris.")
    left = say(api, "I like tea.", root["response_id"])
    right = say(api, "I like coffee.", root["response_id"])
    assert left["response_id"] != right["response_id"]
    prompt = prompt_log.prompt_after(lambda: say(api, "What do I like?", right["response_id"]))
    assert "I live in Paris." in prompt and "I like coffee." in prompt and "I like tea." not in prompt


def test_system_prompt_belongs_to_its_turn(api, prompt_log):
    first = say(api, "Hello.", system_prompt="Always answer in French.")
    prompt = prompt_log.prompt_after(lambda: say(api, "Hello again.", first["response_id"]))
    assert "Always answer in French." not in prompt and "Hello." in prompt


def test_store_false_returns_no_id(api):
    assert "response_id" not in say(api, "Keep this to yourself.", store=False)


@pytest.mark.parametrize(("previous", "status", "param"), [
    ("resp_0123456789abcdef0123456789abcdef", 404, "previous_response_id"),
    ("chat_123", 400, "previous_response_id"),
])
def test_unknown_and_malformed_ids_are_refused_in_the_v1_shape(api, previous, status, param):
    for stream in (False, True):
        body = {"model": SMOLLM, "input": "Hi", "previous_response_id": previous, "stream": stream}
        response = api.post(CHAT, json=body)
        assert response.status_code == status
        error = response.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request" and error["message"]


def test_bad_fields_are_refused(api):
    cases = [({"reasoning": "high"}, "reasoning"), ({"integrations": ["playwright"]}, "integrations[0]"),
             ({"input": [{"type": "image", "data_url": "data:image/png;base64,AAAA"}]}, "input[0].data_url"),  # no projector
             ({"temperature": 1.5}, "temperature")]
    for extra, param in cases:
        response = api.post(CHAT, json={"model": SMOLLM, "input": "Hi", **extra})
        assert response.status_code == 400 and response.json()["error"]["param"] == param, extra


def _stream_events(api: httpx.Client, body: dict, on_event=None) -> list[tuple[str, dict]]:
    """The stream's events; ``on_event(name)`` runs as each arrives, the stream still open."""
    events, name = [], None
    with api.stream("POST", CHAT, json={**body, "stream": True}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                assert data["type"] == name
                events.append((name, data))
                if on_event is not None:
                    on_event(name)
    return events


def test_a_stream_sends_lm_studios_events_in_order_and_ends_with_the_result(api):
    first = say(api, "My favorite color is blue.")
    events = _stream_events(api, {"model": SMOLLM, "input": "And yours?", "temperature": 0, "max_output_tokens": 12,
                                  "previous_response_id": first["response_id"]})
    names = [name for name, _ in events]
    assert names[:2] == ["chat.start", "prompt_processing.start"]
    processing_end = names.index("prompt_processing.end")
    assert set(names[2:processing_end]) == {"prompt_processing.progress"}
    assert names[processing_end + 1] == "message.start" and names[-2:] == ["message.end", "chat.end"]
    assert set(names[processing_end + 2:-2]) == {"message.delta"}
    progress = [data["progress"] for name, data in events if name == "prompt_processing.progress"]
    assert progress == sorted(progress) and progress[-1] == 1.0
    result = events[-1][1]["result"]
    assert "".join(data["content"] for name, data in events if name == "message.delta") == reply(result)
    again = say(api, "And yours?", first["response_id"], max_output_tokens=12)
    assert reply(again) == reply(result) and result["response_id"] != again["response_id"]


def test_a_stream_that_loads_the_model_says_so(api):
    for model in api.get("/api/v1/models").json()["models"]:
        for instance in model["loaded_instances"]:
            api.post("/api/v1/models/unload", json={"instance_id": instance["id"]})
    events = _stream_events(api, {"model": GEMMA, "input": "Hello", "max_output_tokens": 4})
    names = [name for name, _ in events]
    end = names.index("model_load.end")  # after llama.cpp's fractions as they came, then 1.0
    assert names[:3] == ["chat.start", "model_load.start", "model_load.progress"]
    assert set(names[2:end]) == {"model_load.progress"} and events[end - 1][1]["progress"] == 1.0
    assert events[end][1]["load_time_seconds"] > 0
    assert events[-1][1]["result"]["stats"]["model_load_time_seconds"] > 0


def test_concurrent_continuations_of_one_response(chat_server, api, prompt_log):
    root = say(api, "My name is Ada.")

    async def continue_all():
        async with httpx.AsyncClient(base_url=chat_server.base_url, timeout=120) as session:
            calls = [session.post(CHAT, json={"model": SMOLLM, "input": f"Count to {n}.", "temperature": 0,
                                              "max_output_tokens": 8, "previous_response_id": root["response_id"]})
                     for n in range(4)]
            return [r.json() for r in await asyncio.gather(*calls)]

    results = asyncio.run(continue_all())
    assert len({r["response_id"] for r in results}) == 4
    prompt = prompt_log.prompt_after(lambda: say(api, "Who am I?", results[2]["response_id"]))
    assert "My name is Ada." in prompt and "Count to 2." in prompt and "Count to 1." not in prompt


def test_conversations_survive_a_sigkill_of_the_server(tmp_path, default_models):
    home = home_with_models(tmp_path, default_models)
    first_server = RunningServer(home, free_port(), [])
    try:
        with httpx.Client(base_url=first_server.base_url, timeout=120) as session:
            first = say(session, "My favorite fruit is a mango.")
            second = say(session, "I also like plums.", first["response_id"])
    finally:
        first_server.process.kill()  # SIGKILL: no shutdown, no flush
        first_server.process.wait()
    second_server = RunningServer(home, free_port(), [])
    try:
        with httpx.Client(base_url=second_server.base_url, timeout=120) as session:
            # first, through the Responses API (one store for both): its usage shows the history came
            # back from the KV state saved with the response, not from a prefill
            again = session.post("/v1/responses", json={"model": SMOLLM, "input": "And which colour?",
                                                         "previous_response_id": second["response_id"],
                                                         "max_output_tokens": 4, "temperature": 0}).json()
            assert again["usage"]["input_tokens_details"]["cached_tokens"] >= second["stats"]["input_tokens"]
            log = PromptLog(second_server.base_url)
            for _ in range(100):
                say(session, "ping", max_output_tokens=1)
                if log.prompts:
                    break
            prompt = log.prompt_after(lambda: say(session, "What fruit do I like?", second["response_id"]))
            log.close()
        assert "My favorite fruit is a mango." in prompt and "I also like plums." in prompt
    finally:
        second_server.stop()


def _instances(api: httpx.Client, key: str) -> list[dict]:
    models = api.get("/api/v1/models").json()["models"]
    return [instance for model in models if model["key"] == key for instance in model["loaded_instances"]]


def _unload(api: httpx.Client, key: str) -> None:
    for instance in _instances(api, key):
        api.post("/api/v1/models/unload", json={"instance_id": instance["id"]})


@pytest.mark.parametrize("stream", [False, True])
def test_a_reply_cut_off_by_max_output_tokens_is_stored_incomplete(api, stream):
    body = {"model": SMOLLM, "input": "Tell me a long story", "temperature": 0, "max_output_tokens": 3}
    result = _stream_events(api, body)[-1][1]["result"] if stream else api.post(CHAT, json=body).json()
    stored = api.get(f"/v1/responses/{result['response_id']}").json()
    # as /v1/responses stores the same cut-off: the store is one for both APIs
    same = api.post("/v1/responses", json=body).json()
    for response in (stored, same):
        assert response["status"] == "incomplete" and response["incomplete_details"] == {"reason": "max_output_tokens"}
        assert [item["status"] for item in response["output"]] == ["incomplete"]
    ended = say(api, "Say hi.", max_output_tokens=200)  # ends by itself: completed, as before
    assert ended["stats"]["total_output_tokens"] < 200
    assert api.get(f"/v1/responses/{ended['response_id']}").json()["status"] == "completed"


def test_a_stream_whose_previous_response_is_deleted_ends_with_error_then_chat_end(api):
    first = say(api, "My favorite color is blue.")
    deleted = []

    def delete_once(name: str) -> None:  # while the continuation generates
        if name == "message.delta" and not deleted:
            deleted.append(api.delete(f"/v1/responses/{first['response_id']}").status_code)

    body = {"model": SMOLLM, "input": "Tell me a long story about a dragon.", "temperature": 0,
            "max_output_tokens": 200, "previous_response_id": first["response_id"]}
    events = _stream_events(api, body, delete_once)
    assert deleted == [200]
    names = [name for name, _ in events]
    assert names[-4:] == ["message.delta", "message.end", "error", "chat.end"]  # LM Studio: chat.end follows
    error = events[-2][1]["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request", "response_not_found",
                                                             "previous_response_id")
    result = events[-1][1]["result"]  # whatever was generated, and no id: nothing was stored
    text = "".join(data["content"] for name, data in events if name == "message.delta")
    assert "response_id" not in result and result["output"] == [{"type": "message", "content": text}]
    assert result["model_instance_id"] == SMOLLM and result["stats"]["total_output_tokens"] == 200


def test_an_embedding_model_is_a_400_before_any_stream(api):
    for stream in (False, True):
        response = api.post(CHAT, json={"model": MINILM, "input": "hi", "stream": stream})
        assert response.status_code == 400 and response.headers["content-type"] == "application/json"
        error = response.json()["error"]
        assert (error["type"], error["param"]) == ("invalid_request", "model") and MINILM in error["message"]
    assert _instances(api, MINILM) == []  # nothing was loaded for it


def test_a_prompt_longer_than_a_loaded_models_context_is_a_400_before_any_stream(api):
    say(api, "ping", max_output_tokens=1)  # loaded: the prompt can be measured before the stream
    for stream in (False, True):
        response = api.post(CHAT, json={"model": SMOLLM, "input": "word " * 20_000, "stream": stream})
        assert response.status_code == 400 and response.headers["content-type"] == "application/json"
        error = response.json()["error"]
        assert (error["type"], error["code"], error["param"]) == ("invalid_request", "context_length_exceeded",
                                                                  "input")


def test_a_failure_once_the_stream_began_is_an_error_event_then_chat_end(api):
    _unload(api, GEMMA)  # this request loads it, so the prompt is measured after the stream began
    try:
        events = _stream_events(api, {"model": GEMMA, "input": "word " * 2000, "context_length": 512})
    finally:
        _unload(api, GEMMA)  # not left with the small context
    # llama.cpp reports load progress as it reads the weights: however many events that makes
    events = [(name, data) for name, data in events if name != "model_load.progress"]
    assert [name for name, _ in events] == ["chat.start", "model_load.start", "error", "chat.end"]
    error = events[2][1]["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request", "context_length_exceeded", "input")
    stats = {"input_tokens": 0, "total_output_tokens": 0, "reasoning_output_tokens": 0, "tokens_per_second": 0.0,
             "time_to_first_token_seconds": 0.0}
    assert events[3][1]["result"] == {"model_instance_id": GEMMA, "output": [], "stats": stats}


def test_booleans_are_not_integers(api):
    for field in ("max_output_tokens", "top_k", "context_length"):
        response = api.post(CHAT, json={"model": SMOLLM, "input": "Hi", field: True})
        assert response.status_code == 400 and response.json()["error"]["param"] == field, field


@pytest.mark.parametrize("failure", [sqlite3.OperationalError("database is locked"), OSError(28, "No space left")])
def test_a_kv_state_that_cannot_be_kept_does_not_fail_the_stored_turn(tmp_path, failure):
    # the response row is committed first; the state only spares a later prefill
    store = ResponseStore(tmp_path / "responses.sqlite3")
    stored = store.create(SMOLLM, [user_message("Hi")], [assistant_message("Hello")], {})

    def fail(*args):
        raise failure

    store.keep_state = fail
    Conversations(service=None, store=store)._keep_state(stored.id, b"state")
    assert store.get(stored.id).output_items[0]["content"][0]["text"] == "Hello"
