"""Read lanes (engine/slots.py, engine/scheduler.py), in-process on SmolLM2: scoring reads that wait once
the slots are taken ride sequence ids beside them, as many a step as the batch has room for, after the
decoding sequences' tokens; each borrows its prefix from the slot holding it and gives every cell back
at the end of its step.

Each step's plan is recorded by wrapping ``Scheduler.plan`` (what it returns is what the step decodes).
"""

from __future__ import annotations

import asyncio

import pytest

from studiolo.config import EngineSettings
from studiolo.engine.engine import Engine
from studiolo.engine.llama import LlamaModel
from studiolo.engine.scheduler import Chunk
from studiolo.engine.sequence import FinishEvent, GenerationRequest, ScoresEvent, TokenEvent
from studiolo.engine.slots import READ_LANES, read_lanes
from tests.conftest import SMOLLM

INPUT = ("The lighthouse keeper climbed the stairs every evening to light the lamp, and every morning he "
         "wrote the weather in a book. The ships passed far out, and none came near the rocks that year.")
PARALLEL = 2
# how far a read's log-probability may move batched with others than alone (docs/ENGINE.md "What
# batching does to numbers": up to 0.27 nats seen); a read missing its prefix moves by whole nats
BATCHED = 0.3


@pytest.fixture(scope="module")
def model(default_models):
    loaded = LlamaModel(default_models[SMOLLM])
    yield loaded
    loaded.close()


def make_engine(model: LlamaModel, parallel: int = PARALLEL, batch_size: int = 512) -> tuple[Engine, list[list[Chunk]]]:
    """An engine whose every planned step is recorded, as its list of chunks."""
    engine = Engine(model, EngineSettings(context_length=1024, parallel=parallel, batch_size=batch_size))
    steps: list[list[Chunk]] = []
    plan = engine.scheduler.plan

    def recorded(*args, **kwargs):
        chunks = plan(*args, **kwargs)
        steps.append(list(chunks))
        return chunks

    engine.scheduler.plan = recorded  # type: ignore[method-assign]
    return engine, steps


async def _events(engine: Engine, requests: list[GenerationRequest]):
    async def one(stream):
        return [event async for event in stream]

    return await asyncio.gather(*(one(stream) for stream in engine.submit_many(requests)))


def run(engine: Engine, requests: list[GenerationRequest]):
    return asyncio.run(_events(engine, requests))


def reads(model: LlamaModel, prefix: list[int], count: int) -> list[GenerationRequest]:
    """Yes/no reads of ``prefix``, one question each (a decision's predicates)."""
    yes, no = (model.tokenize(label, add_special=False)[0] for label in (" yes", " no"))
    return [GenerationRequest(prompt=prefix + model.tokenize(f"\nYes or no: is it about item {i}?\nAnswer:",
                                                             add_special=False),
                              max_tokens=0, score_next=(yes, no), keep_cells=len(prefix)) for i in range(count)]


def scores(events) -> tuple[float, ...]:
    return next(event for event in events if isinstance(event, ScoresEvent)).next


def lanes_are_empty(engine: Engine) -> bool:
    """No lane is taken, and no lane's sequence id holds a cell."""
    return all(not lane.busy and not lane.tokens and engine.context.min_position(lane.seq_id) == -1
               for lane in engine.slots.lanes)


def test_the_context_has_lanes_but_not_with_one_slot(model):
    engine, _ = make_engine(model)
    try:
        assert [lane.seq_id for lane in engine.slots.lanes] == list(range(PARALLEL, PARALLEL + READ_LANES))
        # a batch of cells more than the slots' share, for the lanes' own tokens (llama.cpp pads n_ctx)
        assert engine.context.n_ctx >= 1024 * PARALLEL + 512
    finally:
        engine.close()
    assert read_lanes(1, 512, can_truncate=True) == 0  # parallel 1: every sequence alone
    assert read_lanes(4, 512, can_truncate=False) == 0  # a recurrent state per id would cost memory
    assert read_lanes(4, 16, can_truncate=True) == 12  # no more ids than a batch has rows


def test_a_step_holds_more_reads_than_slots_and_they_score_as_alone(model):
    engine, steps = make_engine(model)
    try:
        prefix = model.tokenize(INPUT, add_special=True)
        run(engine, [GenerationRequest(prompt=prefix, max_tokens=0)])  # the prefix, as a decision warms it
        asked = reads(model, prefix, 12)
        steps.clear()
        together = run(engine, asked)
        assert lanes_are_empty(engine)
        finished = [next(e for e in events if isinstance(e, FinishEvent)) for events in together]
        assert all(f.reason == "length" and f.cached_tokens == len(prefix) for f in finished)
        # one step for all twelve: two in the slots, ten in lanes, each read whole
        assert len(steps) == 1 and len(steps[0]) == 12
        assert sum(chunk.seq.admitted_slot.lane for chunk in steps[0]) == 10
        assert all(chunk.completes_prompt and chunk.start == len(prefix) for chunk in steps[0])
        alone = [scores(run(engine, [read])[0]) for read in asked]
    finally:
        engine.close()
    for batched, single in zip((scores(events) for events in together), alone, strict=True):
        assert batched == pytest.approx(single, abs=BATCHED)


def test_reads_never_take_a_decoding_sequences_place_in_a_step(model):
    """A small batch (48 rows): a generating sequence decodes a token every step while reads fill what is
    left, and no step holds more than the batch."""
    engine, steps = make_engine(model, batch_size=48)
    try:
        prefix = model.tokenize(INPUT, add_special=True)
        run(engine, [GenerationRequest(prompt=prefix, max_tokens=0)])
        steps.clear()
        generate = GenerationRequest(prompt=prefix + model.tokenize(" Once", add_special=False), max_tokens=12,
                                     ignore_eos=True)
        events = run(engine, [generate, *reads(model, prefix, 24)])
        assert lanes_are_empty(engine)
        assert sum(isinstance(event, TokenEvent) for event in events[0]) == 12
        # the steps that feed it a token it generated, and those that hold reads in lanes
        decoding = [i for i, step in enumerate(steps)
                    if any(c.seq.request is generate and c.start >= len(generate.prompt) for c in step)]
        with_lanes = [i for i, step in enumerate(steps) if any(c.seq.admitted_slot.lane for c in step)]
        assert len(decoding) == 12 - 1  # the first token comes from the prompt's last row
        assert decoding == list(range(decoding[0], decoding[0] + len(decoding)))  # not one step skipped
        assert set(decoding) & set(with_lanes), "reads rode lanes while it decoded"
        assert all(sum(len(c.tokens) for c in step) <= 48 for step in steps)
    finally:
        engine.close()


def test_a_read_too_long_for_what_is_left_waits_for_a_slot(model):
    """A read whose own tokens do not fit the step's leftover batch is not split into a lane: it waits,
    and runs in a slot like any sequence."""
    engine, steps = make_engine(model, batch_size=32)
    try:
        prefix = model.tokenize(INPUT, add_special=True)
        run(engine, [GenerationRequest(prompt=prefix, max_tokens=0)])
        long_question = model.tokenize(" And then, after all of that had happened, was it about the sea?" * 3,
                                       add_special=False)
        yes = model.tokenize(" yes", add_special=False)[0]
        long_read = GenerationRequest(prompt=prefix + long_question, max_tokens=0, score_next=(yes,),
                                      keep_cells=len(prefix))
        assert len(long_question) > 32
        steps.clear()
        events = run(engine, [*reads(model, prefix, 2), long_read, *reads(model, prefix, 2)])
        assert all(next(e for e in each if isinstance(e, FinishEvent)).reason == "length" for each in events)
        assert lanes_are_empty(engine)
        placed = [c for step in steps for c in step if c.seq.request is long_read]
        assert placed and not any(c.seq.admitted_slot.lane for c in placed) and len(placed) > 1
    finally:
        engine.close()
