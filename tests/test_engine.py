"""The engine in-process, on SmolLM2: batching without cross-talk, prefix reuse, cancellation.

These tests drive ``Engine`` directly (no HTTP) so they can look at its slots and cells.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from studiolo.config import EngineSettings
from studiolo.domain.sampling import SamplingParams
from studiolo.engine.engine import Engine
from studiolo.engine.llama import LlamaModel, LoraAdapter
from studiolo.engine.prompt_cache import PromptCache, common_prefix_length
from studiolo.engine.sequence import FinishEvent, GenerationRequest, TokenEvent
from tests.batching import assert_same_or_parted_at_a_near_tie
from tests.conftest import SMOLLM

GREEDY = SamplingParams(temperature=0, repeat_penalty=1.0)


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


def request(model, text: str, **kwargs) -> GenerationRequest:
    kwargs.setdefault("max_tokens", 24)
    return GenerationRequest(prompt=model.tokenize(text, add_special=True), sampling=GREEDY, **kwargs)


async def collect(stream):
    """(token, logprob) pairs and the finish event; with logprobs=k > 0, (token, {top k: logprob})."""
    tokens, finish = [], None
    async for event in stream:
        if isinstance(event, TokenEvent):
            if event.logprob is None:
                tokens.append((event.token, None))
            elif event.logprob.top:
                tokens.append((event.token, {alt.token: alt.logprob for alt in event.logprob.top}))
            else:
                tokens.append((event.token, event.logprob.logprob))
        elif isinstance(event, FinishEvent):
            finish = event
    return tokens, finish


def run(coroutine):
    return asyncio.run(coroutine)


async def _generate_one(engine: Engine, generation: GenerationRequest):
    return await collect(engine.submit(generation))


def test_a_sequence_does_not_depend_on_what_its_neighbours_say(engine, model):
    """Same batch shapes, different neighbours' words: the target's tokens and logprobs are bit-identical.

    Neighbours are made of repeated single-token words so both sets have identical lengths.
    """
    target = "The history of the printing press"

    def neighbours(word: str) -> list[GenerationRequest]:
        return [request(model, f"{word}" * (3 + i), max_tokens=24, ignore_eos=True) for i in range(3)]

    async def batched(word: str):
        engine.slots.forget_all()
        reqs = [request(model, target, max_tokens=24, ignore_eos=True, logprobs=0), *neighbours(word)]
        assert len({len(r.prompt) for r in reqs[1:]}) == 3
        streams = engine.submit_many(reqs)
        results = await asyncio.gather(*(collect(s) for s in streams))
        return results[0][0], [r[0] for r in results[1:]]

    first, first_neighbours = run(batched(" cat"))
    second, second_neighbours = run(batched(" sky"))
    assert len(request(model, " cat" * 3).prompt) == len(request(model, " sky" * 3).prompt)
    assert first_neighbours != second_neighbours  # the neighbours really said other things
    assert first == second


def test_prefix_is_reused_from_a_finished_sequence(engine, model):
    async def go():
        base = request(model, "Tell me about the moon. " * 10)
        _, cold = await collect(engine.submit(base))
        _, warm = await collect(engine.submit(base))
        return cold, warm

    cold, warm = run(go())
    assert cold.cached_tokens == 0
    assert warm.cached_tokens == warm.prompt_tokens - 1


def test_prefix_is_shared_with_a_sequence_still_running(engine, model):
    """A request extending a running one's prompt shares its cells, and says what it says alone."""
    shared = "Here is a long shared preamble about astronomy and stars. " * 6

    async def go():
        engine.slots.forget_all()
        alone, _ = await collect(engine.submit(request(model, shared + "Question one?", logprobs=2)))
        engine.slots.forget_all()
        runner = engine.submit(request(model, shared, max_tokens=200, ignore_eos=True))
        await runner.__anext__()  # it has prefilled and is decoding
        follower_tokens, follower = await collect(engine.submit(request(model, shared + "Question one?", logprobs=2)))
        runner.cancel()
        await collect(runner)
        return alone, follower_tokens, follower

    alone, follower_tokens, follower = run(go())
    shared_tokens = request(model, shared).prompt
    full_tokens = request(model, shared + "Question one?").prompt
    expected = common_prefix_length(shared_tokens, full_tokens)  # a trailing space may merge with the next word
    assert expected >= len(shared_tokens) - 1
    assert follower.cached_tokens == expected
    assert_same_or_parted_at_a_near_tie("follower", alone, follower_tokens)  # batched beside the runner


def test_chunked_prefill_gives_the_same_output(model):
    """A prompt longer than the batch is fed in chunks; the output equals one big batch's.

    Chunk shapes change the kernels' summation order, so logprobs agree to rounding only.
    """
    text = "The quick brown fox jumps over the lazy dog. " * 30

    def generate(batch_size: int):
        small = Engine(model, EngineSettings(context_length=1024, parallel=2, batch_size=batch_size))
        try:
            return run(_generate_one(small, request(model, text, logprobs=0)))[0]
        finally:
            small.close()

    chunked, whole = generate(32), generate(512)
    assert [t for t, _ in chunked] == [t for t, _ in whole]
    assert [lp for _, lp in chunked] == pytest.approx([lp for _, lp in whole], abs=0.3)


def test_cancel_frees_the_slot_and_its_cells_stay_reusable(engine, model):
    async def go():
        stream = engine.submit(request(model, "Count to a thousand:", max_tokens=None, ignore_eos=True))
        for _ in range(5):
            await stream.__anext__()
        stream.cancel()
        _, finish = await collect(stream)
        return finish

    finish = run(go())
    assert finish.reason == "cancelled"
    assert engine.scheduler.running == [] and not engine.scheduler.waiting
    assert not any(slot.busy for slot in engine.slots.slots)
    assert max(len(slot.tokens) for slot in engine.slots.slots) >= len(request(model, "Count to a thousand:").prompt)


def test_more_requests_than_slots_wait_their_turn(engine, model):
    async def go():
        streams = [engine.submit(request(model, f"Item {i}:", max_tokens=8, ignore_eos=True)) for i in range(10)]
        return await asyncio.gather(*(collect(s) for s in streams))

    results = run(go())
    assert all(finish.reason == "length" and len(tokens) == 8 for tokens, finish in results)
    assert not any(slot.busy for slot in engine.slots.slots)


def test_generation_stops_at_the_context_end(model):
    small = Engine(model, EngineSettings(context_length=64, parallel=1))
    try:
        prompt = request(model, "Once upon a time", max_tokens=None, ignore_eos=True)
        tokens, finish = run(_generate_one(small, prompt))
    finally:
        small.close()
    assert finish.reason == "context"  # the context filled up, not max_tokens
    assert len(prompt.prompt) + len(tokens) == 64 + 1  # the last sampled token needs no cell


def test_submitting_to_a_closed_engine_fails_at_once(model):
    from studiolo.engine.engine import EngineClosed

    closed = Engine(model, EngineSettings(context_length=64, parallel=1))
    closed.close()
    closed.close()  # closing twice is harmless

    async def go():
        with pytest.raises(EngineClosed):
            closed.submit(request(model, "Hello"))

    run(go())


def test_an_idle_slot_moves_to_ram_and_comes_back(model):
    """Another conversation admitted meanwhile moves the first one's cells to the RAM prompt
    cache; the first one's next turn restores them, reuses its prefix and says the same thing."""
    small = Engine(model, EngineSettings(context_length=1024, parallel=2))
    first = request(model, "Alice asks about the history of the telescope and its makers. " * 4, logprobs=2)
    other = request(model, "Bob wonders how bread rises in a warm kitchen overnight. " * 4)

    async def go():
        alone, cold = await collect(small.submit(first))
        await collect(small.submit(other))
        return alone, cold, [list(slot.tokens) for slot in small.slots.slots], *await collect(small.submit(first))

    try:
        alone, cold, resident, again, warm = run(go())
        assert cold.cached_tokens == 0
        assert not any(tokens[: len(first.prompt)] == first.prompt for tokens in resident)  # it left the KV cache
        assert len(small.slots.cache.entries) >= 1
        assert warm.cached_tokens == len(first.prompt) - 1  # restored from RAM
        # the restored cells are the saved ones, but the last prompt token is computed anew,
        # in another place of the cache: equal up to rounding (tests/batching.py)
        assert_same_or_parted_at_a_near_tie("restored", alone, again)
    finally:
        small.close()


def test_prompt_cache_entries_serve_only_the_adapter_they_were_computed_with():
    cache = PromptCache(1 << 20)
    state = np.zeros(64, dtype=np.uint8)
    adapter = LoraAdapter(Path("tint.gguf"), handle=None)
    tokens = list(range(20))
    cache.put(tokens, state)
    assert cache.best_match(tokens + [7], adapter) == (None, 0)
    assert cache.wants(tokens, adapter) and not cache.wants(tokens)
    cache.put(tokens, state, adapter)  # beside the bare model's entry, not instead of it
    assert len(cache.entries) == 2
    entry, length = cache.best_match(tokens + [7], adapter)
    assert entry.adapter is adapter and length == 20


def test_a_saved_sequence_offered_to_a_fresh_engine_spares_the_prefill(model):
    """What a stored conversation does after a restart: the state saved at a turn's end, offered to
    another engine, serves the next turn's prompt as if the conversation had run there."""
    first = request(model, "Alice asks about the history of the telescope and its makers. " * 4, save_state=True)
    before = Engine(model, EngineSettings(context_length=1024, parallel=2))
    try:
        tokens, finish = run(_generate_one(before, first))
    finally:
        before.close()
    saved = finish.saved
    assert saved.tokens == first.prompt + [token for token, _ in tokens][:-1]  # the last one was never decoded
    follow_up = first.prompt + [token for token, _ in tokens] + model.tokenize(" And then?", add_special=False)
    after = Engine(model, EngineSettings(context_length=1024, parallel=2))
    try:
        assert after.cached_prefix_length(follow_up) == 0
        after.offer_prefix(saved)
        _, warm = run(_generate_one(after, GenerationRequest(follow_up, GREEDY, max_tokens=8)))
        assert warm.cached_tokens == len(saved.tokens)
        assert after.cached_prefix_length(follow_up) >= len(saved.tokens)
    finally:
        after.close()
