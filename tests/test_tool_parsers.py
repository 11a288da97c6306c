"""Tool calls: picking the format from real chat templates, parsing what those templates write
(in any chunking), and the tool grammars agreeing with it token by token (SmolLM2's vocabulary).

The texts parsed here are not made up: each is the assistant turn a real model family's template
renders for a conversation ending in an assistant message with tool calls.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest

from studiolo.chat.templates import CHATML_TEMPLATE, ChatTemplate
from studiolo.chat.tool_formats import (
    GENERIC,
    HERMES,
    LLAMA3,
    MISTRAL,
    ToolFormat,
    call_text,
    format_for,
    template_messages,
    tool_grammar,
)
from studiolo.chat.tool_parser import CallArguments, CallStart, Text, ToolCallParser
from studiolo.domain.chat import ChatMessage, ToolCall, Tools, ToolSpec
from studiolo.engine.constraints import ConstraintSpec, compiler_for
from studiolo.engine.llama import LlamaModel
from tests.conftest import SMOLLM

TEMPLATES = Path(__file__).parent / "chat_templates"

# family: (template file, bos, eos, expected format)
FAMILIES = {
    "qwen": ("qwen2.5-instruct.jinja", "", "<|im_end|>", HERMES),
    "hermes": ("hermes-2-pro.jinja", "<|begin_of_text|>", "<|im_end|>", HERMES),
    "llama31": ("llama-3.1-instruct.jinja", "<|begin_of_text|>", "<|eot_id|>", LLAMA3),
    "llama32": ("llama-3.2-instruct.jinja", "<|begin_of_text|>", "<|eot_id|>", LLAMA3),
    "mistral": ("mistral-instruct.jinja", "<s>", "</s>", MISTRAL),
}
PARALLEL_FAMILIES = ("qwen", "hermes", "mistral")  # the Llama templates refuse several calls

WEATHER = ToolSpec("get_weather", "The current weather in a city.", {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city"],
})
TRIP = ToolSpec("plan_trip", "Plan a trip.", {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "stops": {"type": "array", "items": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        }},
        "options": {"type": "object", "properties": {
            "budget": {"type": "number"}, "notes": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
        }},
    },
    "required": ["title", "stops"],
})
SPECS = (WEATHER, TRIP)

PARIS = {"city": "Paris"}
TRICKY_CITY = {"city": 'Pa}r"i\\s, São Paulo 東京', "unit": "celsius"}
NESTED = {
    "title": 'Ünïcødé } " \\ , 🚀 trip',
    "stops": [{"city": "Zürich", "days": 2}, {"city": "a}b,c", "days": 3}],
    "options": {"budget": 1234.5, "notes": 'x}y"z\\w,{', "tags": ["{", "]", "\\\""]},
}
# call sets: [(name, arguments)]
CASES = {
    "one": [("get_weather", PARIS)],
    "nested": [("plan_trip", NESTED)],
    "two": [("get_weather", TRICKY_CITY), ("plan_trip", NESTED)],
}
QWEN_CONTENT = "Let me check that for you."


def template(family: str) -> ChatTemplate:
    file, bos, eos, _ = FAMILIES[family]
    return ChatTemplate((TEMPLATES / file).read_text(), bos, eos)


def assistant_turn(family: str, calls: list[tuple[str, object]], content: str | None = None) -> str:
    """The assistant turn the family's template renders for ``calls``, without its end token."""
    chat = template(family)
    fmt, eos = format_for(chat.source), FAMILIES[family][2]
    tools = Tools(SPECS)
    before = [ChatMessage("user", "What is the weather, and can you plan my trip?")]
    last = ChatMessage("assistant", content, tool_calls=tuple(
        ToolCall(f"call_{i}", name, json.dumps(arguments, ensure_ascii=False))
        for i, (name, arguments) in enumerate(calls)))
    messages, variables = template_messages(fmt, before, tools)
    prompt = chat.render(messages, add_generation_prompt=True, date_string="26 Jul 2024", **variables)
    messages, variables = template_messages(fmt, [*before, last], tools)
    full = chat.render(messages, add_generation_prompt=False, date_string="26 Jul 2024", **variables)
    assert full.startswith(prompt)
    turn = full[len(prompt):].rstrip("\n")  # ChatML-style turns end in "<|im_end|>\n"
    assert turn.endswith(eos)
    return turn[: -len(eos)]


def parse(fmt: ToolFormat, chunks: list[str]) -> tuple[str, list[str], list[str]]:
    """Content, call names and each call's arguments text from feeding ``chunks`` then finishing."""
    parser = ToolCallParser(fmt.syntax)
    events = [event for chunk in chunks for event in parser.feed(chunk)] + parser.finish()
    content, names, arguments = "", [], []
    for event in events:
        if isinstance(event, Text):
            content += event.text
        elif isinstance(event, CallStart):
            assert event.call == len(names)
            names.append(event.name)
            arguments.append("")
        else:
            assert isinstance(event, CallArguments)
            arguments[event.call] += event.text
    assert parser.calls == len(names)
    return content, names, arguments


def rendering_cases() -> list:
    cases = []
    for family in FAMILIES:
        for case in CASES:
            if case == "two" and family not in PARALLEL_FAMILIES:
                continue
            cases.append(pytest.param(family, case, id=f"{family}-{case}"))
    return cases


def rendered(family: str, case: str) -> tuple[ToolFormat, str, str]:
    """(format, assistant turn, expected content): Qwen's turn has content before the calls."""
    content = QWEN_CONTENT if family == "qwen" else None
    return FAMILIES[family][3], assistant_turn(family, CASES[case], content), content or ""


def generic_text(calls: list[tuple[str, object]], content: str = "") -> str:
    """A reply in the generic format, as its earlier turns are written back into the prompt."""
    text = GENERIC.between.join(call_text(GENERIC, name, json.dumps(args, ensure_ascii=False)) for name, args in calls)
    return f"{content}\n{text}" if content else text


def all_chunkings(text: str):
    yield "every character", list(text)
    for cut in range(len(text) + 1):
        yield f"cut at {cut}", [text[:cut], text[cut:]]


# --- 1. choosing the format -----------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_format_for_real_templates(family):
    assert format_for(template(family).source) is FAMILIES[family][3]


def test_format_for_template_without_tools():
    assert format_for(CHATML_TEMPLATE) is GENERIC


# --- 2. parsing real template renderings ----------------------------------------------------


def test_rendered_turns_look_as_expected():
    assert assistant_turn("hermes", CASES["one"]) == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
    assert assistant_turn("llama31", CASES["one"]) == '{"name": "get_weather", "parameters": {"city": "Paris"}}'
    assert re.fullmatch(r'\[TOOL_CALLS\]\[\{"name": "get_weather", "arguments": \{"city": "Paris"\}, '
                        r'"id": "[A-Za-z0-9]{9}"\}\]', assistant_turn("mistral", CASES["one"]))
    assert assistant_turn("qwen", CASES["two"], QWEN_CONTENT).startswith(QWEN_CONTENT + "\n<tool_call>\n{")


@pytest.mark.parametrize(("family", "case"), rendering_cases())
def test_parse_rendered_turn(family, case):
    fmt, text, content = rendered(family, case)
    got_content, names, arguments = parse(fmt, [text])
    assert got_content == content
    assert names == [name for name, _ in CASES[case]]
    assert [json.loads(a) for a in arguments] == [args for _, args in CASES[case]]


# --- 3. every chunk boundary ----------------------------------------------------------------


@pytest.mark.parametrize(("family", "case"), rendering_cases())
def test_rendered_turn_in_any_chunking(family, case):
    fmt, text, _ = rendered(family, case)
    whole = parse(fmt, [text])
    for label, chunks in all_chunkings(text):
        assert parse(fmt, chunks) == whole, label


# --- 4. the generic format ------------------------------------------------------------------

GENERIC_TEXTS = {
    "content-then-calls": (generic_text(CASES["two"], "I'll look both up."), "I'll look both up.", CASES["two"]),
    "one-call": (generic_text(CASES["nested"]), "", CASES["nested"]),
}
LOOKALIKES = {
    "partial-open": "Calls look like [TOOL_ and so on.\n\n",
    "open-without-bracket": "Write [TOOL_REQUEST without a call, then {\"a\": 1}.",
    "braces": '{"name": "get_weather", "arguments": {}} } ] [ {',
    "ends-in-partial-open": "The marker is [TOOL_REQUEST  \n",
    "end-marker-alone": "[END_TOOL_REQUEST] and [TOOL_REQUEST [TOOL_CALLS] <tool_call>\t",
}


@pytest.mark.parametrize("key", GENERIC_TEXTS)
def test_generic_calls(key):
    text, content, calls = GENERIC_TEXTS[key]
    got_content, names, arguments = parse(GENERIC, [text])
    assert got_content == content
    assert names == [name for name, _ in calls]
    assert [json.loads(a) for a in arguments] == [args for _, args in calls]
    for label, chunks in all_chunkings(text):
        assert parse(GENERIC, chunks) == (got_content, names, arguments), label


@pytest.mark.parametrize("key", LOOKALIKES)
def test_generic_content_with_lookalikes(key):
    text = LOOKALIKES[key]
    for label, chunks in [("whole", [text]), *all_chunkings(text)]:
        assert parse(GENERIC, chunks) == (text.rstrip(), [], []), label


# --- 6. malformed calls ---------------------------------------------------------------------


MALFORMED = [
    pytest.param(GENERIC, "[TOOL_REQUEST]not json", id="generic-not-json"),
    pytest.param(GENERIC, "Sure. [TOOL_REQUEST]not json", id="generic-content-then-not-json"),
    pytest.param(GENERIC, 'Sure. [TOOL_REQUEST]{"a": 1}[END_TOOL_REQUEST]', id="generic-no-name"),
    pytest.param(HERMES, "<tool_call>\nnot json\n</tool_call>", id="hermes-not-json"),
    pytest.param(LLAMA3, "{not json}", id="llama3-not-json"),
    pytest.param(MISTRAL, "[TOOL_CALLS]not json", id="mistral-no-array"),
    pytest.param(MISTRAL, "[TOOL_CALLS][{not json}]", id="mistral-not-json"),
    pytest.param(MISTRAL, 'Sure. [TOOL_CALLS][{"a": 1}]', id="mistral-no-name"),
    pytest.param(GENERIC, "See [TOOL_REQUEST]", id="generic-bare-opening"),
    pytest.param(HERMES, "Hi <tool_call>", id="hermes-bare-opening"),
]


@pytest.mark.parametrize(("fmt", "text"), MALFORMED)
def test_malformed_call_is_content(fmt, text):
    """No constraint was active and the call never got a name: its text is content, unchanged."""
    for label, chunks in [("whole", [text]), *all_chunkings(text)]:
        assert parse(fmt, chunks) == (text, [], []), label


# --- 5. grammar agreement -------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm(default_models):
    model = LlamaModel(default_models[SMOLLM])
    yield model
    model.close()


def refusal(model: LlamaModel, grammar: str, text: str) -> str | None:
    """None if the grammar accepts ``text``'s tokens one by one and may stop after them; else why not.

    Where the grammar forces several bytes (``"}}`` closing a call), llguidance's mask only allows
    the forced text's own tokenization (guidance-ai/llguidance#263), which can differ from how the
    whole text tokenizes (``"}`` ``},`` rather than ``"`` ``}}`` ``,``); such a token counts as
    allowed when the matcher itself accepts it.
    """
    state = compiler_for(model).compile(ConstraintSpec.lark(grammar)).new_state()
    tokens = model.tokenize(text, add_special=False)
    for index, token in enumerate(tokens):
        logits = np.zeros(model.n_vocab, dtype=np.float32)
        state.apply(logits)
        if not np.isfinite(logits[token]) and not (np.isfinite(logits).sum() == 1 and state.valid_prefix([token])):
            return f"token {index} of {len(tokens)} refused"
        state.accept(token)
    return None if state.can_stop else "cannot stop at the end"


def grammar_cases() -> list:
    cases = []
    for family in ("qwen", "hermes", "llama31", "mistral", "generic"):
        for case in CASES:
            if case == "two" and family in ("llama31",):
                continue
            choices = ["auto", "required"] + ([CASES[case][0][0]] if len(CASES[case]) == 1 else [])
            for choice in choices:
                cases.append(pytest.param(family, case, choice, id=f"{family}-{case}-{choice}"))
    return cases


def call_only_turn(family: str, case: str) -> tuple[ToolFormat, str]:
    if family == "generic":
        return GENERIC, generic_text(CASES[case])
    return FAMILIES[family][3], assistant_turn(family, CASES[case])


@pytest.mark.parametrize(("family", "case", "choice"), grammar_cases())
def test_grammar_accepts_rendered_calls(smollm, family, case, choice):
    fmt, text = call_only_turn(family, case)
    assert refusal(smollm, tool_grammar(fmt, Tools(SPECS, choice)), text) is None


MISTRAL_ID = re.compile(r', "id": "[A-Za-z0-9]{9}"')


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("choice", ["auto", "required"])
def test_grammar_accepts_mistral_rendering_without_ids(smollm, case, choice):
    """Mistral's renderings agree with the grammar once the ids are taken out."""
    text = MISTRAL_ID.sub("", assistant_turn("mistral", CASES[case]))
    assert '"id"' not in text
    assert refusal(smollm, tool_grammar(MISTRAL, Tools(SPECS, choice)), text) is None


BAD_CALLS = {
    "wrong-type": [("get_weather", {"city": 5})],
    "unknown-key": [("get_weather", {"city": "Paris", "zip": "75001"})],
    "missing-required": [("get_weather", {"unit": "celsius"})],
    "nested-wrong-type": [("plan_trip", {"title": "t", "stops": [{"city": "Rome", "days": "3"}]})],
    "unknown-tool": [("get_wether", {"city": "Paris"})],
}


@pytest.mark.parametrize("family", ("qwen", "llama31", "mistral", "generic"))
@pytest.mark.parametrize("bad", BAD_CALLS)
@pytest.mark.parametrize("choice", ["auto", "required", "named"])
def test_grammar_refuses_schema_breaking_calls(smollm, family, bad, choice):
    fmt, text = (GENERIC, generic_text(BAD_CALLS[bad])) if family == "generic" \
        else (FAMILIES[family][3], assistant_turn(family, BAD_CALLS[bad]))
    if family == "mistral":
        text = MISTRAL_ID.sub("", text)  # else the id alone would be refused (see above)
    name = "get_weather" if bad == "unknown-tool" else BAD_CALLS[bad][0][0]
    grammar = tool_grammar(fmt, Tools(SPECS, name if choice == "named" else choice))
    assert refusal(smollm, grammar, text) is not None
    good = {"get_weather": PARIS, "plan_trip": NESTED}[name]
    fixed = text.replace(json.dumps(BAD_CALLS[bad][0][1], ensure_ascii=False), json.dumps(good, ensure_ascii=False))
    fixed = fixed.replace('"get_wether"', '"get_weather"')
    assert refusal(smollm, grammar, fixed) is None  # the same text with a valid call passes


@pytest.mark.parametrize("fmt", [GENERIC, HERMES])
def test_whitespace_around_calls_is_not_content(fmt):
    text = "Let me look.\n" + call_text(fmt, "get_weather", '{"city": "Paris"}') + "\n\nDone.  "
    for label, chunks in [("whole", [text]), *all_chunkings(text)]:
        assert parse(fmt, chunks) == ("Let me look.Done.", ["get_weather"], ['{"city": "Paris"}']), label


# --- 7. references inside a tool's parameters ------------------------------------------------

TREE = ToolSpec("add_node", "Add a node to a tree.", {
    "type": "object", "properties": {"label": {"type": "string"}, "child": {"$ref": "#"}}, "required": ["label"]})
RENAME = ToolSpec("rename", "Rename a file.", {
    "type": "object", "properties": {"old": {"type": "string"}, "new": {"$ref": "#/properties/old"}},
    "required": ["old", "new"]})
COUNT = ToolSpec("count", "Count things.", {  # "#/properties/old" here names an integer
    "type": "object", "properties": {"old": {"type": "integer"}, "new": {"$ref": "#/properties/old"}},
    "required": ["old", "new"]})
OWN_ID = "https://example.com/tools/rename.json"
NAMED_BY_ID = ToolSpec("rename_by_id", "Rename a file.", {  # its references name its own $id
    "$id": OWN_ID, "type": "object", "required": ["old", "new"],
    "properties": {"old": {"type": "string"}, "new": {"$ref": f"{OWN_ID}#/properties/old"}}})
SAME_ID_COUNT = ToolSpec("count_same_id", "Count things.", {**COUNT.parameters, "$id": "urn:same"})
SAME_ID_RENAME = ToolSpec("rename_same_id", "Rename a file.", {**RENAME.parameters, "$id": "urn:same"})
# (tools offered, call name, arguments accepted, arguments refused)
REFERENCES = {
    "root": ((TREE,), "add_node", {"label": "a", "child": {"label": "b", "child": {"label": "c"}}},
             {"label": "a", "child": {"name": "add_node", "arguments": {"label": "b"}}}),
    "pointer": ((RENAME,), "rename", {"old": "a.txt", "new": "b.txt"}, {"old": "a.txt", "new": 1}),
    "pointer-of-each-tool": ((RENAME, COUNT), "count", {"old": 1, "new": 2}, {"old": 1, "new": "2"}),
    "own-id": ((NAMED_BY_ID, COUNT), "rename_by_id", {"old": "a", "new": "b"}, {"old": "a", "new": 2}),
    "shared-id": ((SAME_ID_COUNT, SAME_ID_RENAME), "count_same_id", {"old": 1, "new": 2}, {"old": 1, "new": "2"}),
}


@pytest.mark.parametrize("key", REFERENCES)
@pytest.mark.parametrize("choice", ["auto", "required"])
def test_references_resolve_against_the_tools_own_parameters(smollm, key, choice):
    """``#`` and ``#/properties/...`` in a tool's parameters mean that schema, as they would alone,
    not the call object around the arguments (a call nested in a call, or a pointer that is missing)."""
    specs, name, good, bad = REFERENCES[key]
    grammar = tool_grammar(GENERIC, Tools(specs, choice))
    assert refusal(smollm, grammar, generic_text([(name, good)])) is None
    assert refusal(smollm, grammar, generic_text([(name, bad)])) is not None


# --- 8. how many calls a reply may hold -------------------------------------------------------

TWICE = [("get_weather", PARIS), ("get_weather", TRICKY_CITY)]


def reply(family: str, calls: list[tuple[str, object]]) -> tuple[ToolFormat, str]:
    if family == "generic":
        return GENERIC, generic_text(calls)
    return FAMILIES[family][3], MISTRAL_ID.sub("", assistant_turn(family, calls))


def finished_after(model: LlamaModel, grammar: str, text: str) -> bool:
    """The grammar accepts ``text`` and nothing may follow it but the end."""
    state = compiler_for(model).compile(ConstraintSpec.lark(grammar)).new_state()
    tokens = model.tokenize(text, add_special=False)
    assert state.valid_prefix(tokens) == len(tokens)
    for token in tokens:
        state.accept(token)
    return state.finished


@pytest.mark.parametrize("family", ("qwen", "mistral", "generic"))
def test_a_named_tool_is_called_exactly_once_even_with_parallel_calls(smollm, family):
    """OpenAI's named tool_choice asks for one call of it: parallel_tool_calls (true by default)
    must not let a model write it again and again until max_tokens."""
    grammar = tool_grammar(reply(family, TWICE)[0], Tools(SPECS, "get_weather", parallel=True))
    fmt, once = reply(family, TWICE[:1])
    assert finished_after(smollm, grammar, once)
    assert refusal(smollm, grammar, reply(family, TWICE)[1]) is not None
    assert refusal(smollm, tool_grammar(fmt, Tools(SPECS, "required", parallel=True)), reply(family, TWICE)[1]) is None


@pytest.mark.parametrize("gap", ["", "\n", "\n\n", " \n"], ids=["closing", "line-break", "blank-line", "space-break"])
@pytest.mark.parametrize("choice", ["required", "auto"])
@pytest.mark.parametrize("family", ("qwen", "generic"))
def test_a_reply_may_end_after_any_complete_call(smollm, family, choice, gap):
    """After a call's closing, the line break a model writes must leave it free to end: it used to
    be the separator that forced another call, and SmolLM2 repeated its call until max_tokens."""
    for calls in (TWICE[:1], TWICE):
        fmt, text = reply(family, calls)
        assert refusal(smollm, tool_grammar(fmt, Tools(SPECS, choice)), text + gap) is None


@pytest.mark.parametrize("family", ("qwen", "generic"))
def test_whitespace_after_calls_is_bounded(smollm, family):
    fmt, text = reply(family, TWICE[:1])
    assert refusal(smollm, tool_grammar(fmt, Tools(SPECS, "required")), text + "\n" * 5) is not None


# --- 9. calls cut short under the grammar ------------------------------------------------------


def cut_events(fmt: ToolFormat, text: str, *, forced: bool) -> tuple[list, list]:
    """The events a constrained parser streams for ``text`` (an output cut there), and then at its end."""
    parser = ToolCallParser(dataclasses.replace(fmt.syntax, forced=forced), constrained=True)
    return parser.feed(text), parser.finish()


@pytest.mark.parametrize("forced", [True, False], ids=["forced", "auto"])
@pytest.mark.parametrize("family", ("generic", "qwen", "mistral", "llama31"))
def test_a_call_cut_short_is_never_content_and_its_arguments_still_stream(family, forced):
    """max_tokens may end the output anywhere in a call: what was cut is never content (it was
    "[TOOL_REQUEST" leaking), and the arguments written so far have streamed already."""
    calls = TWICE[:1] if family == "llama31" else TWICE
    fmt, text = reply(family, calls)
    content = "" if forced or family == "llama31" else "I'll look both up."
    if content:
        text = generic_text(calls, content) if family == "generic" else f"{content}\n{text}"
    start = text.index(f'"{fmt.syntax.arguments_key}": ') + len(fmt.syntax.arguments_key) + 4
    end = start + len(json.dumps(calls[0][1], ensure_ascii=False))
    opened = text.index(fmt.syntax.open) + len(fmt.syntax.open) if fmt.syntax.open in text else 0
    for cut in range(len(text) + 1):
        streamed, final = cut_events(fmt, text[:cut], forced=forced)
        said = "".join(event.text for event in streamed + final if isinstance(event, Text))
        if forced or cut >= opened:  # (auto: a partial opening at the very end may be text)
            assert said == content[:cut].rstrip() if cut < len(content) else said == content, (cut, said)
        if start < cut <= end:
            assert CallStart(0, calls[0][0]) in streamed
            assert "".join(e.text for e in streamed if isinstance(e, CallArguments) and e.call == 0) == text[start:cut]
