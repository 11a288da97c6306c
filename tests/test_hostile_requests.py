"""Hostile requests against every API family: bodies too large, too deep or unreadable as JSON,
lists and prompts past the server's limits, JSON inside messages that cannot be read, download
names that leave the models folder. Each is answered at once with a 4xx naming its field (and the
limit), and the server still answers /health within a second afterwards (tests/hostile.py).

The limits are the defaults of ``RequestLimits`` (docs/API.md, "Limits of requests"). Cases refused
before any model loads leave nothing behind, so ``make soak`` can replay them under load; the few
that reach the model say so in their name.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

from studiolo.config import RequestLimits
from tests.conftest import GEMMA, MINILM, SMOLLM
from tests.hostile import HostileCase, assert_healthy, check, error_of

LIMITS = RequestLimits()
DEEP = 100_000  # nesting far past Python's recursion limit
LONG_DIGITS = "9" * 5_000  # past Python's 4,300-digit limit on int() from text
USER = {"role": "user", "content": "Hi"}
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def raw(template: str, **parts: str) -> bytes:
    """A JSON body as text, for what json.dumps cannot write (deep nesting, long literals, NaN)."""
    return template.format(**parts).encode()


def chat_with(**fields) -> dict:
    return {"model": SMOLLM, "messages": [USER], "max_tokens": 1, **fields}


def messages(count: int) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(count)]


def assistant_call(arguments: str) -> list[dict]:
    call = {"id": "call1", "type": "function", "function": {"name": "f", "arguments": arguments}}
    return [USER, {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call1", "content": "ok"}]


def calls_body(arguments: str) -> bytes:
    return json.dumps({"model": SMOLLM, "messages": assistant_call(arguments), "max_tokens": 1}).encode()


def response_call(arguments: str) -> bytes:
    items = [{"type": "function_call", "call_id": "c1", "name": "f", "arguments": arguments},
             {"type": "function_call_output", "call_id": "c1", "output": "ok"}]
    return json.dumps({"model": SMOLLM, "input": items, "max_output_tokens": 1}).encode()


OVER_BODY = LIMITS.max_body_mib * 2**20 + 1024
BIG_TEXT = "x" * (LIMITS.max_prompt_chars + 1)
ARGS_PARAM = "messages[1].tool_calls[0].function.arguments"

CASES: list[HostileCase] = [
    # --- /v1/chat/completions --------------------------------------------------------------
    HostileCase("chat_100k_messages", "POST", CHAT, lambda: chat_with(messages=messages(100_000)), param="messages"),
    HostileCase("chat_messages_nested_100k_deep", "POST", CHAT,
                lambda: raw('{{"model":"{m}","messages":{n}}}', m=SMOLLM, n=nested(DEEP)), param="messages",
                code="json_too_deep"),
    HostileCase("chat_body_nested_100k_deep", "POST", CHAT, lambda: nested(DEEP).encode(), param="body",
                code="json_too_deep"),
    HostileCase("chat_schema_past_max_json_depth", "POST", CHAT,
                lambda: raw('{{"model":"{m}","messages":[],"guided_json":{d}}}', m=SMOLLM,
                            d='{"a":' * (LIMITS.max_json_depth + 5) + "1" + "}" * (LIMITS.max_json_depth + 5)),
                param="guided_json", code="json_too_deep"),
    HostileCase("chat_5000_digit_max_tokens", "POST", CHAT,
                lambda: raw('{{"model":"{m}","messages":[],"max_tokens":{d}}}', m=SMOLLM, d=LONG_DIGITS),
                param="max_tokens", code="number_too_long"),
    HostileCase("chat_5000_digit_inside_guided_json", "POST", CHAT,
                lambda: raw('{{"model":"{m}","messages":[],"guided_json":{{"maximum":{d}}}}}', m=SMOLLM,
                            d=LONG_DIGITS), param="guided_json", code="number_too_long"),
    HostileCase("chat_nan_temperature", "POST", CHAT,
                lambda: raw('{{"model":"{m}","messages":[],"temperature":NaN}}', m=SMOLLM), param="temperature"),
    HostileCase("chat_trailing_garbage", "POST", CHAT, lambda: json.dumps(chat_with()).encode() + b" x",
                param="body", code="invalid_json"),
    HostileCase("chat_truncated_body", "POST", CHAT, b'{"model": "x", "messages": [', param="messages",
                code="invalid_json"),
    HostileCase("chat_not_utf8", "POST", CHAT, b'{"model": "\xff\xfe"}', param="body", code="invalid_json"),
    HostileCase("chat_body_is_a_string", "POST", CHAT, b'"hello"', param="body"),
    HostileCase("chat_lone_surrogate", "POST", CHAT,
                lambda: raw('{{"model":"{m}","messages":[{{"role":"user","content":"\\ud800"}}]}}', m=SMOLLM),
                param="messages[0].content"),
    HostileCase("chat_arguments_nested_100k_deep", "POST", CHAT, lambda: calls_body(nested(DEEP)),
                param=ARGS_PARAM),
    HostileCase("chat_arguments_past_max_json_depth", "POST", CHAT,
                lambda: calls_body('{"a":' + nested(LIMITS.max_json_depth + 1) + "}"), param=ARGS_PARAM),
    HostileCase("chat_arguments_5000_digit_integer", "POST", CHAT, lambda: calls_body('{"a":' + LONG_DIGITS + "}"),
                param=ARGS_PARAM),
    HostileCase("chat_arguments_nan", "POST", CHAT, lambda: calls_body('{"a":NaN}'), param=ARGS_PARAM),
    HostileCase("chat_arguments_not_an_object", "POST", CHAT, lambda: calls_body("[1, 2]"), param=ARGS_PARAM),
    HostileCase("chat_message_past_max_prompt_chars", "POST", CHAT,
                lambda: chat_with(messages=[{"role": "user", "content": BIG_TEXT}]), param="messages"),
    HostileCase("chat_body_past_max_body_mib", "POST", CHAT,
                lambda: json.dumps(chat_with(messages=[{"role": "user", "content": "x" * OVER_BODY}])).encode(),
                status=413, param="body", code="request_too_large"),
    HostileCase("chat_300k_content_parts", "POST", CHAT,
                lambda: chat_with(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}] * 300_000}]),
                param="body", code="too_many_items"),
    HostileCase("chat_100k_stop_tokens", "POST", CHAT, lambda: chat_with(stop_tokens=[1] * 100_000),
                param="stop_tokens"),
    HostileCase("completions_100k_logit_bias", "POST", COMPLETIONS,
                lambda: {"model": SMOLLM, "prompt": "x", "logit_bias": {str(i): 1 for i in range(100_000)}},
                param="logit_bias"),
    HostileCase("chat_unknown_role", "POST", CHAT, lambda: chat_with(messages=[{"role": "wizard", "content": "x"}]),
                param="messages[0].role"),
    HostileCase("chat_n_past_its_range", "POST", CHAT, lambda: chat_with(n=10_000), param="n"),
    HostileCase("chat_no_model", "POST", CHAT, {"messages": [USER]}, param="model"),
    # reaches the model: 9,000 short messages are within the limits, and too long for its context
    HostileCase("chat_9000_messages_rendered_and_refused_by_context_uses_model", "POST", CHAT,
                lambda: chat_with(messages=messages(9_000)), param="messages", code="context_length_exceeded",
                timeout=60),
    # --- /v1/completions -------------------------------------------------------------------
    HostileCase("completions_1000_prompts_n16", "POST", COMPLETIONS,
                {"model": SMOLLM, "prompt": ["Hi"] * 1000, "n": 16, "max_tokens": 1}, param="prompt",
                code="too_many_items"),
    HostileCase("completions_100_prompts_n16_past_max_sequences", "POST", COMPLETIONS,
                {"model": SMOLLM, "prompt": ["Hi"] * 100, "n": 16, "max_tokens": 1}, param="prompt"),
    HostileCase("completions_prompt_past_max_prompt_chars", "POST", COMPLETIONS,
                lambda: {"model": SMOLLM, "prompt": BIG_TEXT, "max_tokens": 1}, param="prompt"),
    HostileCase("completions_token_ids_past_max_prompt_chars", "POST", COMPLETIONS,
                lambda: {"model": SMOLLM, "prompt": [1] * (LIMITS.max_prompt_chars + 1), "max_tokens": 1},
                param="prompt"),
    HostileCase("completions_prompt_nested_100k_deep", "POST", COMPLETIONS,
                lambda: raw('{{"model":"{m}","prompt":{n}}}', m=SMOLLM, n=nested(DEEP)), param="prompt"),
    HostileCase("completions_5000_digit_token_id", "POST", COMPLETIONS,
                lambda: raw('{{"model":"{m}","prompt":[{d}]}}', m=SMOLLM, d=LONG_DIGITS), param="prompt",
                code="number_too_long"),
    HostileCase("completions_body_past_max_body_mib", "POST", COMPLETIONS,
                lambda: json.dumps({"model": SMOLLM, "prompt": "x" * OVER_BODY}).encode(), status=413, param="body"),
    # --- /v1/embeddings --------------------------------------------------------------------
    HostileCase("embeddings_input_nested_100k_deep", "POST", "/v1/embeddings",
                lambda: raw('{{"model":"{m}","input":{n}}}', m=MINILM, n=nested(DEEP)), param="input"),
    HostileCase("embeddings_5000_digit_token_id", "POST", "/v1/embeddings",
                lambda: raw('{{"model":"{m}","input":[{d}]}}', m=MINILM, d=LONG_DIGITS), param="input"),
    HostileCase("embeddings_3000_inputs", "POST", "/v1/embeddings", {"model": MINILM, "input": ["a"] * 3000},
                param="input"),
    HostileCase("embeddings_input_past_max_prompt_chars", "POST", "/v1/embeddings",
                lambda: {"model": MINILM, "input": [BIG_TEXT[:1000]] * 2000 + [BIG_TEXT[: 3_000_000]]}, param="input"),
    HostileCase("embeddings_1m_inputs", "POST", "/v1/embeddings", lambda: {"model": MINILM, "input": ["a"] * 1_000_000},
                param="input", code="too_many_items"),
    HostileCase("embeddings_body_past_max_body_mib", "POST", "/v1/embeddings",
                lambda: json.dumps({"model": MINILM, "input": "x" * OVER_BODY}).encode(), status=413, param="body"),
    # --- /v1/rerank ------------------------------------------------------------------------
    HostileCase("rerank_1m_documents", "POST", "/v1/rerank",
                lambda: {"model": MINILM, "query": "q", "documents": ["a"] * 1_000_000}, param="documents",
                code="too_many_items"),
    HostileCase("rerank_query_repeated_past_max_prompt_chars", "POST", "/v1/rerank",
                lambda: {"model": MINILM, "query": BIG_TEXT[:3000], "documents": ["a"] * 2000}, param="documents"),
    # --- /v1/responses ---------------------------------------------------------------------
    HostileCase("responses_100k_input_items", "POST", "/v1/responses",
                lambda: {"model": SMOLLM, "input": [{"role": "user", "content": "x"}] * 100_000}, param="input"),
    HostileCase("responses_arguments_nested_100k_deep", "POST", "/v1/responses", lambda: response_call(nested(DEEP)),
                param="input[0].arguments"),
    HostileCase("responses_arguments_5000_digit_integer", "POST", "/v1/responses",
                lambda: response_call('{"a":' + LONG_DIGITS + "}"), param="input[0].arguments"),
    HostileCase("responses_input_nested_100k_deep", "POST", "/v1/responses",
                lambda: raw('{{"model":"{m}","input":{n}}}', m=SMOLLM, n=nested(DEEP)), param="input"),
    HostileCase("responses_input_past_max_prompt_chars", "POST", "/v1/responses",
                lambda: {"model": SMOLLM, "input": BIG_TEXT, "store": False}, param="input"),
    HostileCase("responses_compact_100k_input_items", "POST", "/v1/responses/compact",
                lambda: {"model": SMOLLM, "input": [{"role": "user", "content": "x"}] * 100_000}, param="input"),
    HostileCase("responses_input_items_limit_not_a_number", "GET", "/v1/responses/resp_x/input_items?limit=abc",
                param="limit"),
    # --- /api/v0 ---------------------------------------------------------------------------
    HostileCase("v0_chat_100k_messages", "POST", "/api/v0/chat/completions",
                lambda: chat_with(messages=messages(100_000)), param="messages"),
    HostileCase("v0_chat_arguments_5000_digit_integer", "POST", "/api/v0/chat/completions",
                lambda: calls_body('{"a":' + LONG_DIGITS + "}"), param=ARGS_PARAM),
    HostileCase("v0_completions_1000_prompts_n16", "POST", "/api/v0/completions",
                {"model": SMOLLM, "prompt": ["Hi"] * 1000, "n": 16}, param="prompt"),
    HostileCase("v0_embeddings_nested_100k_deep", "POST", "/api/v0/embeddings",
                lambda: raw('{{"model":"{m}","input":{n}}}', m=MINILM, n=nested(DEEP)), param="input"),
    # --- /api/v1/chat ----------------------------------------------------------------------
    HostileCase("v1_chat_100k_input_items", "POST", "/api/v1/chat",
                lambda: {"model": SMOLLM, "input": [{"type": "message", "content": "x"}] * 100_000}, param="input"),
    HostileCase("v1_chat_input_past_max_prompt_chars", "POST", "/api/v1/chat",
                lambda: {"model": SMOLLM, "input": BIG_TEXT, "store": False}, param="input"),
    HostileCase("v1_chat_body_nested_100k_deep", "POST", "/api/v1/chat",
                lambda: raw('{{"model":"{m}","input":"x","integrations":{n}}}', m=SMOLLM, n=nested(DEEP)),
                param="integrations"),
    HostileCase("v1_chat_not_json", "POST", "/api/v1/chat", b"{model: x}", param="body", code="invalid_json"),
    HostileCase("v1_chat_5000_digit_context_length", "POST", "/api/v1/chat",
                lambda: raw('{{"model":"{m}","input":"x","context_length":{d}}}', m=SMOLLM, d=LONG_DIGITS),
                param="context_length"),
    # --- /api/v1/models/* ------------------------------------------------------------------
    HostileCase("download_quantization_dot_dot", "POST", "/api/v1/models/download",
                {"model": "owner/repo", "quantization": "../../x"}, param="quantization"),
    HostileCase("download_reference_quantization_dot_dot", "POST", "/api/v1/models/download",
                {"model": "owner/repo@../../x"}, param="model"),
    HostileCase("download_url_file_dot_dot", "POST", "/api/v1/models/download",
                {"model": "https://huggingface.co/owner/repo/blob/main/../../x.gguf"}, param="model"),
    HostileCase("download_url_escaped_dot_dot", "POST", "/api/v1/models/download",
                {"model": "https://huggingface.co/owner/repo/resolve/main/a/%2e%2e/%2e%2e/x.gguf"}, param="model"),
    HostileCase("download_url_revision_dot_dot", "POST", "/api/v1/models/download",
                {"model": "https://huggingface.co/owner/repo/blob/..%2f..%2f/x.gguf"}, param="model"),
    HostileCase("load_model_nested_100k_deep", "POST", "/api/v1/models/load",
                lambda: raw('{{"model":{n}}}', n=nested(DEEP)), param="model"),
    HostileCase("load_5000_digit_context_length", "POST", "/api/v1/models/load",
                lambda: raw('{{"model":"{m}","context_length":{d}}}', m=SMOLLM, d=LONG_DIGITS),
                param="context_length"),
    HostileCase("unload_not_json", "POST", "/api/v1/models/unload", b'{"instance_id": }', param="instance_id",
                code="invalid_json"),
    HostileCase("download_body_past_max_body_mib", "POST", "/api/v1/models/download",
                lambda: json.dumps({"model": "x" * OVER_BODY}).encode(), status=413, param="body"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hostile_request(http, case):
    check(http, case)


def test_an_over_limit_error_names_the_limit_and_its_setting(http):
    response = http.post(CHAT, json=chat_with(messages=messages(LIMITS.max_messages + 1)))
    message = error_of(response)["message"]
    assert str(LIMITS.max_messages) in message and "limits.max_messages" in message


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_sent(server, http):
    """A Content-Length past max_body_mib is answered from the headers alone: none of the body is sent."""
    head = (f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {OVER_BODY}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode())
        answer = sock.recv(65536)
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 413 " in status_line, answer[:300]
    assert b'"param":"body"' in rest and b"request_too_large" in rest
    assert_healthy(http)


# --- unloading under queued streams ---------------------------------------------------------

UNLOAD_ID = "hostile-unload"
LONG_STORY = {"model": UNLOAD_ID, "messages": [{"role": "user", "content": "Tell a very long story."}],
              "max_tokens": 2000, "ignore_eos": True, "temperature": 0}


def _stream_events(base_url: str, results: list, index: int) -> None:
    """(status, SSE data lines) of one stream, or the exception that ended it (a hung one times out)."""
    try:
        with httpx.Client(base_url=base_url, timeout=30) as session, \
                session.stream("POST", CHAT, json={**LONG_STORY, "stream": True}) as response:
            results[index] = (response.status_code,
                              [line[6:] for line in response.iter_lines() if line.startswith("data: ")])
    except httpx.HTTPError as exc:
        results[index] = exc


def _ended_by_the_unload(result) -> bool:
    """A stream ends with a model_unloaded error event; a request the unload overtook is refused before
    its stream (503 model_unloaded), or finds no such model any more (404)."""
    if not isinstance(result, tuple):
        return False
    status, events = result
    if status == 200:
        return bool(events) and json.loads(events[-1]).get("error", {}).get("code") == "model_unloaded"
    return status in (503, 404)


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.1, 0.2, 1.5])
def test_unloading_ends_every_stream_running_or_queued(http, delay):
    """Four streams on an instance of parallel 1: one runs, three queue, then the model is unloaded:
    right as they are submitted (their submits were still in the engine's inbox: they got one chunk,
    then nothing, forever), or once one is generating. Every stream ends, and the server serves on."""
    loaded = http.post("/api/v1/models/load", json={"model": SMOLLM, "parallel": 1, "identifier": UNLOAD_ID})
    assert loaded.status_code == 200, loaded.text
    results: list = [None] * 4
    threads = [threading.Thread(target=_stream_events, args=(str(http.base_url), results, i)) for i in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(delay)
    assert http.post("/api/v1/models/unload", json={"instance_id": UNLOAD_ID}).status_code == 200
    for thread in threads:
        thread.join(timeout=40)
    assert all(_ended_by_the_unload(result) for result in results), results
    assert_healthy(http)


def test_unloading_answers_queued_whole_requests_with_503(http):
    loaded = http.post("/api/v1/models/load", json={"model": SMOLLM, "parallel": 1, "identifier": UNLOAD_ID})
    assert loaded.status_code == 200, loaded.text
    statuses: list = [None] * 3

    def ask(index: int) -> None:
        with httpx.Client(base_url=str(http.base_url), timeout=30) as session:
            statuses[index] = session.post(CHAT, json=LONG_STORY).status_code

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    assert http.post("/api/v1/models/unload", json={"instance_id": UNLOAD_ID}).status_code == 200
    for thread in threads:
        thread.join(timeout=40)
    assert statuses == [503, 503, 503]


# --- a client that leaves while its prompt is rendered ------------------------------------------


def test_a_client_gone_while_its_prompt_is_prepared_stops_that_work(server, http):
    """A prompt of nearly max_prompt_chars takes seconds to tokenize (in a worker thread, in chunks):
    the client leaves after a second, and the work stops at its next chunk, as the log says."""
    assert http.post(CHAT, json=chat_with()).status_code == 200  # the model is loaded
    text = "lorem ipsum dolor sit amet " * 15
    count = int(LIMITS.max_prompt_chars * 0.9) // len(text)  # the template's markers make up the rest
    body = chat_with(messages=[{"role": "user", "content": text}] * count)
    with pytest.raises(httpx.TimeoutException):
        http.post(CHAT, json=body, timeout=1.0)
    deadline = time.monotonic() + 20
    while "stopped preparing a prompt" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "stopped preparing a prompt: its client left" in server.log()
    assert_healthy(http)


# --- tokenizing long prompts ------------------------------------------------------------------


@pytest.mark.parametrize("key", [SMOLLM, GEMMA])
def test_long_text_gives_the_tokens_one_llama_tokenize_call_gives(default_models, key):
    """Chunks cut before special tokens tokenize to exactly what the whole text does (markers side by
    side, whitespace around them, text that only looks like a marker), BOS once at the start."""
    from studiolo.engine.llama import LlamaModel
    from studiolo.engine.long_text import MARKERS_PER_CHUNK, tokenize_long

    turns = []
    for i in range(MARKERS_PER_CHUNK * 12):
        turns.append(f"<|im_start|>user\n  question {i} <b>?</b>\n<|im_end|><|im_start|>assistant\n\n"
                     f"<start_of_turn>model answer {i}<end_of_turn>\n <eos>  <|endoftext|>é漢字 <|im_end|  \n")
    text = "".join(turns)
    model = LlamaModel(default_models[key])
    try:
        whole = model.tokenize(text, add_special=True, parse_special=True)
        assert tokenize_long(model, text, add_special=True) == whole
        assert tokenize_long(model, text, add_special=False) == model.tokenize(text, add_special=False)
    finally:
        model.close()
