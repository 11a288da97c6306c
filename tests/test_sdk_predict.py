"""Predictions over LM Studio's SDK protocol, driven by the real ``lmstudio`` SDK (1.5.0) against a real
server (SmolLM2 for text, Qwen2.5-Coder-0.5B for tools), each compared with the same request over
REST where greedy decoding makes them exact; plus raw frames for what the SDK cannot send (a seed, a
bad value, a socket dropped mid-prediction)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import lmstudio
import pytest
from pydantic import BaseModel, Field
from websockets.sync.client import ClientConnection, connect

from studiolo.models.defaults import QWEN05, target_path
from tests.conftest import QWEN, SMOLLM, RunningServer, free_port, home_with_models, loaded_instances
from tests.reasoning_model import OPENER, link_reasoning_models

GUEST = {"authVersion": 1, "clientIdentifier": "guest:predict-test", "clientPasskey": "secret"}
GREEDY = {"temperature": 0.0, "repeatPenalty": 1.0}  # plain argmax, as REST's greedy
REST_GREEDY = {"temperature": 0, "repeat_penalty": 1.0}
QUESTION = "Name three colors."
STORY = "Write a short story about a cat."
P = "llm.prediction."
SHORT_PRESET = {"identifier": "@local:short", "name": "short", "operation": {"fields": [
    {"key": P + "maxPredictedTokens", "value": {"checked": True, "value": 4}}]}}  # as LM Studio exports one
RAW_GREEDY = {"temperature": 0.0, "repeatPenalty": {"checked": False}}  # the same as KV fields


@pytest.fixture(scope="module")
def sdk_server(tmp_path_factory, default_models):
    models = {SMOLLM: default_models[SMOLLM], QWEN: target_path(QWEN05)}
    home = link_reasoning_models(home_with_models(tmp_path_factory.mktemp("sdk-predict-home"), models), (OPENER,))
    (home / "presets").mkdir()
    (home / "presets" / "short.preset.json").write_text(json.dumps(SHORT_PRESET))
    running = RunningServer(home, free_port(), [])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def sdk(sdk_server) -> Iterator[lmstudio.Client]:
    with lmstudio.Client(f"127.0.0.1:{sdk_server.port}") as client:
        yield client


@pytest.fixture(scope="module")
def rest(sdk_server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sdk_server.base_url, timeout=300) as session:
        yield session


@pytest.fixture(scope="module")
def smollm(sdk):
    return sdk.llm.model(SMOLLM)


def rest_chat(rest: httpx.Client, messages: list[dict], model: str = SMOLLM, **body: Any) -> dict:
    response = rest.post("/v1/chat/completions", json={"model": model, "messages": messages, **body})
    assert response.status_code == 200, response.text
    return response.json()


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# --- respond ------------------------------------------------------------------------------------


def test_respond_equals_the_same_chat_completion(smollm, rest):
    result = smollm.respond(QUESTION, config={**GREEDY, "maxTokens": 24})
    expected = rest_chat(rest, user(QUESTION), **REST_GREEDY, max_tokens=24)
    assert result.content == expected["choices"][0]["message"]["content"]
    stats = result.stats
    assert stats.prompt_tokens_count == expected["usage"]["prompt_tokens"]
    assert stats.predicted_tokens_count == expected["usage"]["completion_tokens"]
    assert stats.total_tokens_count == expected["usage"]["total_tokens"]
    assert stats.stop_reason == ("maxPredictedTokensReached" if expected["choices"][0]["finish_reason"] == "length"
                                 else "eosFound")
    assert stats.time_to_first_token_sec is not None and stats.time_to_first_token_sec > 0
    assert result.model_info.model_key == SMOLLM
    assert result.prediction_config.max_tokens == 24 and result.prediction_config.temperature == 0.0


def test_the_async_client_streams_the_same_reply(sdk_server, smollm):
    expected = smollm.respond(QUESTION, config={**GREEDY, "maxTokens": 12}).content

    async def streamed() -> tuple[list[str], str]:
        async with lmstudio.AsyncClient(f"127.0.0.1:{sdk_server.port}") as client:
            model = await client.llm.model(SMOLLM)
            stream = await model.respond_stream(QUESTION, config={**GREEDY, "maxTokens": 12})
            fragments = [fragment.content async for fragment in stream]
            return fragments, stream.result().content

    fragments, content = asyncio.run(streamed())
    assert "".join(fragments) == content == expected


def test_a_conversation_with_a_system_prompt(smollm, rest):
    chat = lmstudio.Chat("You are a terse assistant.")
    chat.add_user_message("Hi!")
    chat.add_assistant_response("Hello.")
    chat.add_user_message(QUESTION)
    messages = [{"role": "system", "content": "You are a terse assistant."}, {"role": "user", "content": "Hi!"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": QUESTION}]
    result = smollm.respond(chat, config={**GREEDY, "maxTokens": 16})
    assert result.content == rest_chat(rest, messages, **REST_GREEDY, max_tokens=16)["choices"][0]["message"]["content"]


def test_streamed_fragments_join_to_the_result(smollm):
    progress: list[float] = []
    stream = smollm.respond_stream(QUESTION, config={**GREEDY, "maxTokens": 12},
                                   on_prompt_processing_progress=progress.append)
    fragments = list(stream)
    result = stream.result()
    assert "".join(fragment.content for fragment in fragments) == result.content
    assert all(f.tokens_count == 1 and f.reasoning_type == "none" and not f.contains_drafted for f in fragments)
    assert len(fragments) <= result.stats.predicted_tokens_count == 12
    assert progress[0] == 0.0 and progress[-1] == 1.0


def test_stop_reasons_eos_and_stop_string(smollm, rest):
    eos = smollm.respond("Say OK.", config={**GREEDY, "maxTokens": 80})
    assert eos.stats.stop_reason == "eosFound" and eos.stats.predicted_tokens_count < 200
    whole = smollm.respond(QUESTION, config={**GREEDY, "maxTokens": 24}).content
    stop = whole.split()[2]  # a word the greedy answer writes
    cut = smollm.respond(QUESTION, config={**GREEDY, "maxTokens": 24, "stopStrings": [stop]})
    assert cut.stats.stop_reason == "stopStringFound"
    assert cut.content == whole[:whole.index(stop)]
    expected = rest_chat(rest, user(QUESTION), **REST_GREEDY, max_tokens=24, stop=[stop])
    assert cut.content == expected["choices"][0]["message"]["content"]


def test_cancel_stops_with_user_stopped(smollm):
    stream = smollm.respond_stream("Count from one to five hundred in words.", config={**GREEDY, "maxTokens": 400})
    seen = 0
    for _ in stream:
        seen += 1
        if seen == 3:
            stream.cancel()
    result = stream.result()
    assert result.stats.stop_reason == "userStopped"
    assert 3 <= result.stats.predicted_tokens_count < 400


@pytest.mark.parametrize("sdk_config, rest_body", [
    ({"temperature": 1.5, "topKSampling": 1}, {"temperature": 1.5, "top_k": 1}),
    ({"temperature": 0.0, "repeatPenalty": 1.8}, {"temperature": 0, "repeat_penalty": 1.8}),
    ({"temperature": 0.0, "repeatPenalty": False}, {"temperature": 0, "repeat_penalty": 1.0}),
], ids=["top-k", "repeat-penalty", "repeat-penalty-off"])
def test_config_keys_take_effect(smollm, rest, sdk_config, rest_body):
    result = smollm.respond(QUESTION, config={**sdk_config, "maxTokens": 32})
    expected = rest_chat(rest, user(QUESTION), **rest_body, max_tokens=32)["choices"][0]["message"]["content"]
    assert result.content == expected


def test_a_preset_fills_what_the_config_leaves_unset(smollm):
    assert smollm.respond(QUESTION, preset="short", config=GREEDY).stats.predicted_tokens_count == 4
    assert smollm.respond(QUESTION, preset="short", config={**GREEDY, "maxTokens": 6}).stats.predicted_tokens_count == 6
    with pytest.raises(lmstudio.LMStudioPresetNotFoundError):
        smollm.respond(QUESTION, preset="no such preset", config=GREEDY)


def test_repeat_penalty_changes_the_answer(smollm):
    """The keys above are not ignored: a different penalty gives a different greedy answer."""
    plain = smollm.respond(QUESTION, config={**GREEDY, "maxTokens": 32}).content
    penalized = smollm.respond(QUESTION, config={"temperature": 0.0, "repeatPenalty": 1.8, "maxTokens": 32}).content
    assert plain != penalized


def test_reasoning_comes_between_its_tags(sdk, rest):
    """Plumbing, not thinking: OPENER is SmolLM2 with QwQ's template, which opens ``<think>`` in the
    prompt, so its whole output is reasoning (SmolLM2 never writes ``</think>``)."""
    stream = sdk.llm.model(OPENER.key).respond_stream(QUESTION, config={**GREEDY, "maxTokens": 12})
    fragments = list(stream)
    kinds = [f.reasoning_type for f in fragments]
    assert kinds == ["reasoningStartTag", *["reasoning"] * (len(kinds) - 2), "reasoningEndTag"]
    assert (fragments[0].content, fragments[-1].content) == ("<think>", "</think>")
    expected = rest_chat(rest, user(QUESTION), OPENER.key, **REST_GREEDY, max_tokens=12)["choices"][0]["message"]
    assert stream.result().content == f"<think>{expected['reasoning_content']}</think>"
    assert expected["content"] in ("", None)
    parsing_off = {**GREEDY, "maxTokens": 12, "reasoningParsing": {"enabled": False, "startString": "<think>",
                                                                    "endString": "</think>"}}
    raw = list(sdk.llm.model(OPENER.key).respond_stream(QUESTION, config=parsing_off))
    assert {f.reasoning_type for f in raw} == {"none"}  # the text as the model wrote it
    # the reasoning as REST splits it lacks the newline the model wrote after the prompt's <think>
    assert "".join(f.content for f in raw) == "\n" + expected["reasoning_content"]


# --- complete, templates, tokens -----------------------------------------------------------------


def test_complete_equals_the_same_completion(smollm, rest):
    prompt = "The capital of France is"
    result = smollm.complete(prompt, config={**GREEDY, "maxTokens": 16})
    response = rest.post("/v1/completions", json={"model": SMOLLM, "prompt": prompt, **REST_GREEDY, "max_tokens": 16})
    expected = response.json()
    assert result.content == expected["choices"][0]["text"]
    assert result.stats.prompt_tokens_count == expected["usage"]["prompt_tokens"]


def test_tokenize_and_count_tokens_equal_tokenize(smollm, rest):
    text = "Chaos is a ladder."
    expected = rest.post("/tokenize", json={"model": SMOLLM, "content": text}).json()["tokens"]
    assert list(smollm.tokenize(text)) == expected
    assert smollm.count_tokens(text) == len(expected)
    assert [list(t) for t in smollm.tokenize([text, "and more"])] == [
        expected, rest.post("/tokenize", json={"model": SMOLLM, "content": "and more"}).json()["tokens"]]


def test_apply_prompt_template_equals_apply_template(smollm, rest):
    chat = lmstudio.Chat("This is the system prompt.")
    chat.add_user_message("User message 1")
    chat.add_assistant_response("Assistant message 1")
    chat.add_user_message("User message 2")
    messages = [{"role": "system", "content": "This is the system prompt."},
                {"role": "user", "content": "User message 1"},
                {"role": "assistant", "content": "Assistant message 1"}, {"role": "user", "content": "User message 2"}]
    expected = rest.post("/apply-template", json={"model": SMOLLM, "messages": messages}).json()["prompt"]
    formatted = smollm.apply_prompt_template(chat)
    assert formatted == expected
    assert formatted.endswith("<|im_start|>user\nUser message 2<|im_end|>\n<|im_start|>assistant\n")


def test_apply_prompt_template_with_tool_definitions(sdk, rest):
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tool = {"type": "function", "function": {"name": "get_weather", "description": "Get the weather",
                                             "parameters": parameters}}
    formatted = sdk.llm.model(QWEN).apply_prompt_template("Weather in Paris?", {"toolDefinitions": [tool]})
    expected = rest.post("/apply-template", json={"model": QWEN, "messages": user("Weather in Paris?"),
                                                  "tools": [tool]}).json()["prompt"]
    assert formatted == expected and "<tools>" in formatted and '"get_weather"' in formatted


# --- structured output and tools --------------------------------------------------------------------


class Book(BaseModel):
    title: str = Field(max_length=40)  # SmolLM2 would go on writing the title
    year: int


def test_structured_output_from_a_pydantic_model(smollm, rest):
    result = smollm.respond("Name a famous book.", response_format=Book, config={**GREEDY, "maxTokens": 80})
    assert Book.model_validate(result.parsed) == Book.model_validate_json(result.content)
    response_format = {"type": "json_schema", "json_schema": {"name": "Book", "schema": Book.model_json_schema()}}
    expected = rest_chat(rest, user("Name a famous book."), **REST_GREEDY, max_tokens=80,
                         response_format=response_format)
    assert result.content == expected["choices"][0]["message"]["content"]


def test_act_runs_a_tool_the_model_calls(sdk):
    """Qwen2.5-Coder-0.5B calls get_weather for this question under greedy decoding
    (tests/test_qwen_tools.py); the SDK runs the function and asks again, without tools."""
    calls: list[str] = []

    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        calls.append(city)
        return "24 C, sunny"

    messages: list[Any] = []
    qwen = sdk.llm.model(QWEN)
    result = qwen.act("What is the weather like in Paris today?", [get_weather], max_prediction_rounds=2,
                      config={**GREEDY, "maxTokens": 60}, on_message=messages.append)
    assert result.rounds == 2
    assert calls == ["Paris"]
    request, response = messages[0], messages[1]
    call = request.content[-1].tool_call_request
    assert (call.name, call.arguments) == ("get_weather", {"city": "Paris"})
    assert response.content[0].tool_call_id == call.id and json.loads(response.content[0].content) == "24 C, sunny"
    assert messages[-1].role == "assistant" and messages[-1].content[0].text


# --- raw frames -----------------------------------------------------------------------------------


def sdk_socket(server: RunningServer, namespace: str = "llm") -> ClientConnection:
    socket = connect(f"ws://127.0.0.1:{server.port}/{namespace}")
    socket.send(json.dumps(GUEST))
    assert json.loads(socket.recv()) == {"success": True}
    return socket


def open_predict(socket: ClientConnection, channel: int, model: str, text: str, fields: dict[str, Any]) -> None:
    stack = {"layers": [{"layerName": "apiOverride",
                         "config": {"fields": [{"key": P + k, "value": v} for k, v in fields.items()]}}]}
    socket.send(json.dumps({"type": "channelCreate", "endpoint": "predict", "channelId": channel, "creationParameter": {
        "modelSpecifier": {"type": "query", "query": {"identifier": model}},
        "history": {"messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]},
        "predictionConfigStack": stack}}))


def channel_messages(socket: ClientConnection, channel: int) -> tuple[list[dict], dict]:
    """The channel's messages, and the frame that ended it (channelClose or channelError)."""
    messages = []
    while True:
        frame = json.loads(socket.recv(timeout=120))
        assert frame.get("channelId") == channel, frame
        if frame["type"] != "channelSend":
            return messages, frame
        messages.append(frame["message"])


def test_a_seeded_sampled_prediction_equals_the_same_seeded_request(sdk_server, rest):
    sampling = {"temperature": 1.0, "topPSampling": {"checked": True, "value": 0.9},
                "minPSampling": {"checked": True, "value": 0.02}, "seed": {"checked": True, "value": 1234},
                "maxPredictedTokens": {"checked": True, "value": 24}}
    with sdk_socket(sdk_server) as socket:
        open_predict(socket, 1, SMOLLM, QUESTION, sampling)
        messages, end = channel_messages(socket, 1)
    assert end["type"] == "channelClose"
    text = fragments_text(messages)
    expected = rest_chat(rest, user(QUESTION), temperature=1.0, top_p=0.9, min_p=0.02, seed=1234, max_tokens=24)
    assert text == expected["choices"][0]["message"]["content"]
    assert messages[-1]["type"] == "success" and messages[-1]["stats"]["predictedTokensCount"] == 24


def fragments_text(messages: list[dict]) -> str:
    return "".join(m["fragment"]["content"] for m in messages if m["type"] == "fragment")


def test_complete_raw_text_equals_the_same_completion(sdk_server, rest):
    prompt = "The capital of France is"
    fields = [{"key": P + "temperature", "value": 0}, {"key": P + "repeatPenalty", "value": {"checked": False}},
              {"key": P + "maxPredictedTokens", "value": {"checked": True, "value": 16}}]
    with sdk_socket(sdk_server) as socket:
        socket.send(json.dumps({"type": "channelCreate", "endpoint": "completeRawText", "channelId": 5,
                                "creationParameter": {
                                    "modelSpecifier": {"type": "query", "query": {"identifier": SMOLLM}},
                                    "rawPrompt": prompt,
                                    "predictionConfigStack": {"layers": [{"layerName": "apiOverride",
                                                                          "config": {"fields": fields}}]}}}))
        messages, end = channel_messages(socket, 5)
    assert end["type"] == "channelClose"
    response = rest.post("/v1/completions", json={"model": SMOLLM, "prompt": prompt, **REST_GREEDY, "max_tokens": 16})
    assert fragments_text(messages) == response.json()["choices"][0]["text"]
    assert messages[-1]["stats"]["stopReason"] == "maxPredictedTokensReached"


def test_enable_thinking_off(sdk_server, rest):
    """Plumbing: QwQ's template closes the ``<think>`` it opens when thinking is off (OPENER), so the
    output is answer from the start, as REST's reasoning_effort "none" makes it."""
    with sdk_socket(sdk_server) as socket:
        open_predict(socket, 6, OPENER.key, STORY, {**RAW_GREEDY, "reasoning.enableThinking": False,
                                                      "maxPredictedTokens": {"checked": True, "value": 12}})
        messages, _ = channel_messages(socket, 6)
    assert {m["fragment"]["reasoningType"] for m in messages if m["type"] == "fragment"} == {"none"}
    expected = rest_chat(rest, user(STORY), OPENER.key, **REST_GREEDY, max_tokens=12, reasoning_effort="none")
    assert fragments_text(messages) == expected["choices"][0]["message"]["content"] != ""


def test_tool_call_packets_for_a_required_call(sdk_server):
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tool = {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city",
                                             "parameters": parameters}}
    fields = {**RAW_GREEDY, "maxPredictedTokens": {"checked": True, "value": 60},
              "tools": {"type": "toolArray", "tools": [tool]}, "toolChoice": {"type": "generic", "mode": "required"}}
    with sdk_socket(sdk_server) as socket:
        open_predict(socket, 2, QWEN, "What is the weather like in Paris today?", fields)
        messages, end = channel_messages(socket, 2)
    assert end["type"] == "channelClose"
    kinds = [m["type"] for m in messages if m["type"] != "promptProcessingProgress"]
    assert kinds[:2] == ["toolCallGenerationStart", "toolCallGenerationNameReceived"]
    assert kinds[-2:] == ["toolCallGenerationEnd", "success"]
    start, named, end_call = (next(m for m in messages if m["type"] == kind) for kind in (
        "toolCallGenerationStart", "toolCallGenerationNameReceived", "toolCallGenerationEnd"))
    assert named["name"] == "get_weather"
    arguments = "".join(m["content"] for m in messages if m["type"] == "toolCallGenerationArgumentFragmentGenerated")
    request = end_call["toolCallRequest"]
    assert request == {"type": "function", "id": start["toolCallId"], "name": "get_weather",
                       "arguments": json.loads(arguments)}
    assert request["arguments"] == {"city": "Paris"}
    assert messages[-1]["stats"]["stopReason"] == "toolCalls"


@pytest.mark.parametrize("key, value", [
    ("temperature", "hot"), ("maxPredictedTokens", {"checked": True, "value": 0}), ("structured", {"type": "xml"}),
])
def test_a_bad_config_value_is_a_channel_error_naming_the_key(sdk_server, key, value):
    with sdk_socket(sdk_server) as socket:
        open_predict(socket, 3, SMOLLM, QUESTION, {key: value})
        messages, end = channel_messages(socket, 3)
    assert messages == [] and end["type"] == "channelError"
    assert P + key in end["error"]["title"] and end["error"]["cause"].endswith(f"({P + key})")


def endless(rest: httpx.Client) -> dict[str, Any]:
    """KV fields of a prediction that only the context's end would stop: SmolLM2's end-of-turn tokens
    banned, no token limit."""
    ends = [rest.post("/tokenize", json={"model": SMOLLM, "content": text}).json()["tokens"]
            for text in ("<|im_end|>", "<|endoftext|>")]
    assert all(len(tokens) == 1 for tokens in ends)
    return {**RAW_GREEDY, "maxPredictedTokens": {"checked": False},
            "llama.logitBias": [[tokens[0], "-inf"] for tokens in ends]}


def wait_for_fragments(socket: ClientConnection, count: int) -> None:
    while count:
        count -= json.loads(socket.recv(timeout=120))["message"]["type"] == "fragment"


def test_dropping_the_socket_mid_prediction_frees_the_sequence(sdk_server, rest):
    """Left alone, the prediction would run to the end of the context, thousands of tokens; the socket
    closing frees its sequence at the engine's next step, as an HTTP client that leaves does."""
    fields = endless(rest)
    socket = sdk_socket(sdk_server)
    open_predict(socket, 4, SMOLLM, "Count from one to five hundred in words.", fields)
    wait_for_fragments(socket, 3)
    instance = loaded_instances(rest)[SMOLLM]
    assert instance["status"]["running_requests"] == 1 and instance["config"]["context_length"] >= 2048
    socket.close()
    idle = threading.Event()
    for _ in range(600):  # 30 s at most
        if loaded_instances(rest)[SMOLLM]["status"]["running_requests"] == 0:
            idle.set()
            break
        idle.wait(0.05)
    assert idle.is_set()


def test_a_model_unloaded_under_a_prediction_ends_it_with_model_unloaded(sdk_server, rest):
    with sdk_socket(sdk_server) as socket:
        open_predict(socket, 7, SMOLLM, "Count from one to five hundred in words.", endless(rest))
        wait_for_fragments(socket, 3)
        assert rest.post("/api/v1/models/unload", json={"instance_id": SMOLLM}).status_code == 200
        messages, end = channel_messages(socket, 7)
    assert end["type"] == "channelClose"
    success = messages[-1]
    assert success["type"] == "success" and success["stats"]["stopReason"] == "modelUnloaded"
    assert success["modelInfo"]["modelKey"] == SMOLLM and SMOLLM not in loaded_instances(rest)
