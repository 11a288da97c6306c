"""Speculative decoding in the engine, in-process on SmolLM2: a draft model (SmolLM2 drafting for
itself), n-gram lookup and predicted outputs give the output plain decoding gives, with LM Studio's
draft statistics, and the verification keeps the model's sampling distribution. Constraints,
cancellation, LoRA adapters, stop tokens and max_tokens work on speculating sequences."""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter

import pytest

from studiolo.config import EngineSettings
from studiolo.domain.sampling import SamplingParams
from studiolo.engine.constraints import ConstraintSpec, compiler_for
from studiolo.engine.draft_model import (
    MOST_COST,
    ROUND_OVERHEAD,
    DraftModel,
    IncompatibleDraft,
    check_compatible,
    draft_cost,
)
from studiolo.engine.engine import Engine
from studiolo.engine.llama import LlamaModel
from studiolo.engine.ngram import NgramIndex, PredictionLookup, PromptLookup
from studiolo.engine.sequence import FinishEvent, GenerationRequest, TokenEvent
from studiolo.engine.speculation import (
    FIRST_REST,
    START_LENGTH,
    SequenceSpeculation,
    Speculation,
)
from studiolo.models.defaults import QWEN05, target_path
from tests.batching import assert_same_or_parted_at_a_near_tie
from tests.conftest import GEMMA, SMOLLM
from tests.lora import write_lora_adapter

GREEDY = SamplingParams(temperature=0, repeat_penalty=1.0)
CODE = """def total_price(items, tax_rate):
    subtotal = 0
    for item in items:
        subtotal += item.price * item.quantity
    tax = subtotal * tax_rate
    return subtotal + tax
"""


@pytest.fixture(scope="module")
def model(default_models):
    loaded = LlamaModel(default_models[SMOLLM])
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def engine(model, default_models):
    running = Engine(model, EngineSettings(context_length=1024, parallel=4, batch_size=512))
    running.attach_draft(LlamaModel(default_models[SMOLLM]), "smollm2-draft")
    yield running
    running.close()


def request(model, text: str, **kwargs) -> GenerationRequest:
    """A user turn in SmolLM2's chat format, answered greedily with logprobs unless told otherwise."""
    kwargs.setdefault("max_tokens", 40)
    kwargs.setdefault("sampling", GREEDY)
    kwargs.setdefault("logprobs", 5)
    chat = f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
    return GenerationRequest(prompt=model.tokenize(chat, add_special=True), **kwargs)


async def collect(stream) -> tuple[list, FinishEvent]:
    steps, finish = [], None
    async for event in stream:
        if isinstance(event, TokenEvent):
            top = {alt.token: alt.logprob for alt in event.logprob.top} if event.logprob else {}
            steps.append((event.token, top))
        elif isinstance(event, FinishEvent):
            finish = event
    assert finish is not None
    return steps, finish


def generate(engine: Engine, *requests: GenerationRequest) -> list[tuple[list, FinishEvent]]:
    async def run():
        return await asyncio.gather(*(collect(stream) for stream in engine.submit_many(list(requests))))

    return asyncio.run(run())


def tokens_of(steps) -> list[int]:
    return [token for token, _ in steps]


def assert_stats_add_up(finish: FinishEvent) -> None:
    stats = finish.draft
    assert stats is not None
    assert stats.drafted == stats.accepted + stats.rejected + stats.ignored


# --- lookups --------------------------------------------------------------------------


def test_an_ngram_is_found_only_once_something_follows_it():
    index = NgramIndex([1, 2, 3, 4])
    assert index.find([9, 3, 4]) is None  # [3, 4] ends the list: no continuation yet
    index.extend([7])
    assert index.find([9, 3, 4]) == 4
    index.extend([1, 2, 3, 8])
    assert index.find([5, 1, 2, 3]) == 8  # the latest occurrence, longest n-gram first
    assert index.find([5, 1, 2, 3], at_or_after=0) == 3
    assert index.continuation(3, 2) == [4, 7]


def test_prompt_lookup_drafts_what_followed_the_tail_earlier():
    lookup = PromptLookup([10, 11, 12, 13, 14, 15, 99, 10, 11])
    assert lookup.propose([], 3) == [12, 13, 14]
    assert lookup.propose([12], 3) == [13, 14, 15]
    assert lookup.propose([12, 50], 3) == []


def test_prediction_lookup_starts_at_the_start_and_resyncs_after_an_edit():
    prediction = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    lookup = PredictionLookup(prediction)
    assert lookup.propose([], 4) == [1, 2, 3, 4]
    # the output replaced 4 by 40, then went on as the prediction does
    assert lookup.propose([1, 2, 3, 40], 4) == []
    assert lookup.propose([1, 2, 3, 40, 5, 6], 3) == [7, 8, 9]


# --- adapting -------------------------------------------------------------------------


def verify(state: SequenceSpeculation, drafted: int, accepted: int, rounds: int = 0) -> None:
    """What the engine does with a verified draft of the state's one source (``rounds``: of a draft model)."""
    state.source = "draft" if state.spec.draft is not None else "ngram"
    if state.source == "draft":
        state.drafted_by_model(drafted, rounds)
    state.start(drafted)
    for place in range(min(drafted, accepted + 1)):
        state.checked(place < accepted)
    state.settle(ended=False)


def fail_until_resting(state: SequenceSpeculation, source: str) -> int:
    """Verify drafts of which none holds until the source rests; how many it took."""
    for failed in range(1, 20):
        verify(state, state.length(source), 0, rounds=state.length(source) + 1)
        if not state.drafts_from(source):
            return failed
    raise AssertionError(f"{source} drafts on after 19 drafts of which none held")


def rest_length(state: SequenceSpeculation, source: str) -> int:
    """How many more steps the source rests (it was asked once already)."""
    steps = 1
    while not state.drafts_from(source):
        steps += 1
    return steps


def test_a_source_whose_drafts_do_not_pay_rests_then_tries_again_resting_longer():
    state = SequenceSpeculation(Speculation(ngram=True), [1, 2, 3])
    verify(state, 8, 8)  # paid (8 tokens for 8 rows, 2.4 steps): it drafts longer
    assert state.length("ngram") == START_LENGTH["ngram"] + 2 and state.drafts_from("ngram")
    assert 1 < fail_until_resting(state, "ngram") < 5  # the gain behind it holds it a few misses
    assert rest_length(state, "ngram") == FIRST_REST
    assert fail_until_resting(state, "ngram") <= 2  # back with fresh figures, failing again:
    assert rest_length(state, "ngram") == 2 * FIRST_REST
    verify(state, 1, 1)  # a draft that pays: the next rest is the first one again
    fail_until_resting(state, "ngram")
    assert rest_length(state, "ngram") == FIRST_REST
    stats = state.stats
    assert stats.accepted == 9 and stats.rejected == stats.drafted - 9 and stats.ignored == 0


def test_a_draft_models_rounds_count_even_when_they_draft_nothing():
    draft = DraftModel.__new__(DraftModel)  # no context needed to price it
    draft.cost = 0.2
    state = SequenceSpeculation(Speculation(draft=draft), [1, 2, 3])
    assert state.round_cost() == 0.2
    verify(state, 3, 3, rounds=3)  # 3 tokens for 3 rounds and 3 rows (1.5 steps)
    fruitless = 0
    while state.drafts_from("draft"):  # rounds where it was not sure enough of its first token
        state.drafted_by_model(0, 1)
        fruitless += 1
        assert fruitless < 20
    assert 5 < fruitless < 15 and state.stats.drafted == 3
    assert rest_length(state, "draft") == FIRST_REST


def test_a_draft_models_cost_is_its_share_of_the_weights_read_and_at_most_most_cost(model):
    assert draft_cost(model, model) == MOST_COST  # drafting for itself never pays: it drafts where sure
    bigger = LlamaModel(target_path(QWEN05))  # installed by make setup
    try:
        assert draft_cost(bigger, model) == pytest.approx(ROUND_OVERHEAD + model.size_bytes / bigger.size_bytes)
        assert ROUND_OVERHEAD < draft_cost(bigger, model) < MOST_COST
    finally:
        bigger.close()


# --- the engine ------------------------------------------------------------------------


@pytest.mark.parametrize(("prompt", "least_drafted"), [
    ("Write a short poem about the sea and the wind.", 1),  # unsure: few drafts are worth a round
    ("Count from 1 to 20, separated by commas.", 15),  # sure (it counts "1. 1", "2. 2"...): most are
])
def test_a_draft_model_drafting_for_itself_keeps_the_greedy_output(engine, model, prompt, least_drafted):
    (plain, plain_end), = generate(engine, request(model, prompt))
    draft = Speculation(draft=engine.drafts["smollm2-draft"])
    (drafted, end), = generate(engine, request(model, prompt, speculation=draft))
    assert_same_or_parted_at_a_near_tie("self-draft", plain, drafted)
    assert plain_end.draft is None
    assert_stats_add_up(end)
    # a model agrees with itself (but where its arithmetic parts a near-tie); it drafts only where it is
    # so sure that a draft pays its round (MOST_COST, VERIFY_COST)
    assert end.draft.drafted >= least_drafted and end.draft.accepted >= 0.8 * end.draft.drafted, end.draft
    assert end.completion_tokens == len(drafted) > 20


def test_a_prediction_equal_to_the_output_is_accepted_almost_whole(engine, model):
    prompt = "List the days of the week, one per line."
    (plain, _), = generate(engine, request(model, prompt, max_tokens=48))
    prediction = tuple(tokens_of(plain))
    (predicted, end), = generate(engine, request(model, prompt, max_tokens=48,
                                                 speculation=Speculation(prediction=prediction)))
    assert_same_or_parted_at_a_near_tie("prediction", plain, predicted)
    assert_stats_add_up(end)
    if tokens_of(plain) == tokens_of(predicted):
        # every token but the first (from the prompt's step) and each step's last (the model's own, after
        # the drafts it accepted) was a draft: 16, then 18, then 20 drafts a step
        assert end.draft.rejected == 0, end.draft
        assert end.draft.accepted >= len(predicted) - 1 - 3, end.draft


def test_ngram_lookup_drafts_code_the_prompt_holds(engine, model):
    prompt = f"Here is a function:\n{CODE}\nRepeat it exactly:\n"
    (plain, _), = generate(engine, request(model, prompt, max_tokens=60))
    (looked_up, end), = generate(engine, request(model, prompt, max_tokens=60, speculation=Speculation(ngram=True)))
    assert_same_or_parted_at_a_near_tie("ngram", plain, looked_up)
    assert_stats_add_up(end)
    assert end.draft.accepted > 10, end.draft


def test_max_tokens_and_stop_tokens_stay_exact(engine, model):
    prompt = "Count from one to twenty: one, two, three,"
    (plain, _), = generate(engine, request(model, prompt, max_tokens=30))
    prediction = tuple(tokens_of(plain))
    for max_tokens in (1, 2, 7, 13):
        (out, end), = generate(engine, request(model, prompt, max_tokens=max_tokens,
                                               speculation=Speculation(prediction=prediction)))
        assert tokens_of(out) == tokens_of(plain)[:max_tokens]
        assert end.reason == "length" and end.completion_tokens == max_tokens
        assert_stats_add_up(end)
    stop = tokens_of(plain)[9]
    (out, end), = generate(engine, request(model, prompt, max_tokens=30, stop_tokens=frozenset({stop}),
                                           speculation=Speculation(prediction=prediction)))
    assert tokens_of(out) == tokens_of(plain)[: tokens_of(plain).index(stop)]  # a stop token is not output
    assert end.reason == "stop"
    assert_stats_add_up(end)
    assert end.draft.ignored > 0  # the drafts after the stop token were never looked at


def test_rejected_drafts_leave_no_cells_behind(engine, model):
    """A prediction with one token changed is rejected there and taken up again after it; the slot then
    lists exactly what its cells hold, so the next request reusing the prefix gives the plain output."""
    prompt = "Name three fruits and say what colour each is."
    (plain, _), = generate(engine, request(model, prompt, max_tokens=30))
    expected = tokens_of(plain)
    wrong = next(t for t in plain[6][1] if t != expected[6])
    prediction = (*expected[:6], wrong, *expected[7:])
    edited = Speculation(prediction=prediction)
    (out, end), = generate(engine, request(model, prompt, max_tokens=30, speculation=edited))
    assert_same_or_parted_at_a_near_tie("edited prediction", plain, out)
    assert end.draft.rejected > 0 and end.draft.accepted > 10, end.draft
    assert_stats_add_up(end)
    for slot in engine.slots.slots:
        if slot.tokens:
            held = engine.context.min_position(slot.seq_id), _max_position(engine, slot.seq_id)
            assert held == (0, len(slot.tokens) - 1), (held, len(slot.tokens))
    follow_up = prompt + " Then name a vegetable."
    (again, _), = generate(engine, request(model, follow_up, max_tokens=10))
    engine.slots.forget_all()
    (fresh, _), = generate(engine, request(model, follow_up, max_tokens=10))
    assert tokens_of(again) == tokens_of(fresh)


def _max_position(engine: Engine, seq_id: int) -> int:
    import llama_cpp as llama

    return llama.llama_memory_seq_pos_max(llama.llama_get_memory(engine.context.handle), seq_id)


def test_speculating_beside_plain_sequences_changes_nobody(engine, model):
    prompts = ["Tell me about owls.", f"Copy this:\n{CODE}\nCopy:\n", "Why is the sky blue?"]
    alone = [generate(engine, request(model, text))[0][0] for text in prompts]
    specs = [None, Speculation(ngram=True), Speculation(draft=engine.drafts["smollm2-draft"])]
    together = generate(engine, *(request(model, text, speculation=spec)
                                  for text, spec in zip(prompts, specs, strict=True)))
    for text, solo, (batched, _) in zip(prompts, alone, together, strict=True):
        assert_same_or_parted_at_a_near_tie(text, solo, batched)


def test_a_seeded_sampled_request_gives_the_same_output_with_drafts(engine, model):
    """One random draw per emitted token, from the same logits: drafts change nothing but speed
    (up to a draw at a near-tie that batched arithmetic tips, which these seeds do not meet)."""
    prompt = "Once upon a time"
    same = 0
    for seed in range(6):
        sampling = SamplingParams(temperature=0.9, top_k=40, top_p=0.95, seed=seed)
        (plain, _), = generate(engine, request(model, prompt, sampling=sampling, max_tokens=24))
        (drafted, _), = generate(engine, request(model, prompt, sampling=sampling, max_tokens=24,
                                                 speculation=Speculation(draft=engine.drafts["smollm2-draft"])))
        same += tokens_of(plain) == tokens_of(drafted)
    assert same >= 5


def test_verified_sampling_keeps_the_models_distribution(engine, model):
    """Two-sample test over disjoint seeds: the token after " Paris" (SmolLM2: "." 0.49, "," 0.47), with
    a prediction that always drafts "," there, against no drafts at all. Accepting drafts the model
    did not sample would pull the share of "," towards 1; rejection sampling with a one-hot proposal
    must leave it where sampling noise puts it."""
    chat = "<|im_start|>user\nTell me something.<|im_end|>\n<|im_start|>assistant\nThe capital of France is"
    prompt = model.tokenize(chat, add_special=True)
    paris, comma = model.tokenize(" Paris", add_special=False), model.tokenize(",", add_special=False)
    assert len(paris) == len(comma) == 1
    sampling = dict(temperature=1.0, top_k=8, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
    runs = 240

    def second_tokens(seeds: range, speculation: Speculation | None) -> Counter:
        found: Counter = Counter()
        for start in range(seeds.start, seeds.stop, 4):
            requests = [GenerationRequest(prompt, SamplingParams(seed=seed, **sampling), max_tokens=2,
                                          speculation=speculation) for seed in range(start, min(start + 4, seeds.stop))]
            for steps, _ in generate(engine, *requests):
                if tokens_of(steps)[:1] == paris:
                    found[steps[1][0]] += 1
        return found

    plain = second_tokens(range(0, runs), None)
    drafted = second_tokens(range(10_000, 10_000 + runs), Speculation(prediction=(*paris, *comma)))
    n_plain, n_drafted = sum(plain.values()), sum(drafted.values())
    assert n_plain > runs // 2 and n_drafted > runs // 2
    decoy = comma[0]
    pooled = (plain[decoy] + drafted[decoy]) / (n_plain + n_drafted)
    noise = math.sqrt(pooled * (1 - pooled) * (1 / n_plain + 1 / n_drafted))
    assert abs(plain[decoy] / n_plain - drafted[decoy] / n_drafted) <= 4 * noise, (plain, drafted)
    assert drafted[decoy] < 0.75 * n_drafted, drafted  # far from every draft taken


def test_a_draft_with_another_vocabulary_is_refused(model, default_models):
    other = LlamaModel(default_models[GEMMA])
    try:
        with pytest.raises(IncompatibleDraft) as refused:
            check_compatible(model, other, "gemma")
        assert refused.value.param == "draft_model"
        check_compatible(model, model, "itself")
    finally:
        other.close()


def test_constrained_output_is_the_same_with_drafts(engine, model):
    """Drafts the grammar refuses are cut before verification (ignored); the matcher only ever takes
    emitted tokens, so the output is the plain constrained one and still matches the schema."""
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    compiled = compiler_for(model).compile(ConstraintSpec.json_schema(schema))
    prompt = "Give me a person as JSON with a name and an age."
    (plain, _), = generate(engine, request(model, prompt, max_tokens=40, constraint=compiled))
    text = b"".join(model.token_bytes(t) for t in tokens_of(plain))
    # a prediction that starts as the output does, then breaks the grammar: those drafts are refused
    prediction = (*tokens_of(plain)[:6], *model.tokenize("]]]]", add_special=False))
    for speculation in (Speculation(prediction=prediction), Speculation(draft=engine.drafts["smollm2-draft"]),
                        Speculation(ngram=True)):
        (out, end), = generate(engine, request(model, prompt, max_tokens=40, constraint=compiled,
                                               speculation=speculation))
        assert_same_or_parted_at_a_near_tie(f"constrained, {speculation}", plain, out)
        assert_stats_add_up(end)
        if speculation.prediction:
            assert end.draft.accepted >= 4 and end.draft.ignored > 0, end.draft
    assert json.loads(text)["age"] >= 0


def test_a_speculating_sequence_can_be_cancelled(engine, model):
    async def run():
        stream = engine.submit(request(model, f"Copy this:\n{CODE}\nCopy:\n", max_tokens=200, logprobs=None,
                                       speculation=Speculation(ngram=True)))
        seen = 0
        async for event in stream:
            if isinstance(event, TokenEvent):
                seen += 1
                if seen == 5:
                    stream.cancel()
            elif isinstance(event, FinishEvent):
                return seen, event

    seen, end = asyncio.run(run())
    assert end.reason == "cancelled" and seen < 200
    assert_stats_add_up(end)
    (after, _), = generate(engine, request(model, "Say hi.", max_tokens=5))
    assert after  # the engine goes on


def test_drafts_verified_with_a_lora_adapter(model, default_models, tmp_path):
    adapter_path = write_lora_adapter(default_models[SMOLLM], tmp_path / "adapter.gguf")
    adapter = model.load_adapter(adapter_path)
    running = Engine(model, EngineSettings(context_length=512, parallel=2, batch_size=256))
    try:
        prompt = f"Copy this:\n{CODE}\nCopy:\n"
        (plain, _), = generate(running, request(model, prompt, adapter=adapter))
        (drafted, end), = generate(running, request(model, prompt, adapter=adapter,
                                                    speculation=Speculation(ngram=True)))
        assert_same_or_parted_at_a_near_tie("adapter", plain, drafted)
        assert_stats_add_up(end)
    finally:
        running.close()
