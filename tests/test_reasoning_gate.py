"""The engine's reasoning gate (engine/reasoning_gate.py), in-process on Qwen2.5-Coder-0.5B (whose
vocabulary splits ``<think>`` into three tokens and has ``>{"`` as one): a reasoning budget cut,
a constraint that waits for the answer (also past a token straddling the close marker), no end
while it waits, speculation through the gate, and no change at all without a spec.

The model was not trained to reason: the prompt opens the reasoning (as QwQ's template does) or the
gate does, and the tests check the plumbing, not any thinking. Greedy runs are deterministic, so
the gated output is compared token by token with the free one.
"""

from __future__ import annotations

import asyncio
import json
import re

import numpy as np
import pytest

from studiolo.config import EngineSettings
from studiolo.domain.sampling import SamplingParams
from studiolo.engine.constraints import ConstraintSpec, compiler_for
from studiolo.engine.engine import Engine
from studiolo.engine.llama import LlamaModel
from studiolo.engine.reasoning_gate import REASONING, UNDECIDED, ReasoningSpec
from studiolo.engine.sequence import FinishEvent, GenerationRequest, TokenEvent
from studiolo.engine.speculation import Speculation
from studiolo.models.defaults import QWEN05, target_path

GREEDY = SamplingParams(temperature=0, repeat_penalty=1.0)
QUESTION = "What is 17 times 23? Think it through step by step."
DIGITS = ConstraintSpec.regex("[0-9]{3}")
POINT = ConstraintSpec.json_schema({"type": "object", "properties": {"a": {"type": "integer"}},
                                    "required": ["a"], "additionalProperties": False})


@pytest.fixture(scope="module")
def model():
    path = target_path(QWEN05)
    if not path.exists():
        pytest.fail(f"{path} is missing; run `make setup`")
    loaded = LlamaModel(path)
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def engine(model):
    running = Engine(model, EngineSettings(context_length=1024, parallel=2, batch_size=256))
    yield running
    running.close()


def tokens(model, text: str) -> tuple[int, ...]:
    return tuple(model.tokenize(text, add_special=False))


def spec(model, *, open_tag: str = "<think>", close: str = "</think>", phase: str = REASONING,
         budget: int | None = None, waits: bool = False) -> ReasoningSpec:
    return ReasoningSpec(open_tag.encode(), close.encode(), phase, budget,
                         cut=tokens(model, f"{close}\n\n"), cut_mid_line=tokens(model, f"\n{close}\n\n"),
                         open_tokens=tokens(model, f"{open_tag}\n"), constraint_waits=waits)


def request(model, *, opened: bool = True, max_tokens: int = 24, **kwargs) -> GenerationRequest:
    """A ChatML turn whose assistant part opens ``<think>`` (``opened``) as QwQ's template does."""
    text = f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n" + ("<think>\n" if opened else "")
    kwargs.setdefault("sampling", GREEDY)
    return GenerationRequest(prompt=model.tokenize(text, add_special=False), max_tokens=max_tokens, **kwargs)


def constrained(model, constraint: ConstraintSpec, **kwargs) -> GenerationRequest:
    return request(model, constraint=compiler_for(model).compile(constraint), **kwargs)


def generate(engine: Engine, generation: GenerationRequest) -> tuple[list[TokenEvent], FinishEvent]:
    async def go():
        events, finish = [], None
        async for event in engine.submit(generation):
            if isinstance(event, TokenEvent):
                events.append(event)
            elif isinstance(event, FinishEvent):
                finish = event
        assert finish is not None
        return events, finish

    return asyncio.run(go())


def ids(events: list[TokenEvent]) -> list[int]:
    return [event.token for event in events]


def text_of(events: list[TokenEvent]) -> str:
    return b"".join(event.piece for event in events).decode("utf-8", errors="replace")


def answer_of(events: list[TokenEvent], close: str = "</think>") -> str:
    """What follows the close marker, without the whitespace the cut or the model put after it."""
    text = text_of(events)
    assert close in text, text
    return text.split(close, 1)[1].lstrip()


def cut_for(model, gated: ReasoningSpec, reasoning: list[TokenEvent]) -> tuple[int, ...]:
    ends_line = not reasoning or text_of(reasoning).endswith("\n")
    return gated.cut if ends_line else gated.cut_mid_line


def test_without_a_spec_or_with_a_free_gate_the_output_is_the_same(engine, model):
    plain, plain_end = generate(engine, request(model, max_tokens=32))
    gated, gated_end = generate(engine, request(model, max_tokens=32, reasoning=spec(model)))
    assert ids(gated) == ids(plain)
    assert plain_end.reasoning_tokens == 0
    text, counted = b"", 0
    for event in plain:  # every token up to the one that completes the close marker is reasoning
        if b"</think>" in text:
            break
        text += event.piece
        counted += 1
    assert gated_end.reasoning_tokens == counted


def test_a_budget_cuts_the_reasoning_and_the_model_answers(engine, model):
    free, _ = generate(engine, request(model, max_tokens=8))
    gated_spec = spec(model, budget=5)
    out, finish = generate(engine, request(model, max_tokens=24, logprobs=2, reasoning=gated_spec))
    cut = cut_for(model, gated_spec, free[:5])
    assert ids(out)[:5] == ids(free)[:5]
    assert tuple(ids(out)[5:5 + len(cut)]) == cut
    for event in out[5:5 + len(cut)]:  # appended by studiolo: certain, as if sampled
        assert event.logprob is not None and event.logprob.logprob == 0.0
        assert [(alt.token, alt.logprob) for alt in event.logprob.top] == [(event.token, 0.0)]
    assert all(event.logprob.logprob < 0 for event in out[:5] if event.logprob)
    assert finish.reasoning_tokens == 5 + len(cut)
    assert answer_of(out).strip()  # the model went on with an answer


def test_a_budget_of_zero_closes_at_once(engine, model):
    opened = spec(model, budget=0)
    out, finish = generate(engine, request(model, max_tokens=6, reasoning=opened))
    assert tuple(ids(out)[:len(opened.cut)]) == opened.cut  # "</think>\n\n" right away
    assert finish.reasoning_tokens == len(opened.cut)
    undecided = spec(model, budget=0, phase=UNDECIDED)  # the output may open <think>: the gate does, and closes it
    out, finish = generate(engine, request(model, opened=False, max_tokens=10, reasoning=undecided))
    start = undecided.open_tokens + undecided.cut
    assert tuple(ids(out)[:len(start)]) == start
    assert text_of(out).startswith("<think>\n</think>\n\n")
    assert finish.reasoning_tokens == len(start)


def test_a_constraint_waits_for_the_answer(engine, model):
    free, _ = generate(engine, request(model, max_tokens=6))
    assert not re.fullmatch(r"[0-9]*", text_of(free[:6]))  # the reasoning is not what the constraint allows
    gated_spec = spec(model, budget=6, waits=True)
    out, finish = generate(engine, constrained(model, DIGITS, max_tokens=40, reasoning=gated_spec))
    assert ids(out)[:6] == ids(free)[:6]  # free text, not the constraint's digits
    assert re.fullmatch("[0-9]{3}", answer_of(out))
    assert finish.reason == "stop"
    assert finish.reasoning_tokens == 6 + len(cut_for(model, gated_spec, free[:6]))


def test_the_gate_opens_an_undecided_output_before_a_waiting_constraint(engine, model):
    """Arbitrary markers: ``[[`` / ``]]``. The output may open the reasoning; with a constraint
    waiting, the gate opens it itself, so the constraint never meets reasoning bytes."""
    gated = spec(model, open_tag="[[", close="]]", phase=UNDECIDED, budget=4, waits=True)
    out, finish = generate(engine, constrained(model, DIGITS, opened=False, max_tokens=40, reasoning=gated))
    assert tuple(ids(out)[:len(gated.open_tokens)]) == gated.open_tokens
    assert text_of(out).startswith("[[\n")
    assert re.fullmatch("[0-9]{3}", answer_of(out, "]]"))
    assert finish.reason == "stop"


def test_a_token_straddling_the_close_marker_and_the_answer_is_replaced(engine, model):
    """The close marker is ``>``; the bias makes the model's first token ``>{"``, which closes the
    reasoning and starts the answer. The gate gives ``>`` instead; the answer then follows the schema."""
    straddling = model.tokenize('>{"', add_special=False)
    assert len(straddling) == 1  # one token in Qwen2.5's vocabulary
    bias = SamplingParams(temperature=0, repeat_penalty=1.0, logit_bias={straddling[0]: 100.0})
    gated = spec(model, open_tag="<", close=">", waits=True)
    out, finish = generate(engine, constrained(model, POINT, max_tokens=30, sampling=bias, reasoning=gated))
    assert ids(out)[0] == model.tokenize(">", add_special=False)[0]
    assert straddling[0] not in ids(out)  # favoured, but never past the matcher
    assert isinstance(json.loads(text_of(out)[1:])["a"], int)
    assert finish.reason == "stop"
    assert finish.reasoning_tokens == 1


def test_no_end_while_a_constraint_waits(engine, model):
    ends = [model.tokenize(marker, add_special=False)[0] for marker in ("<|im_end|>", "<|endoftext|>")]
    assert all(model.is_eog(token) for token in ends)
    eager = SamplingParams(temperature=0, repeat_penalty=1.0, logit_bias=dict.fromkeys(ends, 100.0))
    out, finish = generate(engine, request(model, sampling=eager, reasoning=spec(model, budget=3)))
    assert (out, finish.reason) == ([], "stop")  # nothing waits: the model ends at once
    gated_spec = spec(model, budget=3, waits=True)
    out, finish = generate(engine, constrained(model, DIGITS, max_tokens=30, sampling=eager, reasoning=gated_spec))
    assert not set(ends) & set(ids(out))
    assert re.fullmatch("[0-9]{3}", answer_of(out))
    assert finish.reason == "stop"
    assert finish.reasoning_tokens == 3 + len(cut_for(model, gated_spec, out[:3]))


@pytest.mark.parametrize("source", ["prediction", "free prediction", "ngram"])
def test_speculation_through_the_gate_gives_the_same_output(engine, model, source):
    """Drafts cross the cut and the close marker: every accepted token goes through the gate in
    order, so the output is the one plain decoding gives."""
    def gated(**kwargs) -> GenerationRequest:
        return constrained(model, DIGITS, max_tokens=40, reasoning=spec(model, budget=8, waits=True), **kwargs)

    plain, plain_end = generate(engine, gated())
    if source == "ngram":
        speculation = Speculation(ngram=True)
    else:  # the gated output itself, or the free one (which the cut and the constraint leave)
        free, _ = generate(engine, request(model, max_tokens=40))
        speculation = Speculation(prediction=tuple(ids(plain) if source == "prediction" else ids(free)))
    out, finish = generate(engine, gated(speculation=speculation))
    assert ids(out) == ids(plain)
    assert (finish.reason, finish.reasoning_tokens) == (plain_end.reason, plain_end.reasoning_tokens)
    assert finish.draft is not None
    if source == "prediction":
        assert finish.draft.accepted > 0


# --- the gate's reading of bytes, without a model ------------------------------------------------


def bare_gate(phase: str, budget: int | None = None, waits: bool = False, tokenized: list | None = None):
    from studiolo.engine.reasoning_gate import ReasoningGate

    seen: list[bytes] = [] if tokenized is None else tokenized
    gated = ReasoningSpec(b"<think>", b"</think>", phase, budget, cut=(1, 2), cut_mid_line=(3, 4, 5),
                          open_tokens=(6,), constraint_waits=waits)

    def tokenize(text: bytes) -> list[int]:
        seen.append(text)
        return [100 + i for i in range(len(text))]

    return ReasoningGate(gated, tokenize, np.array([0]))


def test_markers_split_across_tokens_are_read_from_their_bytes():
    gate = bare_gate(UNDECIDED)
    for piece in (b"\n", b"<th", b"ink", b">\n", b"so", b" </", b"thi"):
        gate.take(piece)
        assert gate.phase in (UNDECIDED, REASONING)
    gate.take(b"nk>\n\n")
    assert gate.phase == "answer" and gate.reasoning_tokens == 8
    plain = bare_gate(UNDECIDED)
    for piece in (b" ", b"<th", b"is"):  # "<this" is not "<think>": all answer, none reasoning
        plain.take(piece)
    assert plain.phase == "answer" and plain.reasoning_tokens == 0


def test_the_cut_waits_for_the_end_of_a_character_and_fits_the_line():
    gate = bare_gate(REASONING, budget=2)
    gate.take(b"a")
    gate.take(b"\xe2\x82")  # the first two bytes of the euro sign: the budget is spent, the character not
    assert gate.forced_token() is None
    gate.take(b"\xac")
    assert [gate.forced_token() for _ in range(4)] == [3, 4, 5, None]  # mid line: "\n</think>\n\n"
    at_line_end = bare_gate(REASONING, budget=1)
    at_line_end.take(b"done\n")
    assert [at_line_end.forced_token() for _ in range(3)] == [1, 2, None]


def test_a_straddling_piece_is_replaced_by_its_text_up_to_the_marker_and_whitespace():
    asked: list[bytes] = []
    gate = bare_gate(REASONING, waits=True, tokenized=asked)
    gate.take(b"ok </think")
    assert gate.checked(7, b">\n{") == 100 and asked == [b">\n"]
    assert gate.forced_token() == 101 and gate.forced_token() is None
    assert gate.checked(8, b">\n\n") == 8  # whitespace only after the marker: taken as it is
