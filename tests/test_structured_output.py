"""Structured output end to end: every constrained output is valid by construction.

JSON schemas (tests/schemas.py) go through ``response_format``, ``guided_json`` and vLLM's
``structured_outputs``, greedy, streamed and sampled, all at once so that constrained sequences
share batches; regexes, choices and grammars likewise. Each output is checked with an
independent validator (``jsonschema``, Python's ``re``, a small parser), never with llguidance.
"""

from __future__ import annotations

import asyncio
import json
import re

import jsonschema
import pytest

from tests.batching import assert_same_or_parted_at_a_near_tie
from tests.conftest import GEMMA, GREEDY, NO_PENALTY, SMOLLM
from tests.schemas import SCHEMAS, validator_for

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MAX_TOKENS = 400  # every schema's output ends well inside this on SmolLM2 (about 20-140 tokens)

MODES = {
    "greedy": {"temperature": 0},
    "streamed": {"temperature": 0, "stream": True},
    "sampled": {"temperature": 0.9, "seed": 11},
}
# Schemas that admit values of any length ("age": true). Sampled output must be bounded by its
# schema, not by max_tokens: beside other requests a seeded draw is not reproducible, and such a
# run once wrote a string until the limit. These run in the greedy modes only.
UNBOUNDED = {"boolean_schema_true"}


def _modes(key: str) -> list[str]:
    return [mode for mode in MODES if not (mode == "sampled" and key in UNBOUNDED)]


def _messages(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt + " Answer in JSON."}]


async def _chat(async_client, body: dict) -> tuple[str, str]:
    """(content, finish_reason) of a chat completion, streamed or not, through the openai client."""
    body = dict(body)
    stream = body.pop("stream", False)
    known = {key: body.pop(key) for key in ("model", "messages", "temperature", "seed", "max_tokens", "response_format")
             if key in body}
    if not stream:
        response = await async_client.chat.completions.create(**known, extra_body={**NO_PENALTY, **body})
        return response.choices[0].message.content, response.choices[0].finish_reason
    chunks = await async_client.chat.completions.create(**known, stream=True, extra_body={**NO_PENALTY, **body})
    parts, reason = [], None
    async for chunk in chunks:
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            reason = choice.finish_reason or reason
    return "".join(parts), reason


def _schema_request(key: str, mode: str) -> dict:
    """Each schema through one of the three ways to send it, rotating with the mode."""
    prompt, schema = SCHEMAS[key]
    body = {"model": SMOLLM, "messages": _messages(prompt), "max_tokens": MAX_TOKENS, **MODES[mode]}
    way = (list(SCHEMAS).index(key) + list(MODES).index(mode)) % 3
    if way == 0:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": key, "strict": True, "schema": schema}}
    elif way == 1:
        body["guided_json"] = json.dumps(schema)  # BladeLLM sends it as a JSON string
    else:
        body["structured_outputs"] = {"json": schema}
    return body


@pytest.fixture(scope="module")
def schema_runs(server) -> dict[tuple[str, str], tuple[str, str]]:
    """Every schema in every mode, all sent at once: far more requests than slots."""
    import openai

    async def run():
        client = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=600)
        keys = [(key, mode) for key in SCHEMAS for mode in _modes(key)]
        results = await asyncio.gather(*(_chat(client, _schema_request(*key)) for key in keys))
        await client.close()
        return dict(zip(keys, results))

    return asyncio.run(run())


def test_there_are_at_least_thirty_schemas():
    assert len(SCHEMAS) >= 30


@pytest.mark.parametrize("key", list(SCHEMAS))
def test_schema_output_parses_and_validates(schema_runs, key):
    validator = validator_for(SCHEMAS[key][1])
    for mode in _modes(key):
        content, reason = schema_runs[key, mode]
        assert reason == "stop", f"{mode}: {content!r}"
        errors = [error.message for error in validator.iter_errors(json.loads(content))]
        assert not errors, f"{mode}: {content!r}: {errors}"


def test_sampled_outputs_differ_from_greedy(schema_runs):
    """The sampled mode really sampled (so validity was not just the greedy path's)."""
    sampled = [key for key in SCHEMAS if key not in UNBOUNDED]
    differing = [key for key in sampled if schema_runs[key, "sampled"][0] != schema_runs[key, "greedy"][0]]
    assert len(differing) >= len(SCHEMAS) // 2


def test_openai_parse_helper_returns_the_pydantic_object(client):
    pydantic = pytest.importorskip("pydantic")

    class City(pydantic.BaseModel):
        name: str
        country: str
        population: int

    completion = client.beta.chat.completions.parse(
        model=SMOLLM, messages=_messages("Describe Paris."), response_format=City, temperature=0, max_tokens=200,
        extra_body=NO_PENALTY,
    )
    city = completion.choices[0].message.parsed
    assert isinstance(city, City) and city.name


def test_json_object_response_format_gives_an_object(http):
    for response_format in ({"type": "json_object"}, "json_object"):  # OpenAI's, BladeLLM's
        # An open object lets a greedy small model go on adding keys, and where it stops is a near-tie
        # that another CPU's rounding can move (one CI machine wrote keys until max_tokens): an object
        # to copy leaves no near-tie. LM Studio's default repeat penalty stays on.
        prompt = 'Repeat this JSON object exactly: {"name": "Ann", "age": 30}'
        body = {"model": SMOLLM, "messages": [{"role": "user", "content": prompt}], "response_format": response_format,
                "max_tokens": MAX_TOKENS, "temperature": 0}
        choice = http.post(CHAT, json=body).json()["choices"][0]
        assert choice["finish_reason"] == "stop", choice["message"]["content"]
        assert isinstance(json.loads(choice["message"]["content"]), dict)


def test_text_response_format_leaves_output_free(http):
    free = {"model": SMOLLM, "messages": _messages("Describe a dog."), "max_tokens": 30, **GREEDY}
    expected = http.post(CHAT, json=free).json()["choices"][0]["message"]["content"]
    for response_format in ({"type": "text"}, "text"):
        body = {**free, "response_format": response_format}
        assert http.post(CHAT, json=body).json()["choices"][0]["message"]["content"] == expected


def test_completions_take_json_schemas_too(http):
    prompt, schema = SCHEMAS["nested_address"]
    body = {"model": SMOLLM, "prompt": prompt + "\n", "guided_json": schema, "max_tokens": MAX_TOKENS, **GREEDY}
    choice = http.post(COMPLETIONS, json=body).json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    jsonschema.validate(json.loads(choice["text"]), schema)


def test_gemma_large_vocabulary_schemas(http):
    """Gemma's 262k vocabulary takes the sparse and dense mask paths on real logits."""
    for key in ("flat_person", "array_of_objects", "defs_and_refs", "enum_color", "string_formats"):
        prompt, schema = SCHEMAS[key]
        body = {"model": GEMMA, "prompt": f"{prompt} JSON:\n", "guided_json": schema, "max_tokens": MAX_TOKENS, **GREEDY}
        choice = http.post(COMPLETIONS, json=body).json()["choices"][0]
        assert choice["finish_reason"] == "stop", choice["text"]
        validator_for(schema).validate(json.loads(choice["text"]))


def test_whitespace_pattern_controls_the_space_between_tokens(http):
    prompt, schema = SCHEMAS["nested_address"]
    base = {"model": SMOLLM, "messages": _messages(prompt), "guided_json": schema, "max_tokens": MAX_TOKENS, **GREEDY}
    spaced = http.post(CHAT, json=base).json()["choices"][0]["message"]["content"]
    assert "\n" in spaced  # the model's own habit, allowed by default
    for extra in ({"guided_whitespace_pattern": ""}, {"structured_outputs": {"json": schema, "whitespace_pattern": ""}}):
        body = {**base, **extra}
        if "structured_outputs" in extra:
            del body["guided_json"]
        compact = http.post(CHAT, json=body).json()["choices"][0]["message"]["content"]
        assert compact == json.dumps(json.loads(compact), separators=(",", ":"), ensure_ascii=False)


def test_max_tokens_cuts_a_constrained_output_honestly(http):
    prompt, schema = SCHEMAS["array_of_objects"]
    body = {"model": SMOLLM, "messages": _messages(prompt), "guided_json": schema, "max_tokens": 8, **GREEDY}
    choice = http.post(CHAT, json=body).json()["choices"][0]
    assert choice["finish_reason"] == "length"
    with pytest.raises(json.JSONDecodeError):
        json.loads(choice["message"]["content"])


# --- regex, choice, grammar ------------------------------------------------------------------

REGEXES = {
    "Give me a US phone number.": r"\(\d{3}\) \d{3}-\d{4}",
    "What is today's date?": r"20\d\d-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])",
    "Write an email address.": r"[a-z]{3,10}@[a-z]{3,10}\.(com|org|net)",
    "Name a color in hex.": r"#[0-9a-f]{6}",
    "Give an IP address.": r"((25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(25[0-5]|2[0-4]\d|1?\d?\d)",
    "Is the sky blue? Explain briefly.": r"(Yes|No), because [a-z ]{5,40}\.",
}


@pytest.mark.parametrize("mode", ["greedy", "sampled"])
def test_guided_regex_outputs_match_fully(async_client, mode):
    async def run():
        requests = []
        for prompt, pattern in REGEXES.items():
            requests.append(_chat(async_client, {"model": SMOLLM, "messages": [{"role": "user", "content": prompt}],
                                                 "guided_regex": pattern, "max_tokens": 100, **MODES[mode]}))
            requests.append(_chat(async_client, {"model": SMOLLM, "messages": [{"role": "user", "content": prompt}],
                                                 "structured_outputs": {"regex": pattern}, "max_tokens": 100,
                                                 **MODES["streamed"]}))
        return await asyncio.gather(*requests)

    results = asyncio.run(run())
    for (content, reason), pattern in zip(results, [p for p in REGEXES.values() for _ in range(2)]):
        assert reason == "stop" and re.fullmatch(pattern, content), (pattern, content)


def test_guided_regex_on_completions(http):
    body = {"model": SMOLLM, "prompt": "The year the war ended:", "guided_regex": r" \d{4}\.", "max_tokens": 20, **GREEDY}
    text = http.post(COMPLETIONS, json=body).json()["choices"][0]["text"]
    assert re.fullmatch(r" \d{4}\.", text)


CHOICES = ["New York City", "Los Angeles", "San Francisco", "Chicago"]


def test_guided_choice_outputs_are_one_of_the_choices(http):
    base = {"model": SMOLLM, "messages": [{"role": "user", "content": "Which city has the Golden Gate Bridge?"}],
            "max_tokens": 20}
    outputs = []
    for extra in ({"guided_choice": CHOICES, **GREEDY}, {"structured_outputs": {"choice": CHOICES}, **GREEDY},
                  {"guided_choice": CHOICES, "temperature": 1.5, "seed": 3, "n": 6}):
        response = http.post(CHAT, json={**base, **extra}).json()
        outputs += [(c["message"]["content"], c["finish_reason"]) for c in response["choices"]]
    assert all(text in CHOICES and reason == "stop" for text, reason in outputs), outputs
    assert len({text for text, _ in outputs}) > 1  # sampling at 1.5 over six draws picks more than one


LARK_ARITHMETIC = r"""
start: expr
expr: term (OP_ADD term){0,3}
term: factor (OP_MUL factor){0,2}
factor: NUMBER | "(" expr ")"
OP_ADD: " + " | " - "
OP_MUL: " * "
NUMBER: /[1-9][0-9]{0,2}/
"""

GBNF_ARITHMETIC = r"""
root ::= expr
expr ::= term (op-add term)?
term ::= factor (" * " factor)?
factor ::= number | "(" expr ")"
op-add ::= " + " | " - "
number ::= [1-9] [0-9]?
"""


def _parse_arithmetic(text: str) -> int:
    """A recursive-descent parser for both grammars' language; raises ValueError where it fails."""
    tokens = re.findall(r"\d+| [-+*] |[()]|.", text)
    position = 0

    def take(expected=None):
        nonlocal position
        if position >= len(tokens) or (expected is not None and tokens[position] != expected):
            raise ValueError(f"unexpected {tokens[position:position + 1]} at token {position} of {text!r}")
        position += 1
        return tokens[position - 1]

    def factor():
        if position < len(tokens) and tokens[position] == "(":
            take("(")
            value = expr()
            take(")")
            return value
        token = take()
        if not token.isdigit() or token.startswith("0"):
            raise ValueError(f"not a number: {token!r} in {text!r}")
        return int(token)

    def term():
        value = factor()
        while position < len(tokens) and tokens[position] == " * ":
            take()
            value *= factor()
        return value

    def expr():
        value = term()
        while position < len(tokens) and tokens[position] in (" + ", " - "):
            value = value + term() if take() == " + " else value - term()
        return value

    result = expr()
    if position != len(tokens):
        raise ValueError(f"trailing {tokens[position:]} in {text!r}")
    return result


@pytest.mark.parametrize("grammar", [LARK_ARITHMETIC, GBNF_ARITHMETIC], ids=["lark", "gbnf"])
def test_guided_grammar_outputs_parse(http, grammar):
    prompts = ["Write an arithmetic expression.", "What is 2 + 3 * 4? Write it out.", "Compute (12 - 4) * 3"]
    for prompt in prompts:
        for extra in ({"guided_grammar": grammar, **GREEDY},
                      {"structured_outputs": {"grammar": grammar}, "temperature": 1.0, "seed": 5, "n": 3}):
            body = {"model": SMOLLM, "messages": [{"role": "user", "content": prompt}], "max_tokens": 60, **extra}
            for choice in http.post(CHAT, json=body).json()["choices"]:
                assert choice["finish_reason"] == "stop", choice
                _parse_arithmetic(choice["message"]["content"])


def test_ignore_eos_runs_a_constraint_to_its_end(http):
    """With ignore_eos the output ends only where the grammar cannot go on. (The model's own end
    comes at a near-tie with more letters, which batching can tip: the bound is far past it.)"""
    base = {"model": SMOLLM, "messages": [{"role": "user", "content": "What color is the sky? One word."}],
            "guided_regex": "[a-z]{1,80}", "max_tokens": 120, **GREEDY}
    short = http.post(CHAT, json=base).json()["choices"][0]["message"]["content"]
    full = http.post(CHAT, json={**base, "ignore_eos": True}).json()["choices"][0]
    assert len(short) < 80  # the model ends it early by itself...
    assert len(full["message"]["content"]) == 80 and full["finish_reason"] == "stop"  # ...not with ignore_eos


# --- batching ----------------------------------------------------------------------------------

FREE_PROMPTS = ["The capital of France is", "Once upon a time,", "def fibonacci(n):", "Water boils at"]


async def _free_tokens(client, prompt: str):
    response = await client.completions.create(model=SMOLLM, prompt=prompt, max_tokens=32, temperature=0, logprobs=2,
                                               extra_body=NO_PENALTY)
    logprobs = response.choices[0].logprobs
    return list(zip(logprobs.tokens, logprobs.top_logprobs))


def test_constrained_and_free_requests_share_batches_and_stay_correct(async_client):
    async def run():
        alone = [await _free_tokens(async_client, prompt) for prompt in FREE_PROMPTS]
        constrained = [_chat(async_client, _schema_request(key, "greedy")) for key in list(SCHEMAS)[:8]]
        mixed = await asyncio.gather(*(_free_tokens(async_client, p) for p in FREE_PROMPTS), *constrained)
        return alone, mixed[: len(FREE_PROMPTS)], mixed[len(FREE_PROMPTS):]

    alone, together, constrained = asyncio.run(run())
    for prompt, solo, batched in zip(FREE_PROMPTS, alone, together):
        assert_same_or_parted_at_a_near_tie(prompt, solo, batched)
    for key, (content, reason) in zip(list(SCHEMAS)[:8], constrained):
        assert reason == "stop"
        validator_for(SCHEMAS[key][1]).validate(json.loads(content))


# --- refusals ----------------------------------------------------------------------------------

BAD_CONSTRAINTS = [
    ({"guided_json": "{not json"}, "guided_json", "not valid JSON"),
    ({"guided_json": {"type": "object", "propertyNames": {"pattern": "^a"}}}, "guided_json", "propertyNames"),
    ({"guided_json": {"type": "strin"}}, "guided_json", "strin"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/none"}}}},
     "response_format", "none"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "response_format.json_schema.schema", "schema"),
    ({"response_format": {"type": "yaml"}}, "response_format.type", "yaml"),
    ({"response_format": "xml"}, "response_format", "xml"),
    ({"guided_regex": "(unclosed"}, "guided_regex", "unclosed group"),
    ({"guided_choice": []}, "guided_choice", "empty"),
    ({"guided_grammar": 'root ::= "a" undefined-rule'}, "guided_grammar", "undefined-rule"),
    ({"guided_grammar": "start: foo\nfoo: bar"}, "guided_grammar", "bar"),
    ({"structured_outputs": {"regex": "[z-a]"}}, "structured_outputs.regex", "range"),
    ({"guided_regex": "a+", "guided_choice": ["a"]}, "guided_choice", "only one"),
    ({"guided_json": {"type": "object"}, "response_format": {"type": "json_object"}}, "guided_json", "only one"),
    ({"guided_regex": "a+", "guided_whitespace_pattern": " "}, "guided_whitespace_pattern", "JSON"),
    ({"guided_json": {"type": "object"}, "guided_whitespace_pattern": "[ "}, "guided_whitespace_pattern", "unclosed"),
    ({"structured_outputs": {"json": {"type": "object"}, "whitespace_pattern": "( "}},
     "structured_outputs.whitespace_pattern", "unclosed"),
    ({"guided_regex": r"[^\s\S]"}, "guided_regex", "matches no text"),
    ({"guided_json": {"$ref": "#"}}, "guided_json", "invalid JSON schema"),
]


@pytest.mark.parametrize(("extra", "param", "words"), BAD_CONSTRAINTS)
def test_bad_constraints_are_refused_naming_the_field(http, extra, param, words):
    for path, base in ((CHAT, {"messages": [{"role": "user", "content": "x"}]}), (COMPLETIONS, {"prompt": "x"})):
        response = http.post(path, json={"model": SMOLLM, **base, **extra})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == param and words in error["message"], error


def test_bad_constraint_is_refused_before_the_model_loads(http):
    http.post("/api/v1/models/unload", json={"instance_id": GEMMA})  # unloaded, if it was loaded
    response = http.post(CHAT, json={"model": GEMMA, "messages": [{"role": "user", "content": "x"}],
                                     "guided_regex": "(("})
    assert response.status_code == 400
    loaded = [m["id"] for m in http.get("/api/v0/models").json()["data"] if m["state"] == "loaded"]
    assert GEMMA not in loaded
