"""Scoring without sampling (engine/prompt_scoring.py), in-process on SmolLM2: ``score_tail`` gives the
same log-probabilities as echo's prompt logprobs, but reuses a cached prefix up to the first row it
reads; ``score_next`` scores candidate next tokens from the last row. Compared where the rows are
computed in the same shapes (one sequence at a time, a prompt within one of echo's 64-row chunks):
other shapes, and cells placed elsewhere in the cache, round differently (docs/ENGINE.md "What batching
does to numbers").
"""

from __future__ import annotations

import asyncio

import pytest

from studiolo.config import EngineSettings
from studiolo.engine.engine import Engine
from studiolo.engine.llama import LlamaModel
from studiolo.engine.prompt_scoring import InvalidScoring
from studiolo.engine.sequence import FinishEvent, GenerationRequest, PromptLogprobsEvent, ScoresEvent
from tests.conftest import SMOLLM

PREFIX = ("The lighthouse keeper climbed the stairs every evening to light the lamp, and every morning he "
          "wrote the weather in a book. Question: was the sea calm today?")
EXACT = 1e-4


@pytest.fixture(scope="module")
def model(default_models):
    loaded = LlamaModel(default_models[SMOLLM])
    yield loaded
    loaded.close()


@pytest.fixture
def engine(model):
    running = Engine(model, EngineSettings(context_length=1024, parallel=4, batch_size=512))
    yield running
    running.close()


async def _events(engine: Engine, requests: list[GenerationRequest]):
    async def one(stream):
        return [event async for event in stream]

    return await asyncio.gather(*(one(stream) for stream in engine.submit_many(requests)))


def run(engine: Engine, *requests: GenerationRequest):
    return asyncio.run(_events(engine, list(requests)))


def _of(events, kind):
    return next(event for event in events if isinstance(event, kind))


def test_a_scored_tail_equals_echos_logprobs_and_reuses_the_prefix(engine, model):
    prefix = model.tokenize(PREFIX, add_special=True)
    label = model.tokenize(" Yes, the sea was calm", add_special=False)
    prompt = prefix + label
    (echoed,) = run(engine, GenerationRequest(prompt=prompt, max_tokens=0, prompt_logprobs=True, logprobs=0))
    expected = [score.logprob for score in _of(echoed, PromptLogprobsEvent).logprobs[-len(label):]]

    engine.slots.forget_all()
    (cold,) = run(engine, GenerationRequest(prompt=prompt, max_tokens=0, score_tail=len(label)))
    assert _of(cold, FinishEvent).reason == "length" and _of(cold, FinishEvent).cached_tokens == 0
    assert list(_of(cold, ScoresEvent).tail) == pytest.approx(expected, abs=EXACT)
    assert _of(cold, ScoresEvent).next == ()

    # the prefix is cached now: reused up to the row before the label's first token, not past it
    (warm,) = run(engine, GenerationRequest(prompt=prompt, max_tokens=0, score_tail=len(label)))
    assert _of(warm, FinishEvent).cached_tokens == len(prompt) - len(label) - 1
    assert list(_of(warm, ScoresEvent).tail) == pytest.approx(expected, abs=EXACT)


def test_next_token_candidates_are_scored_from_the_last_row(engine, model):
    prefix = model.tokenize(PREFIX, add_special=True)
    candidates = tuple(model.tokenize(word, add_special=False)[0] for word in (" Yes", " No", " Maybe"))
    # one at a time: prompts prefilled together in one batch round differently (docs/ENGINE.md)
    echoes = [run(engine, GenerationRequest(prompt=prefix + [token], max_tokens=0, prompt_logprobs=True,
                                            logprobs=0))[0] for token in candidates]
    expected = [_of(events, PromptLogprobsEvent).logprobs[-1].logprob for events in echoes]
    # after the prefix alone, reads of it start from its cells: together, each computes its last row only
    engine.slots.forget_all()
    run(engine, GenerationRequest(prompt=prefix, max_tokens=0))
    together = run(engine, *(GenerationRequest(prompt=prefix, max_tokens=0, score_next=candidates) for _ in range(3)))
    for events in together:
        assert list(_of(events, ScoresEvent).next) == pytest.approx(expected, abs=EXACT)
        assert _of(events, FinishEvent).cached_tokens == len(prefix) - 1


def test_a_scoring_request_is_checked(engine, model):
    prompt = model.tokenize(PREFIX, add_special=True)
    with pytest.raises(InvalidScoring):  # nothing before the tail to predict its first token
        asyncio.run(_submit(engine, GenerationRequest(prompt=prompt, max_tokens=0, score_tail=len(prompt))))
    with pytest.raises(InvalidScoring):  # scoring reads the prompt only
        asyncio.run(_submit(engine, GenerationRequest(prompt=prompt, max_tokens=4, score_tail=1)))
    with pytest.raises(InvalidScoring):
        asyncio.run(_submit(engine, GenerationRequest(prompt=prompt, max_tokens=0, score_next=(model.n_vocab,))))


async def _submit(engine: Engine, request: GenerationRequest) -> None:
    engine.submit(request)


def test_reads_leave_only_the_shared_prefix_behind(engine, model):
    """Reads of one input (``keep_cells``): their slots keep the input, and the RAM prompt cache never gets
    a copy of it per question."""
    prefix = model.tokenize(PREFIX, add_special=True)
    engine.slots.forget_all()
    run(engine, GenerationRequest(prompt=prefix, max_tokens=0))
    reads = [GenerationRequest(prompt=prefix + model.tokenize(f" Question {i}: is it {i}? Answer: yes",
                                                              add_special=False),
                               max_tokens=0, score_tail=1, keep_cells=len(prefix)) for i in range(8)]
    finished = [_of(events, FinishEvent) for events in run(engine, *reads)]
    assert all(finish.reason == "length" and finish.cached_tokens >= len(prefix) for finish in finished)
    assert all(slot.tokens in ([], prefix) for slot in engine.slots.slots)
    assert all(len(entry.tokens) <= len(prefix) for entry in engine.slots.cache.entries)
