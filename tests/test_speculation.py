"""Speculative decoding on the wire, end to end: ``draft_model`` on every generation endpoint (SmolLM2
drafting for itself, and "ngram"), OpenAI's Predicted Outputs, LM Studio's draft statistics, the
load-time default, and what `studiolo ps` and /api/v1/models show (docs/API.md, "Speculative
decoding"). Drafts change the speed, never the output: greedy runs with and without them are judged
by tests/batching.py's rule where logprobs can be had, and compared exactly where the text is sure.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from studiolo.cli.log_cmd import human_console, render_event
from studiolo.cli.models_cmd import drafts_cell
from studiolo.engine.speculation import DraftStats
from studiolo.service.model_log import LogHub, model_output_event
from tests.batching import assert_same_or_parted_at_a_near_tie
from tests.conftest import (
    GEMMA,
    GREEDY,
    MINILM,
    NO_PENALTY,
    SMOLLM,
    RunningServer,
    free_port,
    hang_up,
    home_with_models,
)

CODE = """def total_price(items, tax_rate):
    subtotal = 0
    for item in items:
        subtotal += item.price * item.quantity
    tax = subtotal * tax_rate
    return subtotal + tax
"""
# SmolLM2 gives the function back: n-gram drafting finds it in the prompt
ECHO = [{"role": "user", "content": f"Repeat this code exactly:\n\n{CODE}"}]
STORY = [{"role": "user", "content": "Tell me about the moon in three sentences."}]
MAX_TOKENS = 48
DRAFTERS = [SMOLLM, "ngram"]
COUNTS = ("total_draft_tokens_count", "accepted_draft_tokens_count", "rejected_draft_tokens_count",
          "ignored_draft_tokens_count")


@pytest.fixture(scope="module")
def spec_server(tmp_path_factory, default_models):
    home = home_with_models(tmp_path_factory.mktemp("speculation-home"), default_models)
    running = RunningServer(home, free_port(), [])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def http(spec_server):
    with httpx.Client(base_url=spec_server.base_url, timeout=300) as session:
        yield session


@pytest.fixture(scope="module")
def client(spec_server):
    return openai.OpenAI(base_url=f"{spec_server.base_url}/v1", api_key="x", max_retries=0, timeout=300)


def chat(client, messages=ECHO, draft=None, **kwargs):
    extra = {**NO_PENALTY, **({"draft_model": draft} if draft is not None else {}), **kwargs.pop("extra", {})}
    kwargs.setdefault("max_tokens", MAX_TOKENS)
    return client.chat.completions.create(model=SMOLLM, messages=messages, temperature=0, logprobs=True,
                                          top_logprobs=3, extra_body=extra, **kwargs)


def chat_steps(result, index: int = 0) -> list:
    return [(t.token, {a.token: a.logprob for a in t.top_logprobs}) for t in result.choices[index].logprobs.content]


def assert_adds_up(stats: dict, drafter: str | None) -> None:
    assert stats.get("draft_model") == drafter
    total, accepted, rejected, ignored = (stats[name] for name in COUNTS)
    assert total == accepted + rejected + ignored and total > 0 and accepted > 0, stats


# ---- each endpoint, with a draft model and with n-gram drafting ----


@pytest.mark.parametrize("drafter", DRAFTERS)
def test_chat_completions_keep_the_greedy_output(client, drafter):
    plain = chat(client)
    drafted = chat(client, draft=drafter)
    assert_same_or_parted_at_a_near_tie(drafter, chat_steps(plain), chat_steps(drafted))
    details = drafted.usage.completion_tokens_details
    assert details.accepted_prediction_tokens > 0 and details.rejected_prediction_tokens >= 0
    assert plain.usage.completion_tokens_details.accepted_prediction_tokens == 0


@pytest.mark.parametrize("drafter", DRAFTERS)
def test_completions_keep_the_greedy_output(client, drafter):
    prompt = f"# Python\n{CODE}\n# The same function again:\n"

    def complete(**extra):
        return client.completions.create(model=SMOLLM, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0,
                                         logprobs=3, extra_body={**NO_PENALTY, **extra})

    plain, drafted = complete(), complete(draft_model=drafter)

    def steps(result):
        lp = result.choices[0].logprobs
        return list(zip(lp.tokens, lp.top_logprobs, strict=True))

    assert_same_or_parted_at_a_near_tie(drafter, steps(plain), steps(drafted))
    assert drafted.usage.completion_tokens_details.accepted_prediction_tokens > 0


@pytest.mark.parametrize("path", ["/api/v0/chat/completions", "/api/v0/completions"])
@pytest.mark.parametrize("drafter", DRAFTERS)
def test_v0_stats_carry_lm_studios_draft_fields(http, path, drafter):
    body = {"model": SMOLLM, "max_tokens": MAX_TOKENS, **GREEDY}
    body.update({"messages": ECHO} if "chat" in path else {"prompt": f"{CODE}\n{CODE[:40]}"})
    plain = http.post(path, json=body).json()
    drafted = http.post(path, json={**body, "draft_model": drafter}).json()
    assert not set(COUNTS) & set(plain["stats"]) and "draft_model" not in plain["stats"]
    assert_adds_up(drafted["stats"], drafter)
    assert choice_text(drafted) == choice_text(plain)  # code given back: the model is sure of every token


def choice_text(result: dict) -> str:
    choice = result["choices"][0]
    return choice["message"]["content"] if "message" in choice else choice["text"]


def test_responses_keep_the_greedy_output(client):
    def create(**extra):
        return client.responses.create(model=SMOLLM, input=ECHO[0]["content"], max_output_tokens=MAX_TOKENS,
                                       temperature=0, include=["message.output_text.logprobs"], top_logprobs=3,
                                       extra_body={**NO_PENALTY, **extra})

    def steps(response):
        return [(e.token, {a.token: a.logprob for a in e.top_logprobs}) for e in response.output[0].content[0].logprobs]

    plain = create()
    for drafter in DRAFTERS:
        assert_same_or_parted_at_a_near_tie(drafter, steps(plain), steps(create(draft_model=drafter)))


def test_stateful_chat_drafts_across_turns(http):
    body = {"model": SMOLLM, "input": ECHO[0]["content"], "max_output_tokens": MAX_TOKENS, **GREEDY}
    plain = http.post("/api/v1/chat", json=body).json()
    first = http.post("/api/v1/chat", json={**body, "draft_model": SMOLLM}).json()
    assert first["output"] == plain["output"]
    assert_adds_up(first["stats"], SMOLLM)
    assert not set(COUNTS) & set(plain["stats"])
    follow = {**body, "input": "Now once more.", "previous_response_id": first["response_id"], "draft_model": "ngram"}
    second = http.post("/api/v1/chat", json=follow).json()
    assert second["stats"]["draft_model"] == "ngram" and "response_id" in second
    streamed = http.post("/api/v1/chat", json={**body, "draft_model": SMOLLM, "stream": True})
    end = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: ")][-1]
    assert end["type"] == "chat.end"
    assert_adds_up(end["result"]["stats"], SMOLLM)
    assert end["result"]["output"] == plain["output"]


def test_responses_continue_a_conversation_with_a_draft(client):
    first = client.responses.create(model=SMOLLM, input="Name a fruit.", max_output_tokens=16, temperature=0,
                                    extra_body={"draft_model": SMOLLM})
    second = client.responses.create(model=SMOLLM, input="And another.", previous_response_id=first.id,
                                     max_output_tokens=16, temperature=0, extra_body={"draft_model": "ngram"})
    assert second.output_text and second.previous_response_id == first.id  # incomplete at 16 tokens, maybe


# ---- refusals ----


@pytest.mark.parametrize(("draft", "said"), [
    ("no-such/model", "no model 'no-such/model'"),
    (MINILM, "embedding model"),
    (GEMMA, "cannot draft for this model"),  # another vocabulary
])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/responses",
                                  "/api/v0/chat/completions", "/api/v1/chat"])
def test_a_model_that_cannot_draft_is_a_400_naming_draft_model(http, draft, said, path):
    body: dict = {"model": SMOLLM, "max_tokens": 4, "draft_model": draft}
    if path.endswith("chat/completions"):
        body["messages"] = STORY
    elif path == "/v1/completions":
        body["prompt"] = "Hello"
    else:
        body["input"] = "Hello"
    answer = http.post(path, json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == "draft_model" and said in error["message"], error


@pytest.mark.parametrize("prediction", [{"type": "text", "content": "x"}, {"type": "code", "content": "x"}])
def test_a_prediction_of_another_type_is_a_400_naming_it(http, prediction):
    answer = http.post("/v1/chat/completions", json={"model": SMOLLM, "messages": STORY, "prediction": prediction})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "prediction", answer.text


def test_a_prediction_counts_against_the_prompt_limit(http):
    answer = http.post("/v1/chat/completions", json={"model": SMOLLM, "messages": STORY,
                                                     "prediction": {"type": "content", "content": "x" * 4_000_001}})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == "prediction" and "limits.max_prompt_chars" in error["message"]


# ---- Predicted Outputs ----


def test_a_prediction_of_the_output_is_accepted_and_counted(client):
    plain = chat(client, max_tokens=64)
    expected = plain.choices[0].message.content
    predicted = chat(client, max_tokens=64, prediction={"type": "content", "content": expected})
    assert_same_or_parted_at_a_near_tie("prediction", chat_steps(plain), chat_steps(predicted))
    details = predicted.usage.completion_tokens_details
    assert details.accepted_prediction_tokens >= predicted.usage.completion_tokens // 2, details
    parts = [{"type": "text", "text": expected[:20]}, {"type": "text", "text": expected[20:]}]
    stream = client.chat.completions.create(
        model=SMOLLM, messages=ECHO, temperature=0, max_tokens=64, stream=True,
        stream_options={"include_usage": True}, prediction={"type": "content", "content": parts},
        extra_body=NO_PENALTY)
    chunks = list(stream)
    usage = chunks[-1].usage
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert usage.completion_tokens_details.accepted_prediction_tokens > 0
    assert usage.completion_tokens_details.rejected_prediction_tokens >= 0


def test_an_edited_prediction_rejects_tokens_and_keeps_the_output(client, http):
    plain = chat(client, max_tokens=64)
    expected = plain.choices[0].message.content
    edited = expected.replace("tax", "vat")
    predicted = chat(client, max_tokens=64, prediction={"type": "content", "content": edited})
    assert_same_or_parted_at_a_near_tie("edited prediction", chat_steps(plain), chat_steps(predicted))
    details = predicted.usage.completion_tokens_details
    assert details.accepted_prediction_tokens > 0 and details.rejected_prediction_tokens > 0
    v0 = http.post("/api/v0/chat/completions", json={"model": SMOLLM, "messages": ECHO, "max_tokens": 64, **GREEDY,
                                                     "prediction": {"type": "content", "content": edited}}).json()
    assert_adds_up(v0["stats"], None)  # only a prediction drafted: no draft_model


# ---- with everything else ----


def test_structured_output_stop_strings_and_max_tokens_with_drafts(client):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}
    ask = [{"role": "user", "content": "Give a person as JSON."}]
    plain = chat(client, ask, response_format=fmt, max_tokens=60)
    drafted = chat(client, ask, SMOLLM, response_format=fmt, max_tokens=60)
    assert_same_or_parted_at_a_near_tie("json", chat_steps(plain), chat_steps(drafted))
    assert set(json.loads(drafted.choices[0].message.content)) == {"name", "age"}
    stopped = chat(client, draft="ngram", stop=["tax"])
    assert "tax" not in stopped.choices[0].message.content and stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == chat(client, stop=["tax"]).choices[0].message.content
    capped = chat(client, draft=SMOLLM, max_tokens=7)
    assert capped.usage.completion_tokens == 7 and capped.choices[0].finish_reason == "length"


def test_tool_calls_with_drafts(client):
    weather = {"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                              "required": ["city"]}}}
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    plain = chat(client, ask, tools=[weather], tool_choice="required", max_tokens=60)
    drafted = chat(client, ask, SMOLLM, tools=[weather], tool_choice="required", max_tokens=60)
    [call] = drafted.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)
    # the call's tokens carry no logprobs to judge by; a city named in the question is no near-tie
    assert call.function.arguments == plain.choices[0].message.tool_calls[0].function.arguments


def test_n_choices_with_drafts(client, http):
    plain = chat(client, n=2)
    drafted = chat(client, draft=SMOLLM, n=2)
    for index in (0, 1):
        assert_same_or_parted_at_a_near_tie(f"choice {index}", chat_steps(plain, index), chat_steps(drafted, index))
    v0 = http.post("/api/v0/chat/completions", json={"model": SMOLLM, "messages": ECHO, "max_tokens": 16, "n": 2,
                                                     "draft_model": "ngram", **GREEDY}).json()
    assert len(v0["choices"]) == 2
    assert_adds_up(v0["stats"], "ngram")


def test_a_client_leaving_a_drafting_stream_leaves_the_server_serving(spec_server, client):
    with httpx.Client(base_url=spec_server.base_url, timeout=60) as session:
        body = {"model": SMOLLM, "messages": STORY, "max_tokens": 400, "stream": True, "draft_model": SMOLLM,
                "temperature": 0}
        with session.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()
            for _ in range(6):
                next(lines)
    after = chat(client, draft=SMOLLM, max_tokens=8)
    assert after.choices[0].finish_reason == "length"


def test_four_concurrent_drafting_requests(spec_server, client):
    solo = chat(client, STORY, max_tokens=32)

    async def many():
        async with openai.AsyncOpenAI(base_url=f"{spec_server.base_url}/v1", api_key="x", max_retries=0,
                                      timeout=300) as aclient:
            calls = [aclient.chat.completions.create(
                model=SMOLLM, messages=STORY, temperature=0, max_tokens=32, logprobs=True, top_logprobs=3,
                extra_body={**NO_PENALTY, "draft_model": drafter}) for drafter in (SMOLLM, "ngram", SMOLLM, "none")]
            return await asyncio.gather(*calls)

    for index, result in enumerate(asyncio.run(many())):
        assert_same_or_parted_at_a_near_tie(f"request {index}", chat_steps(solo), chat_steps(result))


def test_log_stream_outputs_carry_the_draft_stats(spec_server, client):
    outputs: list[dict] = []
    reader = httpx.Client(base_url=spec_server.base_url, timeout=None)
    opened: list[httpx.Response] = []

    def read():
        try:
            with reader.stream("GET", "/studiolo/log/stream") as response:
                opened.append(response)
                for line in response.iter_lines():
                    event = json.loads(line[6:]) if line.startswith("data: ") else {}
                    if event.get("type") == "output":
                        outputs.append(event)
        except httpx.HTTPError:
            pass

    threading.Thread(target=read, daemon=True).start()
    try:
        deadline = time.monotonic() + 30
        while not any("total_draft_tokens_count" in event for event in outputs) and time.monotonic() < deadline:
            chat(client, draft=SMOLLM, max_tokens=8)
            time.sleep(0.1)
    finally:
        hang_up(opened[0] if opened else None)
        reader.close()
    drafted = next(event for event in outputs if "total_draft_tokens_count" in event)
    assert_adds_up(drafted, SMOLLM)


# ---- the load-time default, and what shows it ----


def instance(http, instance_id: str) -> dict:
    for model in http.get("/api/v1/models").json()["models"]:
        for loaded in model["loaded_instances"]:
            if loaded["id"] == instance_id:
                return loaded
    raise AssertionError(f"{instance_id} is not loaded")


def unload_all(http) -> None:
    for model in http.get("/api/v1/models").json()["models"]:
        for loaded in model["loaded_instances"]:
            http.post("/api/v1/models/unload", json={"instance_id": loaded["id"]})


def test_a_load_time_draft_is_used_shown_switched_off_and_unloaded(http):
    unload_all(http)
    load = {"model": SMOLLM, "identifier": "smol-drafted", "draft_model": SMOLLM, "echo_load_config": True}
    answer = http.post("/api/v1/models/load", json=load)
    assert answer.status_code == 200 and answer.json()["load_config"]["draft_model"] == SMOLLM, answer.text
    shown = instance(http, "smol-drafted")
    assert shown["config"]["draft_model"] == SMOLLM and shown["status"]["draft_models"] == [SMOLLM]
    body = {"model": "smol-drafted", "messages": ECHO, "max_tokens": 16, **GREEDY}
    assert_adds_up(http.post("/api/v0/chat/completions", json=body).json()["stats"], SMOLLM)
    off = http.post("/api/v0/chat/completions", json={**body, "draft_model": "none"}).json()["stats"]
    assert not set(COUNTS) & set(off)
    assert http.post("/api/v1/models/unload", json={"instance_id": "smol-drafted"}).status_code == 200
    # a JIT load afresh has no draft: the draft went with its target
    http.post("/api/v0/chat/completions", json={"model": SMOLLM, "messages": STORY, "max_tokens": 2})
    again = instance(http, SMOLLM)
    assert again["config"]["draft_model"] is None and again["status"]["draft_models"] == []
    unload_all(http)


def test_a_models_settings_file_gives_its_default_draft(spec_server, http):
    """LM Studio's per-model key for the draft model, in STUDIOLO_HOME/model-settings: a JIT load takes it,
    and a request's own draft_model still wins."""
    unload_all(http)
    settings = spec_server.home / "model-settings" / f"{SMOLLM}.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps({"operation": {"fields": [
        {"key": "llm.prediction.speculativeDecoding.draftModel", "value": "ngram"}]}}))
    try:
        body = {"model": SMOLLM, "messages": ECHO, "max_tokens": 24, **GREEDY}
        assert_adds_up(http.post("/api/v0/chat/completions", json=body).json()["stats"], "ngram")
        assert instance(http, SMOLLM)["config"]["draft_model"] == "ngram"
        own = http.post("/api/v0/chat/completions", json={**body, "draft_model": SMOLLM}).json()["stats"]
        assert_adds_up(own, SMOLLM)
    finally:
        settings.unlink()
        unload_all(http)


def test_a_load_time_draft_that_cannot_draft_fails_the_load(http):
    unload_all(http)
    answer = http.post("/api/v1/models/load", json={"model": SMOLLM, "draft_model": GEMMA})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "draft_model", answer.text
    assert all(not model["loaded_instances"] for model in http.get("/api/v1/models").json()["models"])


def studiolo(server: RunningServer, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "STUDIOLO_HOME": str(server.home)}
    return subprocess.run([sys.executable, "-m", "studiolo", *args, "--port", str(server.port)], env=env,
                          capture_output=True, text=True, timeout=300)


def test_studiolo_load_draft_model_and_ps(spec_server, http):
    unload_all(http)
    loaded = studiolo(spec_server, "load", SMOLLM, "--draft-model", "ngram", "--identifier", "smol-ngram")
    assert loaded.returncode == 0, loaded.stderr
    [listed] = json.loads(studiolo(spec_server, "ps", "--json").stdout)
    assert listed["config"]["draft_model"] == "ngram"
    body = {"model": "smol-ngram", "messages": ECHO, "max_tokens": 16, "draft_model": SMOLLM, **GREEDY}
    http.post("/api/v0/chat/completions", json=body)  # a request's own draft model attaches beside the default
    row = next(line for line in studiolo(spec_server, "ps").stdout.splitlines() if "smol-ngram" in line)
    assert f"ngram, {SMOLLM}" in row
    unload_all(http)


def test_the_ps_draft_cell():
    assert drafts_cell({"draft_model": None}, {"draft_models": []}) == "—"
    assert drafts_cell({"draft_model": "a/b"}, {"draft_models": ["a/b", "c/d"]}) == "a/b, c/d"
    assert drafts_cell({}, {}) == "—"  # a server that shows no drafts


def test_an_output_event_carries_its_choices_draft_stats():
    plain = model_output_event("req-1", "m", 0, "Hi", 2, "eos", 10.0, 0.1)
    assert "total_draft_tokens_count" not in plain and "draft_model" not in plain
    drafted = model_output_event("req-1", "m", 0, "Hi", 2, "eos", 10.0, 0.1, "ngram", DraftStats(9, 5, 3, 1))
    assert_adds_up(drafted, "ngram")
    assert [drafted[name] for name in COUNTS] == [9, 5, 3, 1]
    printed = io.StringIO()
    render_event(human_console(printed), LogHub.stamp("model", drafted))
    assert printed.getvalue().splitlines()[-1].endswith("stop: eos, drafts (ngram): 5 of 9 accepted")
