"""Constrained decoding core (engine/constraints.py) with the real default models, in-process.

Each generation test runs its own decoding loop on a LlamaContext, as bench/ceiling.py does:
the constraint's mask is applied to the logits in place, then greedy argmax or llama.cpp's
sampler chain picks the token from that same buffer.
"""

from __future__ import annotations

import json
import re

import llguidance.numpy as llg_numpy
import numpy as np
import pytest

from studiolo.domain.sampling import SamplingParams
from studiolo.engine.constraints import (
    ConstraintCompiler,
    ConstraintError,
    ConstraintSpec,
    InvalidConstraint,
    compiler_for,
    forget,
    grammar_of,
    mask_logits,
    validate,
)
from studiolo.engine.json_schema import closed_objects
from studiolo.engine.llama import ContextParams, LlamaContext, LlamaModel
from studiolo.engine.masks import forbidden_log_mass
from studiolo.engine.sampling import TokenSampler
from tests.conftest import GEMMA, SMOLLM

PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "color": {"enum": ["red", "green", "blue"]},
        "address": {
            "type": "object",
            "properties": {
                "street": {"type": "string", "maxLength": 60},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["street", "zip"],
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3},
    },
    "required": ["name", "age", "color", "address", "tags"],
    "additionalProperties": False,
}


def chatml(question: str) -> str:
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def smollm(default_models):
    model = LlamaModel(default_models[SMOLLM])
    yield model
    forget(model)
    model.close()


@pytest.fixture(scope="module")
def smollm_context(smollm):
    context = LlamaContext(smollm, ContextParams(n_ctx=512, n_batch=256, n_seq_max=1, n_threads=2))
    yield context
    context.close()


@pytest.fixture(scope="module")
def compiler(smollm) -> ConstraintCompiler:
    return compiler_for(smollm)


def generate(context: LlamaContext, spec_or_state, prompt: str, *, seed: int | None = None, max_tokens: int = 160) -> str:
    """Decode under a constraint until the model ends or the grammar is complete."""
    model = context.model
    state = spec_or_state
    if isinstance(spec_or_state, ConstraintSpec):
        state = compiler_for(model).compile(spec_or_state).new_state()
    sampling = SamplingParams(temperature=0) if seed is None else SamplingParams(temperature=1.0, seed=seed)
    sampler = TokenSampler(sampling)
    tokens = model.tokenize(prompt, add_special=True)
    context.clear()
    batch = context.batch
    batch.clear()
    batch.add(tokens, 0, 0, len(tokens) - 1)
    index, position, output = len(tokens) - 1, len(tokens), []
    try:
        for _ in range(max_tokens):
            assert context.decode() == 0
            logits = context.logits(index)
            state.apply(logits)
            token = sampler.choose(context, index, logits)
            if token in state.eos_tokens:
                assert state.can_stop, "the mask let the model end before the grammar could"
                break
            state.accept(token)
            output.append(token)
            if state.finished:
                break
            batch.clear()
            batch.add([token], position, 0, 0)
            index, position = 0, position + 1
        else:
            pytest.fail(f"no end after {max_tokens} tokens: {model_text(model, output)!r}")
    finally:
        sampler.close()
    return model_text(model, output)


def model_text(model: LlamaModel, tokens: list[int]) -> str:
    return b"".join(model.token_bytes(token) for token in tokens).decode("utf-8")


def allowed(state, n_vocab: int) -> set[int]:
    """The tokens the state's mask allows next."""
    logits = np.zeros(n_vocab, dtype=np.float32)
    state.apply(logits)
    return set(np.flatnonzero(np.isfinite(logits)).tolist())


def check_person(text: str) -> None:
    """PERSON_SCHEMA checked by hand, field by field."""
    person = json.loads(text)
    assert set(person) == {"name", "age", "color", "address", "tags"}
    assert isinstance(person["name"], str) and len(person["name"]) <= 40
    assert isinstance(person["age"], int) and 0 <= person["age"] <= 150
    assert person["color"] in ("red", "green", "blue")
    assert set(person["address"]) == {"street", "zip"}
    assert isinstance(person["address"]["street"], str)
    assert re.fullmatch(r"[0-9]{5}", person["address"]["zip"])
    assert isinstance(person["tags"], list) and len(person["tags"]) <= 3
    assert all(isinstance(tag, str) and len(tag) <= 20 for tag in person["tags"])


# --- outputs that match ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [None, 7, 11])
def test_json_schema_output_parses_and_validates(smollm_context, seed):
    prompt = chatml("Describe a person as JSON with name, age, favourite color, address and tags.")
    text = generate(smollm_context, ConstraintSpec.json_schema(PERSON_SCHEMA), prompt, seed=seed, max_tokens=200)
    check_person(text)


def test_json_schema_on_gemma_262k_vocabulary(default_models):
    model = LlamaModel(default_models[GEMMA])
    context = LlamaContext(model, ContextParams(n_ctx=512, n_batch=256, n_seq_max=1, n_threads=2))
    try:
        schema = {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 20}, "color": {"enum": ["red", "green", "blue"]}},
            "required": ["name", "color"],
            "additionalProperties": False,
        }
        person = json.loads(generate(context, ConstraintSpec.json_schema(schema), "A person as JSON:\n", max_tokens=60))
        assert set(person) == {"name", "color"} and person["color"] in ("red", "green", "blue")
        assert isinstance(person["name"], str) and len(person["name"]) <= 20
        # <end_of_turn> as well as <eos>: the model may end with any of its end-of-generation tokens
        assert compiler_for(model).compile(ConstraintSpec.regex("a")).new_state().eos_tokens == {
            token for token in range(model.n_vocab) if model.is_eog(token)
        }
    finally:
        context.close()
        forget(model)
        model.close()


def test_json_object_with_whitespace_pattern(smollm_context):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"enum": ["x", "y"]}}, "required": ["a", "b"]}
    compact = ConstraintSpec.json_schema(schema, whitespace_pattern="")
    text = generate(smollm_context, compact, chatml("Give me a JSON object."))
    assert text == json.dumps(json.loads(text), separators=(",", ":"))  # no whitespace anywhere
    prompt = chatml("Give me a JSON object about cats.")
    text = generate(smollm_context, ConstraintSpec.json_object(), prompt, seed=3, max_tokens=300)
    assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize("seed", [None, 5])
def test_regex_output_fully_matches(smollm_context, seed):
    pattern = r"\(\d{3}\) \d{3}-\d{4}"
    text = generate(smollm_context, ConstraintSpec.regex(pattern), chatml("What is your phone number?"), seed=seed)
    assert re.fullmatch(pattern, text), text


@pytest.mark.parametrize("seed", [None, 1, 2])
def test_choice_output_is_one_of_the_choices(smollm_context, seed):
    choices = ["positive", "negative", "neutral", "naïve \"quoted\""]
    text = generate(smollm_context, ConstraintSpec.choice(choices), chatml("Sentiment of: I love this film!"), seed=seed)
    assert text in choices


def test_lark_grammar_output_parses(smollm_context):
    grammar = 'start: "The answer is " NUMBER " " UNIT "."\nNUMBER: /[1-9][0-9]{0,3}/\nUNIT: "apples" | "pears"\n'
    text = generate(smollm_context, ConstraintSpec.grammar(grammar), chatml("How many apples are there?"), seed=4)
    assert re.fullmatch(r"The answer is [1-9][0-9]{0,3} (apples|pears)\.", text), text


def test_gbnf_grammar_output_parses(smollm_context):
    grammar = 'root ::= "color: " color "\\n"\ncolor ::= "red" | "green" | "blue"\n'
    spec = ConstraintSpec.grammar(grammar)
    assert spec.kind == "gbnf"
    text = generate(smollm_context, spec, chatml("Name a colour."))
    assert re.fullmatch(r"color: (red|green|blue)\n", text), text


# --- end of generation ---------------------------------------------------------------------------


def test_eos_allowed_only_where_the_grammar_may_end(smollm, compiler):
    state = compiler.compile(ConstraintSpec.regex("[0-9]+")).new_state()
    eos = state.eos_tokens
    assert eos == {token for token in range(smollm.n_vocab) if smollm.is_eog(token)}
    assert not state.can_stop and not allowed(state, smollm.n_vocab) & eos
    state.accept(smollm.tokenize("4", add_special=False)[0])
    assert state.can_stop and not state.finished
    assert eos <= allowed(state, smollm.n_vocab)  # may end, may go on with more digits
    assert smollm.tokenize("7", add_special=False)[0] in allowed(state, smollm.n_vocab)

    state = compiler.compile(ConstraintSpec.choice(["yes"])).new_state()
    for token in smollm.tokenize("yes", add_special=False):
        state.accept(token)
    assert state.finished and state.can_stop
    assert allowed(state, smollm.n_vocab) == eos  # complete: only the end remains
    state.accept(next(iter(eos)))  # accepting the end of a complete grammar changes nothing
    assert state.finished


def test_forbidden_token_raises(smollm, compiler):
    state = compiler.compile(ConstraintSpec.regex("[0-9]+")).new_state()
    with pytest.raises(ConstraintError, match="doesn't satisfy the grammar"):
        state.accept(smollm.tokenize("x", add_special=False)[0])


# --- rollback --------------------------------------------------------------------------------


def test_rollback_restores_the_state(smollm, compiler):
    state = compiler.compile(ConstraintSpec.json_schema(PERSON_SCHEMA)).new_state()
    prefix = smollm.tokenize('{"name": "Ada", "age": 3', add_special=False)
    for token in prefix[:4]:
        state.accept(token)
    before = allowed(state, smollm.n_vocab)
    for token in prefix[4:]:
        state.accept(token)
    assert allowed(state, smollm.n_vocab) != before
    state.rollback(len(prefix) - 4)
    assert state.consumed == 4
    assert allowed(state, smollm.n_vocab) == before
    assert state.valid_prefix(prefix[4:]) == len(prefix) - 4  # the same path is open again
    with pytest.raises(ValueError, match="cannot roll back 5 tokens: 4 were accepted"):
        state.rollback(5)
    assert allowed(state, smollm.n_vocab) == before  # a refused rollback leaves the state alone


def test_rollback_past_an_accepted_end(smollm, compiler):
    state = compiler.compile(ConstraintSpec.regex("[0-9]+")).new_state()
    state.accept(smollm.tokenize("4", add_special=False)[0])
    state.accept(next(iter(state.eos_tokens)))
    assert state.finished
    state.rollback(1)
    assert not state.finished and state.can_stop


# --- bad definitions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (lambda: ConstraintSpec.json_schema({"type": "strin"}), "invalid JSON schema: Invalid type: strin"),
        (lambda: ConstraintSpec.json_schema('{"type": "object",'), "the JSON schema is not valid JSON"),
        (lambda: ConstraintSpec.json_schema({"const": {1, 2}}), "cannot be written as JSON"),
        (lambda: ConstraintSpec.json_schema("[1]"), "schema must be an object or boolean"),
        (lambda: ConstraintSpec.json_schema({"type": "string", "minLength": 5, "maxLength": 2}), "minLength"),
        (lambda: ConstraintSpec.json_schema({"properties": {"a": {"$ref": "#/$defs/gone"}}}), "/\\$defs/gone"),
        (lambda: ConstraintSpec.json_schema({"type": "array", "uniqueItems": True}), "uniqueItems"),
        (lambda: ConstraintSpec.json_object(whitespace_pattern="[ "), "unclosed character class"),
        (lambda: ConstraintSpec.regex("[a-z"), "(?s)invalid regex: regex parse error:.*unclosed character class"),
        (lambda: ConstraintSpec.lark('start: "a" foo'), '(?s)invalid Lark grammar: .*unknown name: "foo"'),
        (lambda: ConstraintSpec.gbnf("root ::= foo"), "invalid GBNF grammar: Rule 'foo' not found"),
        (lambda: ConstraintSpec.gbnf('root ::= [a-z'), "invalid GBNF grammar: Unexpected end of input"),
        (lambda: ConstraintSpec.choice([]), "the list of choices is empty"),
        (lambda: ConstraintSpec.choice(["a", 1]), "every choice must be a string"),
        (lambda: ConstraintSpec("regex", "a", whitespace_pattern=" "), "JSON constraints only"),
        (lambda: ConstraintSpec("yaml", "a"), "unknown constraint kind 'yaml'"),
        # valid syntax, but no first token can be found: refused at compile, not failed in the engine
        (lambda: ConstraintSpec.regex(r"[^\s\S]"), "invalid regex"),
        (lambda: ConstraintSpec.json_schema({"$ref": "#"}), "invalid JSON schema"),
        (lambda: ConstraintSpec.json_schema({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}},
                                             "$ref": "#/$defs/a"}), "invalid JSON schema"),
        (lambda: ConstraintSpec.gbnf("root ::= x\nx ::= x"), "invalid GBNF grammar"),
        (lambda: ConstraintSpec.lark("start: foo\nfoo: foo"), "invalid Lark grammar"),
    ],
)
def test_bad_definitions_raise_before_generation(compiler, spec, message):
    with pytest.raises(InvalidConstraint, match=message):
        compiler.compile(spec())


def test_validation_needs_no_model():
    with pytest.raises(InvalidConstraint, match="unclosed group"):
        grammar_of(ConstraintSpec.regex("(a|b"))
    assert grammar_of(ConstraintSpec.regex("a|b"))


@pytest.mark.parametrize("spec", [
    ConstraintSpec.json_schema({"$ref": "#"}),
    ConstraintSpec.json_schema({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}),
    ConstraintSpec.regex(r"[^\s\S]"),
])
def test_definitions_that_never_start_are_refused_without_a_model(spec):
    """Before any model loads (a tool's parameters are checked at the API): over single bytes."""
    with pytest.raises(InvalidConstraint, match="matches no text at all"):
        validate(spec)


def test_validation_without_a_model_takes_definitions_that_start():
    validate(ConstraintSpec.json_schema({"type": "object", "properties": {"child": {"$ref": "#"}}}))
    validate(ConstraintSpec.choice(["a", "b"]))
    validate(ConstraintSpec.lark('start: <|im_end|> | "a"'))  # grammars may name a model's tokens: checked at compile


def test_invalid_constraint_is_a_value_error():
    assert issubclass(InvalidConstraint, ValueError)


# --- caches ----------------------------------------------------------------------------------


def test_compile_cache_returns_the_same_compiled_object(smollm, compiler):
    first = compiler.compile(ConstraintSpec.json_schema(PERSON_SCHEMA))
    again = compiler.compile(ConstraintSpec.json_schema(json.dumps(PERSON_SCHEMA)))  # same schema as text
    assert again is first
    assert compiler.compile(ConstraintSpec.json_schema(PERSON_SCHEMA, whitespace_pattern=" ?")) is not first
    assert compiler_for(smollm) is compiler
    assert compiler.tokenizer is compiler.tokenizer
    # every sequence gets its own matcher: advancing one leaves the next untouched
    one, two = first.new_state(), first.new_state()
    one.accept(smollm.tokenize("{", add_special=False)[0])
    assert two.consumed == 0 and allowed(two, smollm.n_vocab) != allowed(one, smollm.n_vocab)


# --- the mask itself -------------------------------------------------------------------------


@pytest.mark.parametrize("density", [0.0, 0.0005, 0.05, 0.5, 0.98, 1.0])
@pytest.mark.parametrize("n_vocab", [1000, 49152])
def test_mask_logits_matches_llguidance_reference(density, n_vocab):
    rng = np.random.default_rng(int(density * 1000) + n_vocab)
    bits = rng.random(n_vocab) < density
    bitmask = llg_numpy.allocate_token_bitmask(1, n_vocab)
    bitmask[0] = 0
    bitmask.view(np.uint8)[0, : (n_vocab + 7) // 8] = np.packbits(bits, bitorder="little")
    logits = rng.standard_normal(n_vocab).astype(np.float32)
    expected = logits.copy()
    llg_numpy.apply_token_bitmask_inplace(expected, bitmask)
    mask_logits(logits, bitmask[0])
    np.testing.assert_array_equal(logits, expected)
    np.testing.assert_array_equal(np.isfinite(logits), bits)


@pytest.mark.parametrize("density", [0.0, 0.0005, 0.05, 0.5, 0.98, 0.9999, 1.0])
@pytest.mark.parametrize("n_vocab", [1000, 49152])
def test_forbidden_mass_adds_up_what_the_mask_takes(density, n_vocab):
    rng = np.random.default_rng(int(density * 10000) + n_vocab)
    bits = rng.random(n_vocab) < density
    bitmask = llg_numpy.allocate_token_bitmask(1, n_vocab)
    bitmask[0] = 0
    bitmask.view(np.uint8)[0, : (n_vocab + 7) // 8] = np.packbits(bits, bitorder="little")
    logits = (rng.standard_normal(n_vocab) * 4).astype(np.float32)
    expected = np.logaddexp.reduce(logits[~bits].astype(np.float64)) if (~bits).any() else -np.inf
    assert forbidden_log_mass(logits, bitmask[0]) == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_where_the_grammar_may_end_what_it_forbids_goes_to_the_end_token(smollm, compiler, smollm_vocab):
    """``end_outside`` (tool calls): after "Hi" the grammar may end or add "!"; the probability of
    everything else (the model meant to write on) is the end's, not spread over "!" and the end."""
    grammar = 'start: "Hi" "!"?'
    bang, im_end = smollm_vocab["!"], smollm_vocab["<|im_end|>"]
    logits = np.random.default_rng(3).standard_normal(smollm.n_vocab).astype(np.float32)
    ends = sorted(compiler.compile(ConstraintSpec.lark(grammar)).new_state().eos_tokens)
    logits[ends] = -1.0
    logits[[bang, im_end]] = [2.0, 1.0]
    others = np.delete(logits, [bang, *ends]).astype(np.float64)
    for end_outside in (False, True):
        state = compiler.compile(ConstraintSpec.lark(grammar, end_outside=end_outside)).new_state()
        state.accept(smollm_vocab["Hi"])
        masked = logits.copy()
        state.apply(masked)
        assert set(np.flatnonzero(np.isfinite(masked))) == {bang, *ends}
        expected = np.logaddexp(1.0, np.logaddexp.reduce(others)) if end_outside else 1.0
        assert masked[im_end] == pytest.approx(expected, rel=1e-5)  # the likeliest end token takes it
        assert masked[bang] == 2.0 and all(masked[end] == -1.0 for end in ends if end != im_end)
    state.apply(masked := logits.copy(), allow_end=False)  # ignore_eos: nothing goes to an end
    assert not np.isfinite(masked[ends]).any() and masked[bang] == 2.0


def test_a_schema_as_text_or_object_is_one_cache_key():
    """guided_json as a JSON string (any layout) and as an object compile once between them."""
    as_object = ConstraintSpec.json_schema(PERSON_SCHEMA)
    assert ConstraintSpec.json_schema(json.dumps(PERSON_SCHEMA, indent=2)) == as_object
    assert hash(ConstraintSpec.json_schema(json.dumps(PERSON_SCHEMA))) == hash(as_object)


def test_listed_properties_close_an_object_unless_it_says_otherwise():
    closed = closed_objects({
        "type": "object",
        "properties": {"properties": {"type": "object", "properties": {"a": {}}}, "b": {"enum": [{"properties": 1}]}},
        "$defs": {"open": {"properties": {"x": {}}, "additionalProperties": True}},
    })
    assert closed["additionalProperties"] is False
    assert closed["properties"]["properties"]["additionalProperties"] is False  # a property named "properties"
    assert closed["properties"]["b"] == {"enum": [{"properties": 1}]}  # values are not schemas
    assert closed["$defs"]["open"]["additionalProperties"] is True


def test_all_of_closes_over_the_keys_of_every_branch():
    schema = {"allOf": [{"properties": {"a": {"type": "integer"}}}, {"properties": {"b": {"type": "string"}}}]}
    closed = closed_objects(schema)
    assert closed["properties"] == {"a": True, "b": True} and closed["additionalProperties"] is False
    assert "additionalProperties" not in closed["allOf"][0]  # each branch alone would forbid the other's key
