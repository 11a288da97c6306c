"""``POST /tokenize``, ``/detokenize`` and ``/apply-template`` in llama-server's shapes, end to end with httpx
on the session's server (SmolLM2, Gemma 3): ids as the model's own tokenizer makes them, pieces as
strings or bytes, special tokens parsed or not, BOS added on request, detokenize as the inverse, the
template's prompt equal to what a chat completion really prefills (usage.prompt_tokens), the model
left out when exactly one is loaded, and the 400s naming their field."""

from __future__ import annotations

import pytest

from studiolo.engine.llama import LlamaModel
from tests.conftest import GEMMA, GREEDY, SMOLLM, loaded_instances, unload_all

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def smollm(default_models):
    model = LlamaModel(default_models[SMOLLM])
    yield model
    model.close()


def _tokenize(http, content: str, **options) -> list:
    response = http.post("/tokenize", json={"model": SMOLLM, "content": content, **options})
    assert response.status_code == 200, response.text
    return response.json()["tokens"]


def test_tokenize_gives_the_models_own_ids(http, smollm):
    text = "The quick brown fox jumps over the lazy dog. 1234 <|im_end|>"
    assert _tokenize(http, text) == smollm.tokenize(text, add_special=False, parse_special=True)
    assert _tokenize(http, text, parse_special=False) == smollm.tokenize(text, add_special=False,
                                                                          parse_special=False)


def test_special_tokens_are_parsed_unless_told_not_to(http, smollm):
    end = smollm.tokenize("<|im_end|>", add_special=False, parse_special=True)
    assert len(end) == 1 and _tokenize(http, "<|im_end|>") == end
    as_text = _tokenize(http, "<|im_end|>", parse_special=False)
    assert len(as_text) > 1 and end[0] not in as_text


def test_pieces_are_strings_or_the_bytes_of_part_of_a_character(http):
    text = "Hi 𝄞 there"  # the G clef: four UTF-8 bytes, which a byte-level BPE cuts in parts
    pieces = _tokenize(http, text, with_pieces=True)
    assert all(set(p) == {"id", "piece"} for p in pieces)
    assert any(isinstance(p["piece"], list) for p in pieces), pieces
    joined = b"".join(p["piece"].encode() if isinstance(p["piece"], str) else bytes(p["piece"]) for p in pieces)
    assert joined == text.encode()
    assert [p["id"] for p in pieces] == _tokenize(http, text)


def test_add_special_adds_the_bos_the_model_wants(http):
    plain = http.post("/tokenize", json={"model": GEMMA, "content": "Hello"}).json()["tokens"]
    with_bos = http.post("/tokenize", json={"model": GEMMA, "content": "Hello", "add_special": True}).json()["tokens"]
    assert with_bos == [2, *plain]  # Gemma's <bos>


def test_detokenize_is_the_inverse_and_writes_special_tokens_out(http, smollm):
    text = "<|im_start|>user\nWhat is the capital of France?<|im_end|>"
    tokens = _tokenize(http, text)
    response = http.post("/detokenize", json={"model": SMOLLM, "tokens": tokens})
    assert response.status_code == 200 and response.json() == {"content": text}


def test_apply_template_is_the_prompt_a_chat_completion_prefills(http):
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "What is the capital of France?"}]
    rendered = http.post("/apply-template", json={"model": SMOLLM, "messages": messages})
    assert rendered.status_code == 200, rendered.text
    prompt = rendered.json()["prompt"]
    assert prompt == ("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\n"
                      "What is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    completion = http.post("/v1/chat/completions", json={"model": SMOLLM, "messages": messages, "max_tokens": 1,
                                                         **GREEDY}).json()
    assert rendered.json()["n_tokens"] == completion["usage"]["prompt_tokens"] == len(_tokenize(http, prompt))


def test_apply_template_counts_tools_as_the_completion_does(http):
    body = {"model": SMOLLM, "messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [WEATHER_TOOL]}
    rendered = http.post("/apply-template", json=body).json()
    assert "get_weather" in rendered["prompt"]
    completion = http.post("/v1/chat/completions", json={**body, "max_tokens": 1, **GREEDY}).json()
    assert rendered["n_tokens"] == completion["usage"]["prompt_tokens"]


def test_the_model_may_be_left_out_when_one_is_loaded(http):
    unload_all(http)
    none = http.post("/tokenize", json={"content": "Hello"})
    assert none.status_code == 400 and none.json()["error"]["param"] == "model"
    assert "no model is loaded" in none.json()["error"]["message"]
    named = _tokenize(http, "Hello")  # loads SmolLM2 just in time
    assert http.post("/tokenize", json={"content": "Hello"}).json()["tokens"] == named
    assert http.post("/detokenize", json={"tokens": named}).json() == {"content": "Hello"}
    assert http.post("/api/v1/models/load", json={"model": GEMMA}).status_code == 200
    try:
        assert len(loaded_instances(http)) == 2
        several = http.post("/apply-template", json={"messages": [{"role": "user", "content": "Hi"}]})
        assert several.status_code == 400 and "2 models are loaded" in several.json()["error"]["message"]
    finally:
        unload_all(http)


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/tokenize", {"model": SMOLLM}, "content"),
    ("/tokenize", {"model": SMOLLM, "content": 7}, "content"),
    ("/detokenize", {"model": SMOLLM, "tokens": [1, 10**9]}, "tokens[1]"),
    ("/detokenize", {"model": SMOLLM, "tokens": [1, -1]}, "tokens[1]"),
    ("/detokenize", {"model": SMOLLM, "tokens": [1, True]}, "tokens[1]"),
    ("/apply-template", {"model": SMOLLM, "messages": []}, "messages"),
    ("/tokenize", {"model": "nobody/nothing", "content": "Hi"}, "model"),
])
def test_bad_input_names_the_field(http, path, body, param):
    response = http.post(path, json=body)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["param"] == param
