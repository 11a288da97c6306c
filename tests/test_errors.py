"""Bad input gets a 4xx in OpenAI's error shape naming the field, and the server stays up."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SMOLLM

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Hi"}]
JSON = {"content-type": "application/json"}


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_info"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    # BladeLLM's clients read error_info: the same message, the HTTP status as its code
    assert body["error_info"] == {"code": status, "message": body["error"]["message"]}
    return body["error"]


def test_malformed_json(http):
    response = http.post(CHAT, content=b'{"model": "x", "messages": [', headers={"content-type": "application/json"})
    error = error_of(response, 400)
    assert "not valid JSON" in error["message"]
    assert error["type"] == "invalid_request_error"


def test_body_that_is_not_an_object(http):
    assert "JSON object" in error_of(http.post(CHAT, json=["model"]), 400)["message"]


def test_missing_model(http):
    error = error_of(http.post(CHAT, json={"messages": MESSAGES}), 400)
    assert error["param"] == "model" and "model" in error["message"]


def test_missing_messages(http):
    error = error_of(http.post(CHAT, json={"model": SMOLLM}), 400)
    assert error["param"] == "messages"


def test_empty_messages(http):
    assert error_of(http.post(CHAT, json={"model": SMOLLM, "messages": []}), 400)["param"] == "messages"


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("messages", "hello", "messages"),
        ("temperature", "hot", "temperature"),
        ("temperature", 3.5, "temperature"),
        ("max_tokens", "many", "max_tokens"),
        ("top_logprobs", 99, "top_logprobs"),
        ("n", 0, "n"),
        ("stop", 5, "stop"),
        ("logit_bias", {"dog": 1}, "logit_bias"),
        ("logit_bias", {"5": 500}, "logit_bias.5"),
        ("stream", "sometimes", "stream"),
        ("max_tokens", True, "max_tokens"),
        ("seed", False, "seed"),
        ("ttl", True, "ttl"),
        ("stop_tokens", [True], "stop_tokens[0]"),
    ],
)
def test_wrong_field_values_name_the_field(http, field, value, param):
    error = error_of(http.post(CHAT, json={"model": SMOLLM, "messages": MESSAGES, field: value}), 400)
    assert error["param"] == param
    assert param.split(".")[0] in error["message"]


def test_bad_message_role_names_the_message(http):
    messages = [{"role": "user", "content": "Hi"}, {"role": "wizard", "content": "x"}]
    assert error_of(http.post(CHAT, json={"model": SMOLLM, "messages": messages}), 400)["param"] == "messages[1].role"


def test_image_for_a_text_model(http):
    content = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    body = {"model": SMOLLM, "messages": [{"role": "user", "content": content}]}
    error = error_of(http.post(CHAT, json=body), 400)
    assert error["param"] == "messages[0].content[0].image_url" and "images" in error["message"]


def test_unknown_model_is_404_model_not_found(http):
    error = error_of(http.post(CHAT, json={"model": "no-such-model", "messages": MESSAGES}), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert SMOLLM not in error["message"] and "GET /v1/models" in error["message"]  # a hint, not the catalog
    assert error_of(http.get("/v1/models/no-such-model"), 404)["code"] == "model_not_found"


def test_prompt_longer_than_the_context(http):
    long_text = "word " * 5000
    error = error_of(http.post(CHAT, json={"model": SMOLLM, "messages": [{"role": "user", "content": long_text}]}), 400)
    assert error["code"] == "context_length_exceeded"
    error = error_of(http.post("/v1/completions", json={"model": SMOLLM, "prompt": long_text, "stream": True}), 400)
    assert error["code"] == "context_length_exceeded"


def test_token_ids_outside_the_vocabulary(http):
    error = error_of(http.post("/v1/completions", json={"model": SMOLLM, "prompt": [1, 2, 10_000_000]}), 400)
    assert "10000000" in error["message"]
    body = {"model": SMOLLM, "messages": MESSAGES, "stop_tokens": [-4]}
    assert error_of(http.post(CHAT, json=body), 400)["code"] == "invalid_token"
    body = {"model": SMOLLM, "messages": MESSAGES, "logit_bias": {"99999999": 5}}
    assert error_of(http.post(CHAT, json=body), 400)["param"] == "logit_bias"


def test_completion_only_options(http):
    assert error_of(http.post("/v1/completions", json={"model": SMOLLM, "prompt": "x", "suffix": "y"}), 400)[
        "param"
    ] == "suffix"
    assert error_of(http.post("/v1/completions", json={"model": SMOLLM, "prompt": []}), 400)["param"] == "prompt"
    body = {"model": SMOLLM, "messages": MESSAGES, "top_logprobs": 2}
    assert error_of(http.post(CHAT, json=body), 400)["param"] == "top_logprobs"


def test_unknown_path_and_wrong_method(http):
    error = error_of(http.post("/v1/nothing-here", json={}), 404)
    assert "/v1/nothing-here" in error["message"]
    error_of(http.get("/chat/completions"), 404)
    error = error_of(http.get(CHAT), 405)
    assert "GET" in error["message"]


def test_server_still_answers_after_bad_input(http):
    response = http.post(CHAT, json={"model": SMOLLM, "messages": MESSAGES, "max_tokens": 2})
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("logit_bias", {"²": 1}, "logit_bias"),
        ("logit_bias", {"--5": 1}, "logit_bias"),
        ("repeat_penalty", 1e308, "repeat_penalty"),
        ("temperature", "NaN", "temperature"),
    ],
)
def test_values_that_would_break_sampling_are_refused(http, field, value, param):
    error = error_of(http.post(CHAT, json={"model": SMOLLM, "messages": MESSAGES, field: value}), 400)
    assert error["param"] == param


def test_infinity_in_the_body_is_refused(http):
    body = '{"model": "%s", "messages": [{"role": "user", "content": "x"}], "repeat_penalty": Infinity}' % SMOLLM
    response = http.post(CHAT, content=body, headers={"content-type": "application/json"})
    assert error_of(response, 400)["param"] == "repeat_penalty"


def test_context_error_names_the_prompt_on_completions(http):
    response = http.post("/v1/completions", json={"model": SMOLLM, "prompt": "word " * 5000})
    assert error_of(response, 400)["param"] == "prompt"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (CHAT, {"messages": [{"role": "user", "content": "a\ud800b"}]}, "messages[0].content"),
        ("/v1/completions", {"prompt": ["fine", "\udfff"]}, "prompt[1]"),
        ("/v1/responses", {"input": [{"role": "user", "content": [{"type": "input_text", "text": "\ud83d"}]}]},
         "input[0].content[0].text"),
    ],
)
def test_a_lone_surrogate_is_refused_where_it_is(http, path, body, param):
    # json.dumps escapes it (\\ud800), as a client's JSON encoder would; httpx's own refuses to send it
    response = http.post(path, content=json.dumps({"model": SMOLLM, **body}), headers=JSON)
    error = error_of(response, 400)
    assert error["param"] == param and "surrogate" in error["message"]


def test_escaped_surrogate_pairs_are_text(http):
    # an emoji sent as a JSON surrogate pair (json.dumps' default) is one character, not an error
    body = '{"model": "%s", "prompt": "Smile \\ud83d\\ude00", "max_tokens": 1}' % SMOLLM
    response = http.post("/v1/completions", content=body, headers=JSON)
    assert response.status_code == 200, response.text


def test_resume_response_with_callable_tools_is_refused(http):
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    body = {"model": SMOLLM, "messages": MESSAGES, "tools": [tool], "resume_response": "The weather"}
    assert error_of(http.post(CHAT, json=body), 400)["param"] == "resume_response"
    body["tool_choice"] = "none"  # the tools are not offered: a text reply resumes as usual
    assert http.post(CHAT, json={**body, "max_tokens": 2}).status_code == 200
