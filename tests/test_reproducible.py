"""A seeded request gives the same answer whether its prompt is cached or not.

The last prompt token's logits decide the first sampled token. Prefilled cold, that token used to
be one row of a batch with the rest of the prompt; resumed from the prefix cache, a row alone.
CPU kernels round differently by batch shape, so the first sampled token of Gemma 3 moved: the
request below gave "Write a number. ..." cold and "Write a paragraph. ..." once cached. The engine
now always decodes the last prompt token in a step of its own (engine/scheduler.py).
"""

from __future__ import annotations

import pytest

from tests.conftest import GEMMA, SMOLLM, unload_all

SEEDED = {"temperature": 0.9, "seed": 7, "max_tokens": 12}
PENALTIES = {"repeat_penalty": 1.3, "frequency_penalty": 0.5, "presence_penalty": 0.3}


@pytest.mark.parametrize("model", [GEMMA, SMOLLM])
@pytest.mark.parametrize("penalties", [{}, PENALTIES], ids=["no-penalties", "penalties"])
def test_a_seeded_request_gives_the_same_answer_cold_and_cached(http, model, penalties):
    unload_all(http)  # the first request loads the model: nothing of the prompt is cached
    body = {"model": model, "messages": [{"role": "user", "content": "Write a word."}], **SEEDED, **penalties}
    other = {**body, "messages": [{"role": "user", "content": "Describe the weather in Paris in spring."}]}
    answers = []
    for request in (body, other, body, body):  # cold; the other prompt moves its cells to RAM; restored; in a slot
        reply = http.post("/v1/chat/completions", json=request)
        assert reply.status_code == 200, reply.text
        answers.append(reply.json())
    del answers[1]
    usage = [answer["usage"] for answer in answers]
    assert [u["prompt_tokens_details"]["cached_tokens"] for u in usage] == [0] + [usage[0]["prompt_tokens"] - 1] * 2
    texts = [answer["choices"][0]["message"]["content"] for answer in answers]
    assert texts[0] and texts == [texts[0]] * 3
