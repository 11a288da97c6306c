"""gpt-oss (Harmony) native tool calls with reasoning: the format chosen from the template, calls
and results rendered by the template itself, the calls parsed by the Harmony splitter at every
chunk boundary, the call grammar (text markers and special-token markers), and end to end through
the openai client on the HARMONY test model.

HARMONY is SmolLM2-135M under gpt-oss's template (tests/reasoning_model.py): it spells Harmony's
markers as ordinary text tokens, where a real gpt-oss has one special token for each; it was not
trained on Harmony nor to reason. The end-to-end tests check the plumbing (template, grammar,
splitter, the wire), not a model's thinking or its choice of tools: greedy seeded runs,
deterministic, asserted exactly where the grammar decides the shape.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openai
import pytest

from studiolo.chat.harmony_tools import MARKERS, one_call_per_message
from studiolo.chat.reasoning import reasoning_format_for, reply_parser
from studiolo.chat.templates import ChatTemplate
from studiolo.chat.tool_formats import HARMONY, format_for, template_messages, tool_grammar
from studiolo.domain.chat import ChatMessage, ToolCall, Tools, ToolSpec
from studiolo.engine.constraints import ConstraintSpec, compiler_for
from studiolo.engine.llama import LlamaModel
from studiolo.models.defaults import QWEN05, target_path
from studiolo.service.chat_prompt import _with_reasoning
from tests.conftest import SMOLLM, RunningServer, free_port, home_with_models
from tests.reasoning_model import HARMONY as HARMONY_MODEL
from tests.reasoning_model import link_reasoning_models
from tests.reply_events import summary

TEMPLATE_SOURCE = (Path(__file__).parent / "chat_templates" / "openai-gpt-oss-120b.jinja").read_text()
# no repetition penalty: with LM Studio's default (1.1) SmolLM2 chose between "channel" and "channels"
# after the many channels of the prompt at a near-tie, which one CPU's rounding settled otherwise
NO_PENALTY = {"repeat_penalty": 1.0}
GREEDY = {"temperature": 0, "seed": 1, "extra_body": NO_PENALTY}

WEATHER = ToolSpec("get_weather", "The current weather in a city.", {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
TIME = ToolSpec("get_time", "The time in a city.", {
    "type": "object", "properties": {"city": {"type": "string"}, "utc": {"type": "boolean"}}, "required": ["city"]})
SPECS = (WEATHER, TIME)


def template() -> ChatTemplate:
    return ChatTemplate(TEMPLATE_SOURCE, "<|startoftext|>", "<|return|>")


def rendered_prompt(messages: list[ChatMessage], tools: Tools | None = None) -> str:
    """The prompt as the service renders it (tool format, earlier reasoning, one call per message)."""
    rendered, variables = template_messages(HARMONY, messages, tools)
    rendered = one_call_per_message(_with_reasoning(reasoning_format_for(TEMPLATE_SOURCE), rendered, messages))
    return template().render(rendered, add_generation_prompt=True, strftime_now=lambda _: "2026-01-01", **variables)


# --- the format and the prompt ------------------------------------------------------------------


def test_the_gpt_oss_template_gets_the_harmony_tool_format():
    assert format_for(TEMPLATE_SOURCE) is HARMONY
    assert HARMONY.native and not HARMONY.parallel
    assert HARMONY.markers == MARKERS


def test_tools_are_rendered_by_the_template_as_a_functions_namespace():
    prompt = rendered_prompt([ChatMessage("user", "Weather in Paris?")], Tools(SPECS))
    assert "Calls to these tools must go to the commentary channel: 'functions'." in prompt
    assert ("<|start|>developer<|message|># Tools\n\n## functions\n\nnamespace functions {\n\n"
            "// The current weather in a city.\ntype get_weather = (_: {\ncity: string,\n}) => any;\n\n"
            "// The time in a city.\ntype get_time = (_: {\ncity: string,\nutc?: boolean,\n}) => any;\n\n"
            "} // namespace functions<|end|>") in prompt
    assert prompt.endswith("<|start|>user<|message|>Weather in Paris?<|end|><|start|>assistant")


def test_a_tool_without_description_or_parameters_renders():
    """gpt-oss's template concatenates each description: a missing one is given as empty."""
    bare = ToolSpec("ping", None, None)
    prompt = rendered_prompt([ChatMessage("user", "Ping?")], Tools((bare,)))
    assert "namespace functions {\n\n// \ntype ping = () => any;\n\n} // namespace functions" in prompt


def test_an_earlier_call_its_reasoning_and_its_result_round_trip():
    """As gpt-oss's template intends: the reasoning before a call kept (no final answer followed),
    the call as a message to functions.NAME with its JSON, the result as a message from it."""
    messages = [ChatMessage("user", "Weather in Paris?"),
                ChatMessage("assistant", None, tool_calls=(ToolCall("c1", "get_weather", '{"city": "Paris"}'),),
                            reasoning="I should look it up."),
                ChatMessage("tool", "Sunny", (), "c1", "get_weather")]
    prompt = rendered_prompt(messages, Tools(SPECS))
    assert prompt.endswith(
        "<|start|>user<|message|>Weather in Paris?<|end|>"
        "<|start|>assistant<|channel|>analysis<|message|>I should look it up.<|end|>"
        "<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{\"city\": \"Paris\"}<|call|>"
        "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>\"Sunny\"<|end|>"
        "<|start|>assistant")


def test_a_final_answer_after_the_call_drops_its_reasoning():
    messages = [ChatMessage("user", "Weather in Paris?"),
                ChatMessage("assistant", None, tool_calls=(ToolCall("c1", "get_weather", '{"city": "Paris"}'),),
                            reasoning="I should look it up."),
                ChatMessage("tool", "Sunny", (), "c1", "get_weather"),
                ChatMessage("assistant", "It is sunny."), ChatMessage("user", "Thanks")]
    prompt = rendered_prompt(messages, Tools(SPECS))
    assert "I should look it up." not in prompt
    assert "<|start|>assistant<|channel|>final<|message|>It is sunny.<|end|>" in prompt


def test_several_calls_in_one_message_become_one_message_per_call_each_with_its_result():
    """The template renders an assistant message's first call only and names a result after the
    latest call: each call goes as a message of its own, followed by its result."""
    messages = [ChatMessage("user", "Weather and time in Rome?"),
                ChatMessage("assistant", None, tool_calls=(ToolCall("a", "get_weather", '{"city": "Rome"}'),
                                                           ToolCall("b", "get_time", '{"city": "Rome"}')),
                            reasoning="Two lookups."),
                ChatMessage("tool", "Rain", (), "a", "get_weather"), ChatMessage("tool", "9:00", (), "b", "get_time")]
    prompt = rendered_prompt(messages, Tools(SPECS))
    assert prompt.endswith(
        "<|start|>assistant<|channel|>analysis<|message|>Two lookups.<|end|>"
        "<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{\"city\": \"Rome\"}<|call|>"
        "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>\"Rain\"<|end|>"
        "<|start|>assistant to=functions.get_time<|channel|>commentary json<|message|>{\"city\": \"Rome\"}<|call|>"
        "<|start|>functions.get_time to=assistant<|channel|>commentary<|message|>\"9:00\"<|end|>"
        "<|start|>assistant")


# --- parsing: the splitter gives the calls ------------------------------------------------------

# a reasoning-then-call output as a real gpt-oss writes it, in its tokens' texts (markers are one token)
REAL_TOKENS = ["<|channel|>", "analysis", "<|message|>", "User", " asks", " weather", ".", " Use", " tool", ".",
               "<|end|>", "<|start|>", "assistant", "<|channel|>", "comment", "ary", " to", "=", "functions",
               ".get", "_weather", " ", "<|constrain|>", "json", "<|message|>", "{\"", "city", "\":\"",
               "Paris", " <", "|end|", ">", "\"}", "<|call|>"]
REAL_OUTPUT = "".join(REAL_TOKENS)
REAL_ARGUMENTS = '{"city":"Paris <|end|>"}'  # a marker inside the JSON string: only the call ends it


def chunkings(tokens: list[str]):
    text = "".join(tokens)
    yield tokens
    yield list(text)
    for cut in range(len(text) + 1):
        yield [text[:cut], text[cut:]]


def parsed(chunks: list[str], *, inline: bool = False, prompt: str | None = None):
    fmt = reasoning_format_for(TEMPLATE_SOURCE)
    parser = reply_parser(fmt, prompt or rendered_prompt([ChatMessage("user", "Hi")], Tools(SPECS)), inline=inline)
    events = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return events + parser.finish()


def test_a_call_after_reasoning_parses_at_every_chunk_boundary():
    """A marker's text inside the arguments' JSON string is the string's (a model that spells the
    markers as text may quote one); the call ends at <|call|>."""
    expected = ("User asks weather. Use tool.", "", [("get_weather", REAL_ARGUMENTS)])
    for chunks in chunkings(REAL_TOKENS):
        assert summary(parsed(chunks)) == expected, chunks


def test_the_call_end_may_be_missing_and_the_recipient_may_follow_the_role():
    """<|call|> ends the generation (it may not reach the text); the template's own header order,
    `` to=functions.NAME<|channel|>commentary json``, is a call too."""
    output = ' to=functions.get_time<|channel|>commentary json<|message|>{"city": "Rome", "utc": true}'
    for chunks in chunkings([output]):
        assert summary(parsed(chunks)) == ("", "", [("get_time", '{"city": "Rome", "utc": true}')]), chunks


def test_a_preamble_then_a_call_then_nothing_more():
    """A commentary message without a recipient is meant for the user: answer text, before the call."""
    output = ("<|channel|>commentary<|message|>Checking.<|end|><|start|>assistant<|channel|>commentary "
              "to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Oslo\"}<|call|>")
    for chunks in chunkings([output]):
        assert summary(parsed(chunks)) == ("", "Checking.", [("get_weather", '{"city": "Oslo"}')]), chunks


def test_with_the_reasoning_left_in_the_content_calls_are_still_calls():
    events = parsed(REAL_TOKENS, inline=True)
    assert summary(events) == ("", "<think>User asks weather. Use tool.</think>\n\n",
                               [("get_weather", REAL_ARGUMENTS)])


# --- the grammar --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm(default_models):
    model = LlamaModel(default_models[SMOLLM])
    yield model
    model.close()


@pytest.fixture(scope="module")
def qwen():
    model = LlamaModel(target_path(QWEN05))
    yield model
    model.close()


def follows(model: LlamaModel, grammar: str, tokens: list[int]) -> str | None:
    """None if the grammar takes ``tokens`` one by one and may stop after them; else where not."""
    state = compiler_for(model).compile(ConstraintSpec.lark(grammar)).new_state()
    for index, token in enumerate(tokens):
        logits = np.zeros(model.n_vocab, dtype=np.float32)
        state.apply(logits)
        if not np.isfinite(logits[token]) and not state.valid_prefix([token]):
            return f"token {index} of {len(tokens)} refused"
        state.accept(token)
    return None if state.can_stop else "cannot stop at the end"


def text_tokens(model: LlamaModel, text: str) -> list[int]:
    return model.tokenize(text, add_special=False, parse_special=False)


CALL_TEXT = '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>'
ANALYSIS_TEXT = "<|channel|>analysis<|message|>The user wants the weather.<|end|><|start|>assistant"


@pytest.mark.parametrize("choice", ["auto", "required", "get_weather"])
def test_grammar_with_text_markers_takes_a_call_after_an_analysis(smollm, choice):
    grammar = tool_grammar(HARMONY, Tools(SPECS, choice=choice))
    assert follows(smollm, grammar, text_tokens(smollm, ANALYSIS_TEXT + CALL_TEXT)) is None
    assert follows(smollm, grammar, text_tokens(smollm, CALL_TEXT)) is None
    plain = '<|channel|>commentary to=functions.get_weather<|message|>{"city": "Paris"}<|call|>'
    assert follows(smollm, grammar, text_tokens(smollm, plain)) is None


@pytest.mark.parametrize("bad", [
    '<|channel|>commentary to=functions.get_wether<|message|>{"city": "Paris"}<|call|>',  # no such tool
    '<|channel|>commentary to=functions.get_weather<|message|>{"town": "Paris"}<|call|>',  # schema broken
    '<|channel|>commentary to=functions.get_time<|message|>{"city": "Paris", "utc": 1}<|call|>',
])
@pytest.mark.parametrize("choice", ["auto", "required"])
def test_grammar_refuses_a_call_of_no_tool_or_against_its_schema(smollm, bad, choice):
    grammar = tool_grammar(HARMONY, Tools(SPECS, choice=choice))
    assert follows(smollm, grammar, text_tokens(smollm, bad)) is not None


ROLE_FIRST = ' to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>'


@pytest.mark.parametrize("choice", ["auto", "required", "get_weather"])
def test_grammar_takes_the_templates_header_order_too(smollm, choice):
    """The recipient after the role, as the template writes earlier calls: at the start of the
    output (the prompt ended in <|start|>assistant) or after an analysis."""
    grammar = tool_grammar(HARMONY, Tools(SPECS, choice=choice))
    assert follows(smollm, grammar, text_tokens(smollm, ROLE_FIRST)) is None
    assert follows(smollm, grammar, text_tokens(smollm, ANALYSIS_TEXT + ROLE_FIRST)) is None
    bad = ' to=functions.get_weather<|channel|>commentary json<|message|>{"city": 3}<|call|>'
    assert follows(smollm, grammar, text_tokens(smollm, bad)) is not None


def test_grammar_forced_refuses_a_final_answer_and_named_refuses_another_tool(smollm):
    final = "<|channel|>final<|message|>Hello"
    assert follows(smollm, tool_grammar(HARMONY, Tools(SPECS, choice="required")), text_tokens(smollm, final))
    assert follows(smollm, tool_grammar(HARMONY, Tools(SPECS, choice="auto")), text_tokens(smollm, final)) is None
    other = '<|channel|>commentary to=functions.get_time<|message|>{"city": "Rome"}<|call|>'
    assert follows(smollm, tool_grammar(HARMONY, Tools(SPECS, choice="get_weather")), text_tokens(smollm, other))


def test_grammar_ends_at_the_call(smollm):
    """One call per reply: <|call|> ends the turn, nothing may follow it."""
    grammar = tool_grammar(HARMONY, Tools(SPECS, choice="auto"))
    state = compiler_for(smollm).compile(ConstraintSpec.lark(grammar)).new_state()
    for token in text_tokens(smollm, CALL_TEXT):
        state.apply(np.zeros(smollm.n_vocab, dtype=np.float32))
        state.accept(token)
    assert state.finished


# none of them an end-of-generation token (the matcher takes those as the end)
SPECIAL_STAND_INS = ("<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                     "<|vision_end|>", "<|object_ref_start|>")


def stand_ins(model: LlamaModel) -> dict[str, int]:
    """Harmony's markers mapped to special tokens of Qwen2.5 (which has none of gpt-oss's): the
    grammar names markers by token id, so this checks its shape for a model with special markers."""
    ids = {}
    for marker, stand_in in zip(MARKERS, SPECIAL_STAND_INS, strict=True):
        [token] = model.tokenize(stand_in, add_special=False, parse_special=True)
        ids[marker] = token
    return ids


def special_tokens(model: LlamaModel, ids: dict[str, int], text: str) -> list[int]:
    """``text``'s markers as the stand-in tokens, the rest as text tokens."""
    tokens: list[int] = []
    rest = text
    while rest:
        at = min((rest.find(m), m) for m in MARKERS if m in rest) if any(m in rest for m in MARKERS) else None
        if at is None:
            return tokens + text_tokens(model, rest)
        index, marker = at
        tokens += (text_tokens(model, rest[:index]) if index else []) + [ids[marker]]
        rest = rest[index + len(marker):]
    return tokens


@pytest.mark.parametrize("choice", ["auto", "required", "get_weather"])
def test_grammar_with_special_token_markers(qwen, choice):
    ids = stand_ins(qwen)
    grammar = tool_grammar(HARMONY, Tools(SPECS, choice=choice), ids)
    for text in (ANALYSIS_TEXT + CALL_TEXT, CALL_TEXT, ROLE_FIRST, ANALYSIS_TEXT + ROLE_FIRST):
        assert follows(qwen, grammar, special_tokens(qwen, ids, text)) is None, text
    bad = '<|channel|>commentary to=functions.get_weather<|message|>{"town": "Paris"}<|call|>'
    assert follows(qwen, grammar, special_tokens(qwen, ids, bad)) is not None
    final = ANALYSIS_TEXT + "<|channel|>final<|message|>Hello.<|return|>"
    refused = follows(qwen, grammar, special_tokens(qwen, ids, final))
    assert (refused is None) == (choice == "auto")


# --- end to end ---------------------------------------------------------------------------------

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME_TOOL = {"type": "function", "function": {
    "name": "get_time", "description": "The time in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def hserver(tmp_path_factory, default_models):
    home = home_with_models(tmp_path_factory.mktemp("harmony-home"), {SMOLLM: default_models[SMOLLM]})
    link_reasoning_models(home, (HARMONY_MODEL,))
    running = RunningServer(home, free_port(), ["--parallel", "1", "--context-length", "2048"])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def hclient(hserver) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{hserver.base_url}/v1", api_key="x", max_retries=0, timeout=120)


def streamed(client: openai.OpenAI, **request) -> dict:
    """A streamed chat's pieces joined: reasoning, content, calls (ids, names, arguments), finish."""
    joined: dict = {"reasoning": "", "content": "", "calls": {}, "finish": None}
    for chunk in client.chat.completions.create(stream=True, **request):
        for choice in chunk.choices:
            delta = choice.delta
            joined["reasoning"] += (delta.model_extra or {}).get("reasoning_content") or ""
            joined["content"] += delta.content or ""
            for call in delta.tool_calls or ():
                entry = joined["calls"].setdefault(call.index, {"id": None, "name": None, "arguments": ""})
                entry["id"] = entry["id"] or call.id
                entry["name"] = entry["name"] or call.function.name
                entry["arguments"] += call.function.arguments or ""
            joined["finish"] = choice.finish_reason or joined["finish"]
    return joined


def whole_and_streamed(client: openai.OpenAI, **request) -> tuple[str | None, str | None, list, str]:
    """The reply as (reasoning, content, [(name, arguments)], finish_reason), checked equal streamed."""
    choice = client.chat.completions.create(**request).choices[0]
    message = choice.message
    calls = [(call.function.name, call.function.arguments) for call in message.tool_calls or ()]
    assert all(call.id and call.type == "function" for call in message.tool_calls or ())
    reasoning = (message.model_extra or {}).get("reasoning_content")
    parts = streamed(client, **request)
    assert (parts["reasoning"] or None, parts["content"] or None) == (reasoning or None, message.content or None)
    assert [(c["name"], c["arguments"]) for c in parts["calls"].values()] == calls
    assert all(c["id"] for c in parts["calls"].values()) and parts["finish"] == choice.finish_reason
    return reasoning, message.content, calls, choice.finish_reason


def earlier_call(call_id: str, city: str) -> dict:
    return {"role": "assistant", "content": None, "reasoning_content": f"I need the weather in {city}.",
            "tool_calls": [{"id": call_id, "type": "function",
                            "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}]}


# Two earlier rounds of reasoning-then-call (the template renders each analysis before its call, as
# no final answer followed): SmolLM2 copies the shape, in the template's header order (the recipient
# after the role). Without them it writes no Harmony call of its own under "auto".
SHOTS = [{"role": "user", "content": "What is the weather in Oslo?"}, earlier_call("a1", "Oslo"),
         {"role": "tool", "tool_call_id": "a1", "content": "Snow"},
         {"role": "user", "content": "What is the weather in Rome?"}, earlier_call("a2", "Rome"),
         {"role": "tool", "tool_call_id": "a2", "content": "Rain"},
         {"role": "user", "content": "What is the weather in Paris?"}]
TOOLS = [WEATHER_TOOL, TIME_TOOL]

@pytest.mark.parametrize("choice, name", [
    ("auto", "get_weather"),
    ("required", "get_weather"),
    ({"type": "function", "function": {"name": "get_time"}}, "get_time"),  # the grammar names the tool
])
def test_a_call_after_analysis_whole_and_streamed(hclient, choice, name):
    reply = whole_and_streamed(hclient, model=HARMONY_MODEL.key, messages=SHOTS, tools=TOOLS, tool_choice=choice,
                               max_tokens=60, **GREEDY)
    assert reply == ("I need the weather in Paris.", None, [(name, '{"city": "Paris"}')], "tool_calls")


def test_required_without_an_example_calls_at_once(hclient):
    """The analysis is optional: the grammar lets the model open the call's channel first."""
    request = dict(model=HARMONY_MODEL.key, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=60)
    reply = whole_and_streamed(hclient, **request, **GREEDY)
    assert reply == (None, None, [("get_weather", '{"city": "Paris"}')], "tool_calls")


def test_a_tool_loop_call_result_next_turn(hclient):
    """The call and its reasoning go back as the client got them, with the result; the template
    renders them in Harmony (the analysis kept: no final answer followed yet), and the next turn runs."""
    request = dict(model=HARMONY_MODEL.key, messages=SHOTS, tools=TOOLS, max_tokens=60, **GREEDY)
    response = hclient.chat.completions.create(**request)
    usage = response.usage
    assert 0 < usage.completion_tokens_details.reasoning_tokens < usage.completion_tokens
    message = response.choices[0].message
    [call] = message.tool_calls
    assert len(call.id) == 9 and call.function.name == "get_weather"
    loop = [*SHOTS, message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 20 C"}]
    echoing = {**GREEDY, "extra_body": {**NO_PENALTY, "echo": True}}
    echoed = hclient.chat.completions.create(model=HARMONY_MODEL.key, messages=loop, tools=TOOLS, max_tokens=1,
                                             **echoing).choices[0].message.content
    assert ("<|start|>user<|message|>What is the weather in Paris?<|end|>"
            "<|start|>assistant<|channel|>analysis<|message|>I need the weather in Paris.<|end|>"
            "<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>"
            "{\"city\": \"Paris\"}<|call|>"
            "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>\"Sunny, 20 C\"<|end|>"
            "<|start|>assistant") in echoed
    reply = whole_and_streamed(hclient, **{**request, "messages": loop})
    assert reply[3] in ("stop", "length", "tool_calls")  # the untrained model's next turn: the plumbing runs
    if reply[2]:
        assert reply[3] == "tool_calls" and all(json.loads(arguments) for _, arguments in reply[2])


def test_a_budget_with_auto_tools_cuts_the_analysis(hclient):
    """Under "auto" the text before a call is free: the gate opens the analysis, cuts it at the
    budget and opens the final channel, and the grammar allows all of it (a required call's does
    not: that stays a 400, tests/test_reasoning_budget.py)."""
    response = hclient.chat.completions.create(model=HARMONY_MODEL.key, messages=SHOTS, tools=TOOLS, max_tokens=40,
                                               **{**GREEDY, "extra_body": {**NO_PENALTY, "reasoning_budget": 15}})
    message = response.choices[0].message
    # the gate's opening (<|channel|>analysis<|message|>, 11 text tokens of SmolLM2) counts in the budget
    assert (message.model_extra or {}).get("reasoning_content") == "I need the weather"
    assert 15 <= response.usage.completion_tokens_details.reasoning_tokens < response.usage.completion_tokens
    assert not message.tool_calls and message.content  # what the untrained model writes there is its own


def responses_input(messages: list[dict]) -> list[dict]:
    """SHOTS as Responses input items: reasoning items, function calls and their outputs."""
    items: list[dict] = []
    for message in messages:
        if message["role"] == "user":
            items.append({"role": "user", "content": message["content"]})
        elif message["role"] == "tool":
            items.append({"type": "function_call_output", "call_id": message["tool_call_id"],
                          "output": message["content"]})
        else:
            items.append({"type": "reasoning", "summary": [],
                          "content": [{"type": "reasoning_text", "text": message["reasoning_content"]}]})
            for call in message["tool_calls"]:
                items.append({"type": "function_call", "call_id": call["id"], "name": call["function"]["name"],
                              "arguments": call["function"]["arguments"]})
    return items


def test_responses_a_reasoning_item_then_a_function_call(hclient):
    """The same calls on /v1/responses: a reasoning item, then a function_call item."""
    tools = [{"type": "function", **tool["function"]} for tool in TOOLS]
    response = hclient.responses.create(model=HARMONY_MODEL.key, input=responses_input(SHOTS), tools=tools,
                                        max_output_tokens=60, temperature=0, extra_body=NO_PENALTY)
    kinds = [item.type for item in response.output]
    assert kinds == ["reasoning", "function_call"], response.output
    assert response.output[0].content[0].text == "I need the weather in Paris."
    call = response.output[1]
    assert (call.name, call.arguments) == ("get_weather", '{"city": "Paris"}')
