"""Hostile constrained-decoding input: every path that reaches llguidance (guided_*, response_format,
structured_outputs, tools' parameters, Responses' text.format and tools, LM Studio's v0 twins) answers
a definition past a bound, or one llguidance cannot follow, with a 400 naming the field, fast, and the
server keeps answering (docs/API.md, "Limits of constrained decoding")."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import SMOLLM
from tests.hostile import HostileCase, assert_healthy, check, error_of


def ref_chain(length: int, wrap: int = 0) -> dict:
    """$defs d0 -> d1 -> ... -> d<length>, each link nested ``wrap`` arrays deep."""
    def link(i: int) -> dict:
        node: dict = {"$ref": f"#/$defs/d{i + 1}"}
        for _ in range(wrap):
            node = {"type": "array", "items": node}
        return node
    defs = {f"d{i}": link(i) for i in range(length)}
    defs[f"d{length}"] = {"type": "integer"}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


def nested_text(depth: int) -> str:
    return '{"type":"array","items":' * depth + '{"type":"integer"}' + "}" * depth


GBNF_10K_RULES = "root ::= r0\n" + "".join(f'r{i} ::= "a{i}" r{i + 1} | "b"\n' for i in range(10_000)) + 'r10000 ::= "z"\n'
LARK_CHAIN = "start: r0\n" + "".join(f'r{i}: "a" r{i + 1} | "b"\n' for i in range(3_000)) + 'r3000: "z"\n'
BIG_INT = "9" * 5_000


def chat(extra: dict, path: str = "/v1/chat/completions") -> dict:
    return {"model": SMOLLM, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, **extra}


def completion(extra: dict, path: str = "/v1/completions") -> dict:
    return {"model": SMOLLM, "prompt": "Hi", "max_tokens": 4, **extra}


def responses(extra: dict) -> dict:
    return {"model": SMOLLM, "input": "Hi", "max_output_tokens": 16, "store": False, **extra}


def tool(parameters: dict, name: str = "f") -> dict:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def json_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


def case(name: str, body, param: str, path: str = "/v1/chat/completions", code: str | None = None) -> HostileCase:
    return HostileCase(name, "POST", path, body, 400, param, code, timeout=30)


CASES: list[HostileCase] = [
    # $ref chains: 5,000 killed the process (SIGSEGV), 1,000 five levels deep too
    case("ref-chain-5000-guided-json", lambda: chat({"guided_json": ref_chain(5000)}), "guided_json"),
    case("ref-chain-1000x5-guided-json", lambda: chat({"guided_json": ref_chain(1000, 5)}), "guided_json"),
    case("ref-chain-150x1-deep", lambda: chat({"guided_json": ref_chain(150, 1)}), "guided_json"),
    case("ref-chain-response-format", lambda: chat({"response_format": json_format(ref_chain(5000))}),
         "response_format.json_schema.schema"),
    case("ref-chain-json-object-schema", lambda: chat({"response_format": {"type": "json_object",
                                                                           "schema": ref_chain(5000)}}),
         "response_format.schema"),
    case("ref-chain-structured-outputs", lambda: chat({"structured_outputs": {"json": ref_chain(5000)}}),
         "structured_outputs.json"),
    case("ref-chain-tool-parameters", lambda: chat({"tools": [tool({"type": "object", "properties": {
        "a": ref_chain(5000)}})]}), "tools"),
    case("ref-chain-responses-text-format", lambda: responses({"text": {"format": {
        "type": "json_schema", "name": "x", "schema": ref_chain(5000)}}}), "text.format.schema", "/v1/responses"),
    case("ref-chain-responses-tool", lambda: responses({"tools": [{"type": "function", "name": "f", "parameters": {
        "type": "object", "properties": {"a": ref_chain(150, 1)}}}]}), "tools[0].parameters", "/v1/responses"),
    case("ref-chain-completions", lambda: completion({"guided_json": ref_chain(5000)}), "guided_json",
         "/v1/completions"),
    case("ref-chain-v0-chat", lambda: chat({"guided_json": ref_chain(5000)}), "guided_json",
         "/api/v0/chat/completions"),
    case("ref-external", chat({"guided_json": {"$ref": "https://example.com/schema.json"}}), "guided_json"),
    # depth and numbers: 500s before
    case("schema-text-nested-100k", lambda: chat({"guided_json": nested_text(100_000)}), "guided_json"),
    case("schema-text-nested-300", lambda: chat({"guided_json": nested_text(300)}), "guided_json"),
    case("schema-text-5000-digit-int", chat({"guided_json": '{"type":"integer","maximum":' + BIG_INT + "}"}),
         "guided_json"),
    case("schema-minlength-1e30", chat({"guided_json": {"type": "string", "minLength": 10**30}}), "guided_json"),
    case("schema-maximum-4000-digits", lambda: chat({"guided_json": '{"type":"integer","maximum":'
                                                    + "9" * 4000 + "}"}), "guided_json"),
    case("schema-multipleof-tiny", chat({"guided_json": {"type": "number", "multipleOf": 1e-300}}), "guided_json"),
    case("schema-multipleof-zero", chat({"guided_json": {"type": "integer", "multipleOf": 0}}), "guided_json"),
    # lists and maps whose cost grows faster than their length
    case("schema-required-50000", lambda: chat({"guided_json": {"type": "object", "required": [
        f"p{i}" for i in range(50_000)]}}), "guided_json"),
    case("schema-pattern-properties-500", lambda: chat({"guided_json": {"type": "object", "patternProperties": {
        f"^p{i}$": {"type": "integer"} for i in range(500)}}}), "guided_json"),
    case("schema-enum-100k", lambda: chat({"guided_json": {"enum": [f"v{i}" for i in range(100_000)]}}),
         "guided_json"),
    case("schema-2mb", lambda: chat({"guided_json": {"const": "x" * 2_000_000}}), "guided_json"),
    case("schema-pattern-lone-surrogate", chat({"guided_json": {"type": "string", "pattern": "\\uD800"}}),
         "guided_json"),
    case("schema-ref-root-only", chat({"guided_json": {"$ref": "#"}}), "guided_json"),
    case("tools-total-size", lambda: chat({"tools": [tool({"type": "object", "description": "x" * 600_000}, f"f{i}")
                                                    for i in range(2)]}), "tools"),
    # regexes and grammars: 500 after 5-14 s, or hangs of minutes
    case("regex-rep-of-rep", chat({"guided_regex": "a{1000}{1000}"}), "guided_regex"),
    case("regex-group-rep", chat({"guided_regex": "(x{1000}){1000}"}), "guided_regex"),
    case("regex-rep-million", chat({"guided_regex": "a{1000000}"}), "guided_regex"),
    case("regex-200kb", lambda: chat({"guided_regex": "a" * 200_000}), "guided_regex"),
    case("regex-completions-v0", completion({"guided_regex": "a{1000}{1000}"}), "guided_regex",
         "/api/v0/completions"),
    case("structured-outputs-regex", chat({"structured_outputs": {"regex": "(x{1000}){1000}"}}),
         "structured_outputs.regex"),
    case("lark-rep-of-rep", chat({"guided_grammar": "start: /a{1000}{1000}/"}), "guided_grammar"),
    case("lark-rule-chain-3000", lambda: chat({"guided_grammar": LARK_CHAIN}), "guided_grammar"),
    case("gbnf-rep-million", chat({"guided_grammar": 'root ::= "a"{1000000}'}), "guided_grammar"),
    case("gbnf-rep-too-large", chat({"guided_grammar": 'root ::= "a"{99999999999999999999}'}), "guided_grammar"),
    case("gbnf-10000-rules", lambda: chat({"guided_grammar": GBNF_10K_RULES}), "guided_grammar"),
    case("gbnf-10000-rules-v0", lambda: chat({"guided_grammar": GBNF_10K_RULES}), "guided_grammar",
         "/api/v0/chat/completions"),
    case("gbnf-nested-parens", chat({"guided_grammar": "root ::= " + "(" * 300 + '"a"' + ")" * 300}),
         "guided_grammar"),
    case("structured-outputs-grammar", lambda: chat({"structured_outputs": {"grammar": GBNF_10K_RULES}}),
         "structured_outputs.grammar"),
    case("whitespace-pattern-200kb", lambda: chat({"guided_json": {"type": "object"},
                                                  "guided_whitespace_pattern": " " * 200_000}),
         "guided_whitespace_pattern"),
    # choices: 100,000 took 109 s and blocked health for 26 s
    case("choice-100k", lambda: chat({"guided_choice": [f"choice {i}" for i in range(100_000)]}), "guided_choice"),
    case("choice-200kb", lambda: chat({"guided_choice": ["x" * 100_000, "y" * 100_000]}), "guided_choice"),
    case("structured-outputs-choice", lambda: chat({"structured_outputs": {"choice": [
        str(i) for i in range(100_000)]}}), "structured_outputs.choice"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hostile_grammar(http: httpx.Client, case: HostileCase) -> None:
    check(http, case)


def test_bounded_definitions_still_work(http: httpx.Client) -> None:
    """What the bounds let through is still served: a ref chain of 50, 1,000 choices, a 900-rule chain."""
    gbnf = "root ::= r0\n" + "".join(f'r{i} ::= "a" r{i + 1} | "b"\n' for i in range(900)) + 'r900 ::= "z"\n'
    for extra in ({"guided_json": ref_chain(50)}, {"guided_choice": [f"c{i}" for i in range(1000)]},
                  {"guided_grammar": gbnf}):
        response = http.post("/v1/chat/completions", json=chat(extra), timeout=60)
        assert response.status_code == 200, response.text[:300]
    assert_healthy(http)


def test_health_answers_during_a_slow_compile(http: httpx.Client) -> None:
    """Compiling happens off the event loop: while the slowest allowed grammars compile, /health
    answers within its second."""
    import concurrent.futures

    heavy = [chat({"guided_choice": [f"{i:09d}" for i in range(1_000)]}),
             chat({"guided_regex": "a{1000}{1000}"}),
             chat({"tools": [{"type": "function", "function": {"name": "wide", "parameters": {
                 "type": "object", "properties": {f"p{i}": {"type": "string", "pattern": f"^[a-z]{{1,{i % 50 + 1}}}$"}
                                                  for i in range(900)}}}}]})]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        sent = [pool.submit(http.post, "/v1/chat/completions", json=body, timeout=60) for body in heavy]
        for _ in range(5):
            assert_healthy(http)
        answers = [future.result() for future in sent]
    assert all(answer.status_code in (200, 400) for answer in answers), [a.text[:200] for a in answers]


def test_streamed_refusal_names_the_field(http: httpx.Client) -> None:
    """A bound is checked before the stream starts: a plain 400, not an event."""
    body = chat({"guided_regex": "a{1000}{1000}", "stream": True})
    response = http.post("/v1/chat/completions", json=body, timeout=30)
    if response.status_code == 200:  # refused mid-generation: an error event in the stream
        events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
        assert events and events[-1].get("error", {}).get("param") == "guided_regex", response.text[-500:]
    else:
        assert response.status_code == 400
        assert error_of(response).get("param") == "guided_regex"
    assert_healthy(http)
