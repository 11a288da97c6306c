"""Reasoning formats without a model: the format read from real chat templates, the prompts those
templates render for each reasoning option, earlier reasoning given back to them, and the output
split into reasoning, answer and tool calls at every chunk boundary.

Where a template can write an assistant turn with its reasoning (Qwen3's ``reasoning_content``,
gpt-oss' ``thinking``), the outputs parsed here are what the template writes after its own
generation prompt; the others' outputs are written by hand in the same shape.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from studiolo.chat.reasoning import (
    ANSWER,
    NO_REASONING,
    REASONING,
    UNDECIDED,
    Reasoning,
    budget_cut_text,
    history_message,
    reasoning_format_for,
    reasoning_variables,
    render_variables,
    reply_parser,
    starting_phase,
)
from studiolo.chat.reasoning_parsers import parse_header
from studiolo.chat.templates import ChatTemplate
from studiolo.chat.tool_formats import HERMES, format_for
from studiolo.chat.tool_parser import CallArguments, CallStart, Text, ToolCallParser
from studiolo.domain.errors import InvalidRequest
from tests.reply_events import summary

TEMPLATES = Path(__file__).parent / "chat_templates"
R1_BOS, R1_EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
# fixture: (bos, eos, format name, switchable, history key)
FIXTURES = {
    "Qwen-Qwen3-0.6B": ("", "<|im_end|>", "think", True, "reasoning_content"),
    "Qwen-QwQ-32B": ("", "<|im_end|>", "think", True, None),
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": (R1_BOS, R1_EOS, "think", True, None),
    "llama-cpp-deepseek-r1": (R1_BOS, R1_EOS, "think", False, None),
    "HuggingFaceTB-SmolLM3-3B": ("", "<|im_end|>", "think", True, None),
    "openai-gpt-oss-120b": ("<|startoftext|>", "<|return|>", "harmony", False, "thinking"),
    "qwen2.5-instruct": ("", "<|im_end|>", "none", False, None),
}
HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def template(name: str) -> ChatTemplate:
    bos, eos, *_ = FIXTURES[name]
    return ChatTemplate((TEMPLATES / f"{name}.jinja").read_text(), bos, eos)


def fmt_of(name: str):
    return reasoning_format_for(template(name).source)


def render(name: str, messages=HELLO, option=None, kwargs=None, **extra) -> str:
    fmt = fmt_of(name)
    return template(name).render(messages, **render_variables(fmt, option, kwargs), **extra)


# --- detection and capabilities -----------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURES)
def test_format_read_from_each_template(name):
    _, _, kind, switchable, history_key = FIXTURES[name]
    fmt = fmt_of(name)
    assert (fmt.name, fmt.switchable, fmt.history_key) == (kind, switchable, history_key)


def test_capabilities_as_the_model_list_gives_them():
    assert fmt_of("Qwen-Qwen3-0.6B").capability() == {"allowed_options": ["off", "on"], "default": "on"}
    assert fmt_of("llama-cpp-deepseek-r1").capability() == {"allowed_options": ["on"], "default": "on"}
    assert fmt_of("openai-gpt-oss-120b").capability() == {"allowed_options": ["low", "medium", "high"],
                                                          "default": "medium"}
    assert fmt_of("qwen2.5-instruct").capability() is None


def test_tool_formats_of_reasoning_templates():
    assert format_for(template("Qwen-Qwen3-0.6B").source) is HERMES
    assert format_for(template("qwen2.5-instruct").source) is HERMES


# --- rendering ----------------------------------------------------------------------------------

QWEN_HELLO = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("name, option, tail, phase", [
    ("Qwen-Qwen3-0.6B", None, QWEN_HELLO, UNDECIDED),
    ("Qwen-Qwen3-0.6B", "on", QWEN_HELLO, UNDECIDED),
    ("Qwen-Qwen3-0.6B", "off", QWEN_HELLO + "<think>\n\n</think>\n\n", ANSWER),
    ("Qwen-Qwen3-0.6B", "none", QWEN_HELLO + "<think>\n\n</think>\n\n", ANSWER),
    ("Qwen-Qwen3-0.6B", "high", QWEN_HELLO, UNDECIDED),  # lenient: an effort means "on"
    ("Qwen-QwQ-32B", None, QWEN_HELLO + "<think>\n", REASONING),
    ("Qwen-QwQ-32B", "off", QWEN_HELLO + "<think>\n</think>", ANSWER),
    ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", None, f"{R1_BOS}Be brief.<｜User｜>Hi<｜Assistant｜><think>\n",
     REASONING),
    ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", "off",
     f"{R1_BOS}Be brief.<｜User｜>Hi<｜Assistant｜><think>\n</think>", ANSWER),
    ("llama-cpp-deepseek-r1", "on", f"{R1_BOS}Be brief.<｜User｜>Hi{R1_EOS}<｜Assistant｜><think>\n", REASONING),
    ("HuggingFaceTB-SmolLM3-3B", None, "Reasoning Mode: /think\n\n## Custom Instructions\n\nBe brief.\n\n<|im_end|>\n"
     "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", UNDECIDED),
    ("HuggingFaceTB-SmolLM3-3B", "off", "Reasoning Mode: /no_think\n\n## Custom Instructions\n\nBe brief.\n\n"
     "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n", ANSWER),
    ("openai-gpt-oss-120b", None, "<|start|>developer<|message|># Instructions\n\nBe brief.\n\n<|end|>"
     "<|start|>user<|message|>Hi<|end|><|start|>assistant", UNDECIDED),
    ("qwen2.5-instruct", None, QWEN_HELLO, ANSWER),
    ("qwen2.5-instruct", "off", QWEN_HELLO, ANSWER),
])
def test_prompt_tail_for_each_option(name, option, tail, phase):
    prompt = render(name, option=option)
    assert prompt.endswith(tail)
    assert starting_phase(fmt_of(name), prompt) == phase


@pytest.mark.parametrize("option, line", [(None, "Reasoning: medium\n"), ("on", "Reasoning: medium\n"),
                                          ("low", "Reasoning: low\n"), ("high", "Reasoning: high\n")])
def test_gpt_oss_effort_lands_in_its_system_message(option, line):
    prompt = render("openai-gpt-oss-120b", option=option)
    assert f"Current date: {prompt.split('Current date: ')[1][:10]}\n\n{line}\n# Valid channels" in prompt


def test_smollm3_system_flag_switches_thinking_off_and_the_prompt_says_so():
    messages = [{"role": "system", "content": "Be brief. /no_think"}, {"role": "user", "content": "Hi"}]
    prompt = render("HuggingFaceTB-SmolLM3-3B", messages)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n")
    assert starting_phase(fmt_of("HuggingFaceTB-SmolLM3-3B"), prompt) == ANSWER


@pytest.mark.parametrize("name, option", [("llama-cpp-deepseek-r1", "off"), ("openai-gpt-oss-120b", "off"),
                                          ("openai-gpt-oss-120b", "none")])
def test_thinking_off_where_the_template_cannot_is_refused(name, option):
    with pytest.raises(InvalidRequest) as refused:
        reasoning_variables(fmt_of(name), option, param="reasoning_effort")
    assert refused.value.param == "reasoning_effort"


@pytest.mark.parametrize("name, option, allowed", [
    ("Qwen-Qwen3-0.6B", "high", False), ("Qwen-Qwen3-0.6B", "on", True), ("Qwen-Qwen3-0.6B", "off", True),
    ("openai-gpt-oss-120b", "low", True), ("openai-gpt-oss-120b", "on", True),
    ("qwen2.5-instruct", "on", False), ("qwen2.5-instruct", "low", False), ("qwen2.5-instruct", "off", True),
])
def test_strict_options_follow_allowed_options(name, option, allowed):
    fmt = fmt_of(name)
    if allowed:
        reasoning_variables(fmt, option, strict=True)
    else:
        with pytest.raises(InvalidRequest) as refused:
            reasoning_variables(fmt, option, strict=True)
        assert refused.value.param == "reasoning"
    assert reasoning_variables(NO_REASONING, "high") == {}  # lenient: ignored on a model that does not reason


def test_unknown_option_is_refused():
    with pytest.raises(InvalidRequest):
        reasoning_variables(fmt_of("Qwen-Qwen3-0.6B"), "extreme")


def test_enable_thinking_is_always_given_where_a_template_reads_it():
    # llama.cpp's QwQ and R1 templates take a missing enable_thinking as false: they close <think>
    bare = template("Qwen-QwQ-32B").render(HELLO)
    assert bare.endswith("<think>\n</think>")
    assert reasoning_variables(fmt_of("Qwen-QwQ-32B"), None) == {"enable_thinking": True}
    assert render("Qwen-QwQ-32B").endswith("<think>\n")


def test_chat_template_kwargs_reach_the_template_and_the_explicit_option_wins():
    assert render("Qwen-Qwen3-0.6B", kwargs={"enable_thinking": False}).endswith("<think>\n\n</think>\n\n")
    assert render("Qwen-Qwen3-0.6B", option="on", kwargs={"enable_thinking": False}).endswith(QWEN_HELLO)
    identity = render("openai-gpt-oss-120b", kwargs={"model_identity": "You are Studiolo."})
    assert identity.startswith("<|start|>system<|message|>You are Studiolo.\nKnowledge cutoff")


@pytest.mark.parametrize("key", ["messages", "tools", "add_generation_prompt", "bos_token", "raise_exception",
                                 "not a name"])
def test_chat_template_kwargs_cannot_replace_what_studiolo_sets(key):
    with pytest.raises(InvalidRequest) as refused:
        render_variables(fmt_of("Qwen-Qwen3-0.6B"), None, {key: "x"})
    assert refused.value.param == "chat_template_kwargs"


# --- earlier reasoning in the prompt -------------------------------------------------------------


def _tool_loop(name: str, reasoning: str) -> list[dict]:
    fmt = fmt_of(name)
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "clear"}'},
    ]
    return [history_message(fmt, m, reasoning if m["role"] == "assistant" else None) for m in messages]


def test_qwen3_keeps_reasoning_within_a_tool_loop():
    messages = _tool_loop("Qwen-Qwen3-0.6B", "Need the weather tool.")
    prompt = template("Qwen-Qwen3-0.6B").render(messages, tools=[WEATHER_TOOL])
    assert ("<|im_start|>assistant\n<think>\nNeed the weather tool.\n</think>\n\n<tool_call>\n"
            '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n') in prompt


def test_qwen3_drops_reasoning_of_turns_before_the_last_question():
    fmt = fmt_of("Qwen-Qwen3-0.6B")
    messages = [{"role": "user", "content": "Hi"},
                history_message(fmt, {"role": "assistant", "content": "Hello!"}, "A greeting."),
                {"role": "user", "content": "Bye"}]
    prompt = template("Qwen-Qwen3-0.6B").render(messages)
    assert "A greeting." not in prompt and "<|im_start|>assistant\nHello!<|im_end|>" in prompt


def test_gpt_oss_keeps_reasoning_of_an_unanswered_call_and_drops_it_after_a_final_answer():
    loop = _tool_loop("openai-gpt-oss-120b", "Need the weather tool.")
    prompt = template("openai-gpt-oss-120b").render(loop, tools=[WEATHER_TOOL])
    assert prompt.endswith(
        "<|start|>user<|message|>Weather in Paris?<|end|>"
        "<|start|>assistant<|channel|>analysis<|message|>Need the weather tool.<|end|>"
        '<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>'
        '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>"{\\"sky\\": \\"clear\\"}"<|end|>'
        "<|start|>assistant")
    fmt = fmt_of("openai-gpt-oss-120b")
    answered = [*loop, history_message(fmt, {"role": "assistant", "content": "Clear."}, "Say it."),
                {"role": "user", "content": "Thanks"}]
    prompt = template("openai-gpt-oss-120b").render(answered, tools=[WEATHER_TOOL])
    assert "Need the weather tool." not in prompt and "Say it." not in prompt
    assert "<|start|>assistant<|channel|>final<|message|>Clear.<|end|>" in prompt


def test_templates_without_a_reasoning_key_drop_it():
    fmt = fmt_of("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B")
    message = {"role": "assistant", "content": "Hello!"}
    assert history_message(fmt, message, "A greeting.") == message
    messages = [{"role": "user", "content": "Hi"}, message, {"role": "user", "content": "Bye"}]
    prompt = render("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", messages)
    assert prompt.endswith(f"<｜User｜>Hi<｜Assistant｜>Hello!{R1_EOS}<｜User｜>Bye<｜Assistant｜><think>\n")


# --- parsing at every chunk boundary -------------------------------------------------------------


def parse(parser, chunks):
    events = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return events + parser.finish()


def chunkings(text: str):
    """Every split in two, char by char, and a few random chunkings."""
    for cut in range(len(text) + 1):
        yield [text[:cut], text[cut:]]
    yield list(text)
    rng = random.Random(19)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 8))))
        yield [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def assert_every_chunking(make_parser, output, expected):
    for chunks in chunkings(output):
        assert summary(parse(make_parser(), chunks)) == expected, chunks


def generated(name: str, message: dict, **variables) -> str:
    """What the template writes for ``message`` after its own generation prompt (the output a
    model trained on it gives), without the end-of-turn token."""
    tpl = template(name)
    prompt = tpl.render([{"role": "user", "content": "Hi"}], **variables)
    whole = tpl.render([{"role": "user", "content": "Hi"}, message], add_generation_prompt=False, **variables)
    assert whole.startswith(prompt)
    return whole[len(prompt):].removesuffix("\n").removesuffix(tpl.eos_token).removesuffix("<|return|>")


THOUGHT = "The user greets me. A <tag> and </thin are not the end;\nkeep going."


def test_qwen3_output_with_reasoning_at_every_boundary():
    fmt = fmt_of("Qwen-Qwen3-0.6B")
    message = {"role": "assistant", "content": "Hello! <think> is content here.", "reasoning_content": THOUGHT}
    output = generated("Qwen-Qwen3-0.6B", message)
    assert output == f"<think>\n{THOUGHT}\n</think>\n\nHello! <think> is content here."
    prompt = render("Qwen-Qwen3-0.6B")
    assert_every_chunking(lambda: reply_parser(fmt, prompt), output,
                          (THOUGHT, "Hello! <think> is content here.", []))


@pytest.mark.parametrize("name", ["Qwen-QwQ-32B", "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", "llama-cpp-deepseek-r1"])
def test_prompt_opened_reasoning_only_the_close_tag_comes(name):
    fmt, prompt = fmt_of(name), render(name)
    output = f"{THOUGHT}\n</think>\n\nHello!"
    assert_every_chunking(lambda: reply_parser(fmt, prompt), output, (THOUGHT, "Hello!", []))


@pytest.mark.parametrize("output", [f"<think>\n{THOUGHT}\n</think>\n\nHello!", f"\n<think>{THOUGHT}</think>Hello!"])
def test_a_second_opening_after_the_prompt_opened_is_dropped(output):
    fmt, prompt = fmt_of("Qwen-QwQ-32B"), render("Qwen-QwQ-32B")
    assert_every_chunking(lambda: reply_parser(fmt, prompt), output, (THOUGHT, "Hello!", []))


def test_smollm3_thinking_on_and_off():
    fmt = fmt_of("HuggingFaceTB-SmolLM3-3B")
    on, off = render("HuggingFaceTB-SmolLM3-3B"), render("HuggingFaceTB-SmolLM3-3B", option="off")
    assert_every_chunking(lambda: reply_parser(fmt, on), f"<think>\n{THOUGHT}\n</think>\nHi!", (THOUGHT, "Hi!", []))
    # thinking off: a <think> the model writes anyway is its answer
    assert_every_chunking(lambda: reply_parser(fmt, off), "<think>x</think>Hi!", ("", "<think>x</think>Hi!", []))


def test_reasoning_cut_short_is_all_reasoning():
    fmt = fmt_of("Qwen-QwQ-32B")
    prompt = render("Qwen-QwQ-32B")
    assert_every_chunking(lambda: reply_parser(fmt, prompt), f"{THOUGHT}\n</thi", (f"{THOUGHT}\n</thi", "", []))
    qwen3 = fmt_of("Qwen-Qwen3-0.6B")
    assert_every_chunking(lambda: reply_parser(qwen3, render("Qwen-Qwen3-0.6B")), f"<think>\n{THOUGHT}  \n",
                          (THOUGHT, "", []))


def test_model_that_skips_the_reasoning_gives_all_answer():
    fmt, prompt = fmt_of("Qwen-Qwen3-0.6B"), render("Qwen-Qwen3-0.6B")
    assert_every_chunking(lambda: reply_parser(fmt, prompt), "  <thought>Hello</think>",
                          ("", "<thought>Hello</think>", []))
    assert_every_chunking(lambda: reply_parser(fmt, prompt), "\n<thi", ("", "<thi", []))


def test_non_reasoning_model_passes_everything_through():
    fmt = fmt_of("qwen2.5-instruct")
    assert_every_chunking(lambda: reply_parser(fmt, render("qwen2.5-instruct")), "<think>a</think> b",
                          ("", "<think>a</think> b", []))


def test_qwen3_reasoning_then_hermes_tool_call():
    fmt = fmt_of("Qwen-Qwen3-0.6B")
    arguments = {"city": "</think> <tool_call> Paris"}
    call = {"type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    message = {"role": "assistant", "content": "", "reasoning_content": THOUGHT, "tool_calls": [call]}
    output = generated("Qwen-Qwen3-0.6B", message, tools=[WEATHER_TOOL])
    assert output.startswith(f"<think>\n{THOUGHT}\n</think>\n\n<tool_call>\n")
    prompt = render("Qwen-Qwen3-0.6B", tools=[WEATHER_TOOL])
    expected = (THOUGHT, "", [("get_weather", json.dumps(arguments))])
    assert_every_chunking(lambda: reply_parser(fmt, prompt, ToolCallParser(HERMES.syntax)), output, expected)


HARMONY_ANSWER = "Hello! <|channel|> in text is text? No: only end markers end it."


def test_harmony_analysis_then_final_at_every_boundary():
    fmt = fmt_of("openai-gpt-oss-120b")
    message = {"role": "assistant", "content": "Hello!", "thinking": THOUGHT}
    output = generated("openai-gpt-oss-120b", message)
    assert output == (f"<|channel|>analysis<|message|>{THOUGHT}<|end|>"
                      "<|start|>assistant<|channel|>final<|message|>Hello!")
    prompt = render("openai-gpt-oss-120b")
    assert_every_chunking(lambda: reply_parser(fmt, prompt), output + "<|return|>", (THOUGHT, "Hello!", []))
    assert_every_chunking(lambda: reply_parser(fmt, prompt), output, (THOUGHT, "Hello!", []))


def test_harmony_reasoning_then_tool_call():
    fmt = fmt_of("openai-gpt-oss-120b")
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    loop = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "", "thinking": THOUGHT,
                                                 "tool_calls": [call]}]
    tpl = template("openai-gpt-oss-120b")
    prompt = tpl.render(loop[:1], tools=[WEATHER_TOOL])
    output = tpl.render(loop, tools=[WEATHER_TOOL], add_generation_prompt=False)[len(prompt):]
    assert output == (f"<|channel|>analysis<|message|>{THOUGHT}<|end|><|start|>assistant to=functions.get_weather"
                      '<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>')
    expected = (THOUGHT, "", [("get_weather", '{"city": "Paris"}')])
    assert_every_chunking(lambda: reply_parser(fmt, prompt), output, expected)
    # the guide's own form: the recipient after the channel, <|constrain|>json, a preamble between
    guide = (f"<|channel|>analysis<|message|>{THOUGHT}<|end|><|start|>assistant<|channel|>commentary<|message|>"
             "Checking.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
             '<|message|>{"city":"Paris"}<|call|>')
    assert_every_chunking(lambda: reply_parser(fmt, prompt), guide,
                          (THOUGHT, "Checking.", [("get_weather", '{"city":"Paris"}')]))


def test_harmony_reasoning_between_calls_and_messages_joined():
    fmt = fmt_of("openai-gpt-oss-120b")
    output = ("<|channel|>analysis<|message|>First.<|end|>"
              '<|start|>assistant to=functions.a<|channel|>commentary json<|message|>{}<|call|>'
              "<|start|>assistant<|channel|>analysis<|message|>Second.<|end|>"
              "<|start|>assistant<|channel|>final<|message|>Done.<|return|>")
    events = parse(reply_parser(fmt, render("openai-gpt-oss-120b")), [output])
    assert events == [Reasoning("First."), CallStart(0, "a"), CallArguments(0, "{}"), Reasoning("\n\nSecond."),
                      Text("Done.")]


def test_harmony_cut_short_and_off_format():
    fmt, prompt = fmt_of("openai-gpt-oss-120b"), render("openai-gpt-oss-120b")
    assert_every_chunking(lambda: reply_parser(fmt, prompt), f"<|channel|>analysis<|message|>{THOUGHT}<|en",
                          (f"{THOUGHT}<|en", "", []))
    assert_every_chunking(lambda: reply_parser(fmt, prompt), "<|channel|>analysis<|message|>R<|end|><|start|>assis",
                          ("R", "", []))
    assert_every_chunking(lambda: reply_parser(fmt, prompt), "Plain words, no channels.",
                          ("", "Plain words, no channels.", []))


def test_harmony_header_variants():
    assert parse_header("assistant to=functions.get_weather<|channel|>commentary json").tool == "get_weather"
    assert parse_header("<|channel|>commentary to=functions.f <|constrain|>json").tool == "f"
    assert parse_header("<|channel|>analysis").kind == REASONING
    assert parse_header("assistant<|channel|>final").kind == ANSWER
    assert parse_header("<|channel|>commentary").kind == ANSWER  # a preamble, for the user


# --- phases and the budget cut -------------------------------------------------------------------


def test_phases_follow_the_output():
    fmt = fmt_of("Qwen-Qwen3-0.6B")
    parser = reply_parser(fmt, render("Qwen-Qwen3-0.6B"))
    assert parser.phase == UNDECIDED
    parser.feed("<think>\nHmm")
    assert parser.phase == REASONING
    parser.feed("</think>")
    assert parser.phase == ANSWER
    harmony = reply_parser(fmt_of("openai-gpt-oss-120b"), render("openai-gpt-oss-120b"))
    harmony.feed("<|channel|>analysis<|message|>x")
    assert harmony.phase == REASONING
    harmony.feed("<|end|><|start|>assistant<|channel|>final<|message|>")
    assert harmony.phase == ANSWER


@pytest.mark.parametrize("name, head, cut", [
    ("Qwen-QwQ-32B", "Thinking long", "\n</think>\n\n"),
    ("Qwen-Qwen3-0.6B", "<think>\nThinking long\n", "</think>\n\n"),
    ("openai-gpt-oss-120b", "<|channel|>analysis<|message|>Thinking long",
     "<|end|><|start|>assistant<|channel|>final<|message|>"),
])
def test_budget_cut_closes_the_reasoning_and_the_answer_follows(name, head, cut):
    fmt = fmt_of(name)
    parser = reply_parser(fmt, render(name))
    reasoning_so_far = head.split(">")[-1]
    text = budget_cut_text(fmt, reasoning_so_far)
    assert text == cut
    events = parse(parser, [head, text, "The answer."])
    assert summary(events) == ("Thinking long", "The answer.", [])
    assert budget_cut_text(NO_REASONING) == ""


@pytest.mark.parametrize("name, option, output, answer_part", [
    ("Qwen-Qwen3-0.6B", None, "<think>\nHmm.\n</think>\n\n{\"a\": 1}", "\n\n{\"a\": 1}"),
    ("Qwen-Qwen3-0.6B", None, "\n{\"a\": 1}", "\n{\"a\": 1}"),  # the model skipped the reasoning
    ("Qwen-Qwen3-0.6B", "off", "{\"a\": 1}", "{\"a\": 1}"),
    ("Qwen-QwQ-32B", None, "Hmm.</think>{\"a\": 1}", "{\"a\": 1}"),
    ("Qwen-QwQ-32B", None, "Hmm.", None),  # cut short: no answer
    ("openai-gpt-oss-120b", None, "<|channel|>analysis<|message|>Hmm.<|end|><|start|>assistant<|channel|>final"
     "<|message|>{\"a\": 1}<|return|>", "{\"a\": 1}<|return|>"),
    ("qwen2.5-instruct", None, "{\"a\": 1}", "{\"a\": 1}"),
])
def test_answer_offset_points_after_the_reasoning_in_every_chunking(name, option, output, answer_part):
    fmt, prompt = fmt_of(name), render(name, option=option)
    for chunks in chunkings(output):
        parser = reply_parser(fmt, prompt)
        parse(parser, chunks)
        offset = parser.answer_offset
        assert (None if offset is None else output[offset:]) == answer_part, chunks


def test_qwen3_tool_loop_without_reasoning_renders():
    messages = _tool_loop("Qwen-Qwen3-0.6B", "")
    assert messages[1]["content"] == ""  # None would break Qwen3's template (it strips the content)
    prompt = template("Qwen-Qwen3-0.6B").render(messages, tools=[WEATHER_TOOL])
    assert "<|im_start|>assistant\n<tool_call>\n" in prompt


def test_qwen3_call_without_reasoning_is_still_a_call():
    fmt = fmt_of("Qwen-Qwen3-0.6B")
    prompt = render("Qwen-Qwen3-0.6B", tools=[WEATHER_TOOL])
    output = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert_every_chunking(lambda: reply_parser(fmt, prompt, ToolCallParser(HERMES.syntax)), output,
                          ("", "", [("get_weather", '{"city": "Paris"}')]))


def test_harmony_final_without_analysis_and_a_prompt_that_opened_the_final_channel():
    fmt, prompt = fmt_of("openai-gpt-oss-120b"), render("openai-gpt-oss-120b")
    assert_every_chunking(lambda: reply_parser(fmt, prompt), "<|channel|>final<|message|>Hi<|return|>", ("", "Hi", []))
    opened = prompt + "<|channel|>final<|message|>"  # e.g. a prompt that skips the analysis itself
    parser = reply_parser(fmt, opened)
    assert parser.phase == ANSWER and parser.answer_offset == 0
    assert_every_chunking(lambda: reply_parser(fmt, opened), "Hi<|return|>", ("", "Hi", []))


def test_think_output_of_only_the_opening_gives_nothing():
    fmt, prompt = fmt_of("Qwen-Qwen3-0.6B"), render("Qwen-Qwen3-0.6B")
    assert_every_chunking(lambda: reply_parser(fmt, prompt), "<think>\n", ("", "", []))


@pytest.mark.parametrize("name, output", [
    ("Qwen-Qwen3-0.6B", f"<think>\n{THOUGHT}\n</think>\n\nHello!"),
    ("Qwen-QwQ-32B", f"{THOUGHT}</think>Hello!"),
    ("openai-gpt-oss-120b", f"<|channel|>analysis<|message|>{THOUGHT}<|end|><|start|>assistant<|channel|>final"
     "<|message|>Hello!<|return|>"),
])
def test_reasoning_left_in_the_content(name, output):
    fmt, prompt = fmt_of(name), render(name)
    assert_every_chunking(lambda: reply_parser(fmt, prompt, ToolCallParser(HERMES.syntax), inline=True), output,
                          ("", f"<think>{THOUGHT}</think>\n\nHello!", []))


def test_reasoning_left_in_the_content_and_cut_short_is_closed():
    fmt, prompt = fmt_of("Qwen-QwQ-32B"), render("Qwen-QwQ-32B")
    assert_every_chunking(lambda: reply_parser(fmt, prompt, inline=True), f"{THOUGHT}\n",
                          ("", f"<think>{THOUGHT}</think>\n\n", []))


def test_reasoning_left_in_the_content_is_not_parsed_for_calls():
    fmt, prompt = fmt_of("Qwen-QwQ-32B"), render("Qwen-QwQ-32B")
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    output = f"Maybe {call}?</think>{call}"
    assert_every_chunking(lambda: reply_parser(fmt, prompt, ToolCallParser(HERMES.syntax), inline=True), output,
                          ("", f"<think>Maybe {call}?</think>\n\n", [("get_weather", '{"city": "Paris"}')]))
