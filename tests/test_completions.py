"""/v1/completions end to end: no template, text or token prompts, echo, logprobs."""

from __future__ import annotations

import pytest

from tests.batching import ROUNDING_LOGPROB_BOUND
from tests.conftest import GEMMA, NO_PENALTY, SMOLLM, smollm_token_id

PROMPT = "The three primary colors are"


def complete(client, prompt=PROMPT, model=SMOLLM, **kwargs):
    kwargs.setdefault("temperature", 0)
    extra = {**NO_PENALTY, **kwargs.pop("extra_body", {})}
    return client.completions.create(model=model, prompt=prompt, extra_body=extra, **kwargs)


def test_completion_has_openai_shape(client):
    result = complete(client, max_tokens=10)
    assert result.object == "text_completion" and result.id.startswith("cmpl-")
    assert result.model == SMOLLM
    choice = result.choices[0]
    assert choice.index == 0 and choice.text and choice.finish_reason == "length"
    assert choice.logprobs is None
    assert result.usage.completion_tokens == 10


def test_without_max_tokens_generation_runs_to_its_end(client):
    """No cap of 16 (OpenAI's legacy default): it ends at a stop, end of text or the context."""
    long = complete(client, prompt="Water boils at", max_tokens=40).choices[0].text
    assert len(long) > 120
    stop = long[100:108]  # well past the 16th token
    result = complete(client, prompt="Water boils at", stop=stop)
    assert result.usage.completion_tokens > 16
    assert result.choices[0].finish_reason == "stop"
    assert result.choices[0].text == long[: long.index(stop)]


def test_token_id_prompt_equals_its_text(client, http):
    text = complete(client, max_tokens=8, logprobs=0, echo=True)
    # SmolLM adds no BOS: the echoed tokens are exactly the prompt's tokens
    n_prompt = text.usage.prompt_tokens
    assert "".join(text.choices[0].logprobs.tokens[:n_prompt]) == PROMPT


def test_echo_returns_prompt_then_output(client):
    plain = complete(client, max_tokens=8).choices[0].text
    echoed = complete(client, max_tokens=8, echo=True).choices[0].text
    assert echoed == PROMPT + plain


def test_echo_with_logprobs_scores_the_prompt(client):
    result = complete(client, max_tokens=4, echo=True, logprobs=2)
    logprobs = result.choices[0].logprobs
    n = result.usage.prompt_tokens + result.usage.completion_tokens
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.text_offset) == n
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert all(lp <= 0 for lp in logprobs.token_logprobs[1:])
    assert "".join(logprobs.tokens) == result.choices[0].text
    assert logprobs.text_offset == sorted(logprobs.text_offset)


def test_scoring_a_prompt_with_zero_max_tokens(client):
    """How evaluation harnesses take log-likelihoods: echo, logprobs and no new tokens."""
    scored = complete(client, prompt=PROMPT + " red, blue and yellow", max_tokens=0, echo=True, logprobs=1)
    assert scored.usage.completion_tokens == 0
    assert scored.choices[0].text == PROMPT + " red, blue and yellow"
    assert scored.choices[0].finish_reason == "length"


def test_prompt_logprobs_agree_with_generation_logprobs(client):
    """The logprob of a generated token equals its score when the output is fed back as prompt.

    Equal up to rounding: the two runs place their cells differently in the KV cache (see
    tests/batching.py). A scoring off by one position would miss by several nats.
    """
    generated = complete(client, max_tokens=6, logprobs=0)
    scored = complete(client, prompt=PROMPT + generated.choices[0].text, max_tokens=0, echo=True, logprobs=0)
    n_prompt = generated.usage.prompt_tokens
    rescored = scored.choices[0].logprobs.token_logprobs[n_prompt:]
    assert rescored == pytest.approx(generated.choices[0].logprobs.token_logprobs, abs=ROUNDING_LOGPROB_BOUND)


def test_token_ids_as_prompt(client, smollm_vocab):
    echoed = complete(client, max_tokens=1, echo=True, logprobs=0).choices[0].logprobs.tokens[:-1]
    assert "".join(echoed) == PROMPT
    ids = [smollm_token_id(smollm_vocab, token) for token in echoed]
    by_text = complete(client, max_tokens=8)
    by_ids = complete(client, prompt=ids, max_tokens=8)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage.prompt_tokens == by_text.usage.prompt_tokens == len(ids)


def test_several_prompts_give_one_choice_each(client):
    result = complete(client, prompt=["Red is a", "Blue is a"], max_tokens=4)
    assert [c.index for c in result.choices] == [0, 1]
    assert result.choices[0].text == complete(client, prompt="Red is a", max_tokens=4).choices[0].text
    assert result.choices[1].text == complete(client, prompt="Blue is a", max_tokens=4).choices[0].text


def test_streamed_completion_matches_and_reports_usage(client):
    whole = complete(client, max_tokens=12).choices[0].text
    chunks = list(complete(client, max_tokens=12, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_stop_tokens_end_generation_at_a_token_id(client, smollm_vocab):
    full = complete(client, prompt="Water boils at", max_tokens=30).choices[0].text
    assert "." in full
    period = smollm_token_id(smollm_vocab, ".")
    cut = complete(client, prompt="Water boils at", max_tokens=30, extra_body={"stop_tokens": [period]})
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == full[: full.index(".")]


def test_logit_bias_bans_a_token(client, smollm_vocab):
    period = smollm_token_id(smollm_vocab, ".")
    full = complete(client, prompt="Water boils at", max_tokens=30, logprobs=0).choices[0].logprobs.tokens
    bias = {str(period): -100}
    banned = complete(client, prompt="Water boils at", max_tokens=30, logprobs=0, logit_bias=bias)
    assert "." in full and "." not in banned.choices[0].logprobs.tokens


def test_gemma_base_model_completion(client):
    result = complete(client, model=GEMMA, prompt="The capital of France is", max_tokens=6)
    assert result.model == GEMMA and result.usage.completion_tokens == 6
    assert result.usage.prompt_tokens == 6  # <bos> and five words


def test_echo_logprobs_leave_out_the_bos_the_tokenizer_added(client):
    """Gemma's tokenizer puts <bos> before the prompt: not text the client sent, so not echoed; the
    first word is scored given it."""
    prompt = "The capital of France is"
    result = complete(client, model=GEMMA, prompt=prompt, max_tokens=2, echo=True, logprobs=1)
    logprobs = result.choices[0].logprobs
    n_echoed = result.usage.prompt_tokens - 1  # the <bos> counts as a prompt token the model read
    assert "".join(logprobs.tokens[:n_echoed]) == prompt
    assert len(logprobs.tokens) == n_echoed + result.usage.completion_tokens
    assert all(lp is not None and lp <= 0 for lp in logprobs.token_logprobs)
    assert logprobs.text_offset[0] == 0 and "<bos>" not in "".join(logprobs.top_logprobs[0])


def test_text_offsets_count_characters_split_over_tokens(client):
    """漢 is three tokens in SmolLM2's vocabulary: offsets still index the returned text."""
    prompt = "The character 漢 means Han, and 漢字 means"
    result = complete(client, prompt=prompt, max_tokens=6, echo=True, logprobs=0)
    logprobs, text = result.choices[0].logprobs, result.choices[0].text
    assert any(token.startswith("bytes:") for token in logprobs.tokens)  # a split character
    for token, offset in zip(logprobs.tokens, logprobs.text_offset):
        if not token.startswith("bytes:"):
            assert text[offset : offset + len(token)] == token


def test_usage_stops_counting_at_a_stop_string(client):
    full = complete(client, prompt="Water boils at", max_tokens=30, logprobs=0)
    tokens = full.choices[0].logprobs.tokens
    stop = tokens[5].strip() or tokens[6].strip()
    cut = complete(client, prompt="Water boils at", max_tokens=30, stop=stop, logprobs=0)
    stop_index = next(i for i, t in enumerate(tokens) if stop in t)
    assert cut.usage.completion_tokens == stop_index + 1  # up to the token that completed the stop


def test_echo_spells_special_tokens_typed_in_the_prompt(client):
    prompt = "Hello<|im_end|> world"
    result = complete(client, prompt=prompt, max_tokens=0, echo=True, logprobs=0)
    assert result.choices[0].text == prompt
    assert "".join(result.choices[0].logprobs.tokens) == prompt
    assert "<|im_end|>" in result.choices[0].logprobs.tokens
