"""BladeLLM's request parameters and response fields (seeds/004), each shown to take effect.

Every one of them is exercised by a test that would fail if the server ignored it; those the
engine issue already covered are listed here with where their test lives:

| parameter / field | test |
| --- | --- |
| guided_json/regex/choice/grammar/whitespace_pattern, response_format | test_structured_output.py |
| stop_tokens (completions), ignore_eos (chat), seed (chat), echo (completions) | test_completions.py, test_chat_completions.py |
| error_info | test_errors.py (every error body), below (a stream that fails) |
| everything else | below |
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import GREEDY, SMOLLM, smollm_token_id

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HI = [{"role": "user", "content": "Hi! Tell me about cats."}]
CHATML_PROMPT = (  # SmolLM2's template, with the system prompt it adds when there is none
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nHi! Tell me about cats.<|im_end|>\n<|im_start|>assistant\n"
)


def chat(http: httpx.Client, **body) -> dict:
    sampling = {"temperature": 0} if "repetition_penalty" in body else GREEDY  # GREEDY's repeat_penalty would win
    response = http.post(CHAT, json={"model": SMOLLM, "messages": HI, "max_tokens": 24, **sampling, **body})
    assert response.status_code == 200, response.text
    return response.json()


def content(http: httpx.Client, **body) -> str:
    return chat(http, **body)["choices"][0]["message"]["content"]


def complete(http: httpx.Client, **body) -> dict:
    response = http.post(COMPLETIONS, json={"model": SMOLLM, "max_tokens": 24, **GREEDY, **body})
    assert response.status_code == 200, response.text
    return response.json()


def sse_events(http: httpx.Client, path: str, body: dict) -> list[dict]:
    with http.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


# --- the request side ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_stream_may_be_the_string_true(http, path):
    """BladeLLM's own curl example sends "stream":"true"."""
    body = {"model": SMOLLM, "max_tokens": 8, "stream": "true", **GREEDY}
    body.update({"messages": HI} if path == CHAT else {"prompt": "hello world"})
    events = sse_events(http, path, body)
    assert len(events) >= 8 and all(event["error_info"] is None for event in events)


def test_echo_on_chat_returns_the_formatted_prompt_before_the_reply(http):
    reply = content(http)
    assert content(http, echo=True) == CHATML_PROMPT + reply
    events = sse_events(http, CHAT, {"model": SMOLLM, "messages": HI, "max_tokens": 24, "echo": True, "stream": True,
                                     **GREEDY})
    deltas = [e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]]
    assert CHATML_PROMPT in deltas  # the prompt comes first, as one delta
    assert "".join(deltas) == CHATML_PROMPT + reply


def test_resume_response_carries_on_from_an_interrupted_reply(http):
    full = content(http, max_tokens=40)
    tokens = chat(http, max_tokens=40, logprobs=True)["choices"][0]["logprobs"]["content"]
    cut = "".join(t["token"] for t in tokens[:12])  # interrupted after 12 tokens
    assert full.startswith(cut)
    rest = chat(http, max_tokens=28, resume_response=cut)
    assert rest["choices"][0]["message"]["content"] == full[len(cut):]
    # the reply so far is part of the prompt, not the output
    assert rest["usage"]["prompt_tokens"] == chat(http, max_tokens=1)["usage"]["prompt_tokens"] + 12


def test_stop_sequences_is_blade_llm_name_for_stop(http):
    full = content(http)
    word = full.split()[3]
    for body in ({"stop_sequences": [word]}, {"stop_sequences": word}, {"stop": word}):
        assert content(http, **body) == full[: full.index(word)]
    text = complete(http, prompt="Water boils at", max_tokens=30)["choices"][0]["text"]
    cut = complete(http, prompt="Water boils at", max_tokens=30, stop_sequences=["."])["choices"][0]["text"]
    assert "." in text and cut == text[: text.index(".")]


def test_stop_tokens_end_a_chat_at_a_token_id(http, smollm_vocab):
    full = content(http, max_tokens=40)
    first_word = full.split()[1]
    token = smollm_token_id(smollm_vocab, " " + first_word)
    result = chat(http, max_tokens=40, stop_tokens=[token])["choices"][0]
    assert result["finish_reason"] == "stop"
    assert result["message"]["content"] == full[: full.index(" " + first_word)]


def test_top_k_minus_one_means_off_and_one_means_greedy(http):
    hot = {"temperature": 1.5, "seed": 5, "max_tokens": 24}
    greedy = content(http, max_tokens=24)
    assert content(http, **hot, top_k=1) == greedy  # only the best token survives
    off = content(http, **hot, top_k=-1)
    assert off == content(http, **hot, top_k=0)  # -1 and 0 both switch it off
    assert off != greedy


@pytest.mark.parametrize(
    "penalty", [{"repetition_penalty": 1.5}, {"presence_penalty": 1.5}, {"frequency_penalty": 1.5}]
)
def test_penalties_change_a_greedy_reply(http, penalty):
    prompt = [{"role": "user", "content": "Repeat after me: the cat the cat the cat the cat the cat"}]
    plain = content(http, messages=prompt, max_tokens=30)
    assert content(http, messages=prompt, max_tokens=30, **penalty) != plain


def test_repetition_penalty_is_repeat_penalty(http):
    prompt = [{"role": "user", "content": "Repeat after me: the cat the cat the cat the cat the cat"}]
    assert content(http, messages=prompt, repetition_penalty=1.5) == content(http, messages=prompt, repeat_penalty=1.5)


def test_seed_makes_completions_reproducible(http):
    def sample(seed):
        return complete(http, prompt="Once upon a time", temperature=1.0, seed=seed)["choices"][0]["text"]

    assert sample(42) == sample(42)
    assert len({sample(seed) for seed in (1, 2, 3)}) > 1


def test_ignore_eos_on_completions(http):
    prompt = "<|im_start|>user\nSay OK.<|im_end|>\n<|im_start|>assistant\n"
    short = complete(http, prompt=prompt, max_tokens=100)
    assert short["choices"][0]["finish_reason"] == "stop"
    budget = short["usage"]["completion_tokens"] + 5
    longer = complete(http, prompt=prompt, max_tokens=budget, ignore_eos=True)
    assert longer["usage"]["completion_tokens"] == budget and longer["choices"][0]["finish_reason"] == "length"


# --- logprobs: BladeLLM's content shape ---------------------------------------------------------


def test_chat_logprobs_carry_token_ids_and_special_flags(http, smollm_vocab):
    say_ok = [{"role": "user", "content": "Say OK."}]
    result = chat(http, messages=say_ok, max_tokens=40, logprobs=True, top_logprobs=5, ignore_eos=True)["choices"][0]
    items = result["logprobs"]["content"]
    for item in items:
        assert set(item) == {"id", "token", "logprob", "is_special", "bytes", "top_logprobs"}
        assert all(set(alt) == {"id", "token", "logprob", "is_special", "bytes"} for alt in item["top_logprobs"])
        assert item["top_logprobs"][0]["id"] == item["id"]  # greedy: the chosen one is the best
        if not item["is_special"]:
            assert smollm_vocab[item["token"].replace(" ", "Ġ").replace("\n", "Ċ")] == item["id"]
    # past the end of the turn (ignore_eos), the end-of-turn token shows as special
    ends = [item for item in items if item["id"] == smollm_vocab["<|im_end|>"]]
    assert ends and all(item["is_special"] for item in ends)
    alternatives = [alt for item in items for alt in item["top_logprobs"]]
    assert all(alt["is_special"] == (alt["token"].startswith("<|") and alt["token"].endswith("|>"))
               for alt in alternatives)


def test_chat_logprobs_as_a_count(http):
    """BladeLLM sends logprobs as an integer: on, with that many alternatives."""
    items = chat(http, max_tokens=4, logprobs=3)["choices"][0]["logprobs"]["content"]
    assert len(items) == 4 and all(len(item["top_logprobs"]) == 3 for item in items)
    items = chat(http, max_tokens=4, logprobs=3, top_logprobs=1)["choices"][0]["logprobs"]["content"]
    assert all(len(item["top_logprobs"]) == 1 for item in items)


def test_completion_logprobs_carry_the_content_shape_beside_the_legacy_lists(http, smollm_vocab):
    prompt = "<|im_start|>user\nHi<|im_end|>"
    result = complete(http, prompt=prompt, max_tokens=6, logprobs=2, echo=True)["choices"][0]["logprobs"]
    assert [item["token"] for item in result["content"]] == result["tokens"]
    assert [item["logprob"] for item in result["content"]] == result["token_logprobs"]
    specials = [item for item in result["content"] if item["is_special"]]
    # the prompt's own control tokens (what the model writes after them may hold more)
    assert [item["id"] for item in specials[:2]] == [smollm_vocab["<|im_start|>"], smollm_vocab["<|im_end|>"]]
    assert [item["token"] for item in specials[:2]] == ["<|im_start|>", "<|im_end|>"]


# --- the response side --------------------------------------------------------------------------


def test_responses_carry_a_null_error_info(http):
    assert chat(http)["error_info"] is None
    assert complete(http, prompt="hello world")["error_info"] is None
    events = sse_events(http, CHAT, {"model": SMOLLM, "messages": HI, "max_tokens": 4, "stream": True,
                                     "stream_options": {"include_usage": True}})
    assert all("error_info" in event and event["error_info"] is None for event in events)


def test_usage_and_ids_as_blade_llm_lists_them(http):
    result = complete(http, prompt="hello world", max_tokens=5)
    assert result["id"] and result["model"] == SMOLLM and result["object"] == "text_completion"
    choice = result["choices"][0]
    assert set(choice) >= {"finish_reason", "index", "logprobs", "text"}
    usage = result["usage"]
    assert usage["completion_tokens"] == 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
