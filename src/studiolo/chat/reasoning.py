"""Reasoning models: which reasoning format a chat template speaks, the template variables a
request sets (thinking on or off, an effort), earlier reasoning given back to the template, the
text that closes the reasoning when a budget runs out, and the parser that splits an output into
reasoning, answer and tool calls.

The format is chosen from the chat template, as tool formats are (chat/tool_formats.py):

- ``harmony`` (gpt-oss): the template speaks ``<|channel|>``. Reasoning is the ``analysis``
  channel; calls go to ``functions.NAME`` in ``commentary``. It takes ``reasoning_effort``
  (low, medium, high; medium by default) and cannot switch thinking off. Earlier reasoning goes
  back in each assistant message's ``thinking`` key; the template keeps it only for tool calls
  that no final answer followed (as OpenAI's harmony guide says) and drops it otherwise.
- ``think`` (DeepSeek R1, Qwen3, QwQ, SmolLM3): the template knows ``<think>``. It can switch
  thinking off when it reads ``enable_thinking`` (Qwen3 writes an empty ``<think>\\n\\n</think>``
  into the prompt then; SmolLM3 says ``/no_think`` in its system text; llama.cpp's QwQ and R1
  copies close the ``<think>`` their prompt opens). Earlier reasoning goes back in a
  ``reasoning_content`` key where the template reads one (Qwen3: kept for the turns after the last
  user message, i.e. within a tool loop); the other templates drop it.
- ``none``: every other template.

Whether the output starts inside the reasoning depends on the render (QwQ and R1 open ``<think>``
in their generation prompt, Qwen3 does not, and no template does with thinking off), so the
parser's starting phase is read from the rendered prompt itself (``reply_parser(fmt, prompt)``).

Design note for the service (how to drive this):

1. Per model, once: ``fmt = reasoning_format_for(template.source)``; ``fmt.capability()`` is
   ``/api/v1/models``' ``capabilities.reasoning`` (None: leave it out).
2. Per request: ``variables = render_variables(fmt, option, chat_template_kwargs, param=...,
   strict=...)`` with ``option`` the request's ``reasoning`` (``/api/v1/chat``, strict: an option
   outside ``fmt.allowed_options`` is a 400 naming ``reasoning``), ``reasoning_effort`` or
   ``reasoning.effort`` (OpenAI APIs, lenient: an effort on a model that only thinks or not is
   taken as "on"; "none" where thinking cannot be switched off is a 400). Pass the variables to
   ``ChatTemplate.render(..., **variables)``. Earlier assistant turns: ``history_message(fmt,
   rendered_message, reasoning)`` on each message dict that tool_formats.template_messages made.
3. Parse: ``parser = reply_parser(fmt, prompt, tools_parser)`` with ``tools_parser`` the
   ToolCallParser the request would use without reasoning (None without tools). Feed it the output
   text; it gives ``Reasoning`` (to ``reasoning_content`` / reasoning items), ``Text`` and the call
   events, as ToolCallParser does. ``parser.phase`` says where the output is: "reasoning" (count
   the tokens as reasoning tokens; a budget applies), "answer", or "undecided" (not yet known).
4. Constraints (``response_format``, forced tools) apply to the answer only: start them when
   ``parser.phase`` becomes "answer", and give them the output from ``parser.answer_offset`` on
   (a token may hold the end of the reasoning and the start of the answer); or build the grammar
   as reasoning-then-answer.
5. Budget: when the reasoning tokens reach the budget while ``parser.phase == "reasoning"``,
   append ``budget_cut_text(fmt, reasoning_so_far)`` to the sequence (tokenized, as if the model
   wrote it), feed the same text to the parser, and let the model go on with its answer.
6. Where reasoning goes (the server option): ``Reasoning`` events are the separate field
   (``reasoning_content``, or ``reasoning`` as gpt-oss clients read it: the same text under
   another name); ``reply_parser(..., inline=True)`` gives it back inside the content as
   ``<think>…</think>\n\n`` for every format (Harmony too), still never parsed for tool calls.
7. Harmony's markers are special tokens: the output must be detokenized with them
   (``<|channel|>`` etc. as text) for the parser to see them; ``<|return|>`` and ``<|call|>`` end
   the generation and may be missing. Its calls come from the splitter, not from ToolCallParser,
   and its tool format is tool_formats.HARMONY (native: the template renders tools and calls; its
   messages and its call grammar, analysis included, are chat/harmony_tools.py's).
8. Decisions where the issue is silent: separate analysis messages (and separate answer messages)
   join with a blank line; a Harmony ``commentary`` message without a recipient (a preamble meant
   for the user) is answer text; ``chat_template_kwargs`` naming ``messages``, ``tools``,
   ``add_generation_prompt``, ``bos_token``, ``eos_token`` or the template helpers is a 400 naming
   ``chat_template_kwargs``; an explicit reasoning option wins over ``chat_template_kwargs``,
   which win over the defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from studiolo.chat.reasoning_parsers import (
    ANSWER,
    HARMONY_ENDS,
    HARMONY_MESSAGE,
    HARMONY_START,
    REASONING,
    UNDECIDED,
    HarmonySplitter,
    PlainSplitter,
    Reasoning,
    SplitEvent,
    ThinkSplitter,
    merged_pieces,
)
from studiolo.chat.templates import checked_template_kwargs
from studiolo.chat.tool_parser import Text, ToolCallParser
from studiolo.domain.errors import InvalidRequest

EFFORTS = ("low", "medium", "high")
OPTIONS = ("off", "on", *EFFORTS)  # what /api/v1/chat's ``reasoning`` takes; "none" is "off"


@dataclass(frozen=True)
class ReasoningFormat:
    name: str  # none | think | harmony
    open: str = ""  # the tags around the reasoning (think)
    close: str = ""
    switchable: bool = False  # the template can switch thinking off (``enable_thinking``)
    efforts: tuple[str, ...] = ()  # the ``reasoning_effort`` values the template takes
    default_effort: str | None = None
    history_key: str | None = None  # the assistant message key the template reads earlier reasoning from

    @property
    def reasons(self) -> bool:
        return self.name != "none"

    @property
    def allowed_options(self) -> tuple[str, ...]:
        """The reasoning options the model honours, as ``/api/v1/models`` lists them."""
        if not self.reasons:
            return ()
        if self.efforts:
            return (("off",) if self.switchable else ()) + self.efforts
        return ("off", "on") if self.switchable else ("on",)

    @property
    def default_option(self) -> str | None:
        return None if not self.reasons else self.default_effort or "on"

    def capability(self) -> dict[str, Any] | None:
        """``capabilities.reasoning`` of ``/api/v1/models`` (None: the model does not reason)."""
        if not self.reasons:
            return None
        return {"allowed_options": list(self.allowed_options), "default": self.default_option}


NO_REASONING = ReasoningFormat("none")


def reasoning_format_for(template_source: str) -> ReasoningFormat:
    if "<|channel|>" in template_source and HARMONY_START in template_source:
        takes_effort = "reasoning_effort" in template_source
        return ReasoningFormat(
            "harmony",
            switchable=False,
            efforts=EFFORTS if takes_effort else (),
            default_effort="medium" if takes_effort else None,
            history_key="thinking" if "thinking" in template_source else None,
        )
    if "<think>" in template_source or "</think>" in template_source:
        return ReasoningFormat(
            "think", "<think>", "</think>",
            switchable="enable_thinking" in template_source,
            history_key="reasoning_content" if "reasoning_content" in template_source else None,
        )
    return NO_REASONING


# --- the prompt ---------------------------------------------------------------------------------


def reasoning_variables(fmt: ReasoningFormat, option: str | None, *, param: str = "reasoning",
                        strict: bool = False) -> dict[str, Any]:
    """The template variables for a reasoning option (None: the model's default).

    ``enable_thinking`` is always given where the template reads it: llama.cpp's QwQ and R1
    templates take a missing one as false. ``strict`` (``/api/v1/chat``): an option outside
    ``fmt.allowed_options`` is refused; otherwise (the OpenAI APIs) an effort on a model without
    efforts means "on", and an effort on a model that does not reason is ignored. Thinking off
    where the template cannot switch it off is refused either way: the model would reason anyway.
    """
    if option is None:
        return _variables(fmt, on=True, effort=fmt.default_effort)
    option = "off" if option == "none" else option
    if option not in OPTIONS:
        raise InvalidRequest(f"reasoning option '{option}' is not one of {', '.join(OPTIONS)}", param)
    if option == "off" and not (fmt.switchable or not fmt.reasons):
        raise InvalidRequest(f"this model cannot switch its reasoning off (it takes: "
                             f"{', '.join(fmt.allowed_options)})", param)
    if strict and option not in fmt.allowed_options and not (option == "on" and fmt.reasons) \
            and not (option == "off" and not fmt.reasons):
        allowed = ", ".join(fmt.allowed_options) or "off (it does not reason)"
        raise InvalidRequest(f"reasoning '{option}' is not supported by this model (it takes: {allowed})", param)
    if not fmt.reasons:
        return {}
    effort = option if option in fmt.efforts else fmt.default_effort
    return _variables(fmt, on=option != "off", effort=effort)


def _variables(fmt: ReasoningFormat, *, on: bool, effort: str | None) -> dict[str, Any]:
    variables: dict[str, Any] = {}
    if fmt.switchable:
        variables["enable_thinking"] = on
    if fmt.efforts and effort is not None:
        variables["reasoning_effort"] = effort
    return variables


def render_variables(fmt: ReasoningFormat, option: str | None = None,
                     chat_template_kwargs: Mapping[str, Any] | None = None, *,
                     param: str = "reasoning", strict: bool = False) -> dict[str, Any]:
    """Every extra template variable of a request: the reasoning defaults, overridden by the
    request's ``chat_template_kwargs`` (e.g. ``{"enable_thinking": false}``), overridden by its
    explicit reasoning option (which names what the client asked for in the API's own terms)."""
    defaults = reasoning_variables(fmt, None)
    explicit = reasoning_variables(fmt, option, param=param, strict=strict) if option is not None else {}
    return {**defaults, **checked_template_kwargs(chat_template_kwargs), **explicit}


def history_message(fmt: ReasoningFormat, message: dict[str, Any], reasoning: str | None) -> dict[str, Any]:
    """An earlier assistant message as the template takes it, with its reasoning where the
    template reads it (it decides itself which turns keep it); elsewhere the reasoning is dropped."""
    if message.get("role") != "assistant":
        return message
    if fmt.history_key is not None and message.get("content") is None:
        # Qwen3's and gpt-oss' templates treat the content as text (``.lstrip``, ``in``) even
        # beside tool calls; older templates (R1) test ``is not none``, so they keep their None
        message = {**message, "content": ""}
    if not reasoning or fmt.history_key is None:
        return message
    if fmt.name == "harmony" and message.get("tool_calls") and message.get("content"):
        return message  # gpt-oss' template takes the content as the call's reasoning, and refuses both
    return {**message, fmt.history_key: reasoning}


def budget_cut_text(fmt: ReasoningFormat, reasoning_so_far: str = "") -> str:
    """What studiolo appends to end the reasoning itself when its budget runs out, so that the
    model writes its answer next."""
    if fmt.name == "think":
        newline = "" if not reasoning_so_far or reasoning_so_far.endswith("\n") else "\n"
        return f"{newline}{fmt.close}\n\n"
    if fmt.name == "harmony":
        return f"{HARMONY_ENDS[0]}{HARMONY_START}assistant<|channel|>final{HARMONY_MESSAGE}"
    return ""


# --- the output ---------------------------------------------------------------------------------


def starting_phase(fmt: ReasoningFormat, prompt: str) -> str:
    """Where the output of ``prompt`` starts: inside the reasoning (the prompt opened it), in the
    answer (the prompt closed it: thinking off) or undecided (the output may open it)."""
    if fmt.name != "think":
        return ANSWER if not fmt.reasons else UNDECIDED
    tail = prompt.rstrip()
    if tail.endswith(fmt.open):
        return REASONING
    if tail.endswith(fmt.close):
        return ANSWER
    return UNDECIDED


def _open_harmony_header(prompt: str) -> str | None:
    """The header of the message a Harmony prompt left open (None: the output starts a header)."""
    if not prompt.endswith(HARMONY_MESSAGE):
        return None
    start = prompt.rfind(HARMONY_START)
    return prompt[start + len(HARMONY_START): -len(HARMONY_MESSAGE)]


def splitter_for(fmt: ReasoningFormat, prompt: str) -> ThinkSplitter | HarmonySplitter | PlainSplitter:
    if fmt.name == "think":
        return ThinkSplitter(fmt.open, fmt.close, starting_phase(fmt, prompt))
    if fmt.name == "harmony":
        return HarmonySplitter(_open_harmony_header(prompt))
    return PlainSplitter()


class ReplyParser:
    """The reasoning splitter in front of the tool-call parser: reasoning goes out as it is, the
    answer's text goes through the tool-call parser (when the request has tools), so calls after
    the reasoning parse as calls and tags in the answer are the answer's. Harmony's calls come
    from its splitter."""

    def __init__(self, splitter: ThinkSplitter | HarmonySplitter | PlainSplitter, tools: ToolCallParser | None = None,
                 *, inline: bool = False):
        """``inline``: the reasoning goes back into the answer's text as ``<think>…</think>``
        (the server setting that leaves reasoning in the content), still never parsed for calls."""
        self.splitter = splitter
        self.tools = tools
        self.inline = inline
        self._inline_open = False  # inline: a <think> was written and not yet closed

    @property
    def phase(self) -> str:
        return self.splitter.phase

    @property
    def answer_offset(self) -> int | None:
        """Where the answer starts in the output fed so far (None: not yet), so that a constraint
        on the answer can be given exactly the text after the reasoning, even when one token
        held the end of the reasoning and the start of the answer."""
        return self.splitter.answer_offset

    def feed(self, text: str) -> list[SplitEvent]:
        return self._inlined(self._through_tools(self.splitter.feed(text), finish=False), finish=False)

    def finish(self) -> list[SplitEvent]:
        return self._inlined(self._through_tools(self.splitter.finish(), finish=True), finish=True)

    def _inlined(self, events: list[SplitEvent], *, finish: bool) -> list[SplitEvent]:
        if not self.inline:
            return events
        out: list[SplitEvent] = []
        for event in events:
            if isinstance(event, Reasoning):
                out.append(Text(event.text if self._inline_open else INLINE_OPEN + event.text))
                self._inline_open = True
                continue
            if self._inline_open:
                out.append(Text(INLINE_CLOSE))
                self._inline_open = False
            out.append(event)
        if finish and self._inline_open:
            out.append(Text(INLINE_CLOSE))
            self._inline_open = False
        return merged_pieces(out)

    def _through_tools(self, events: list[SplitEvent], *, finish: bool) -> list[SplitEvent]:
        if self.tools is None:
            return events
        out: list[SplitEvent] = []
        for event in events:
            out.extend(self.tools.feed(event.text) if isinstance(event, Text) else [event])
        if finish:
            out.extend(self.tools.finish())
        return merged_pieces(out)


INLINE_OPEN, INLINE_CLOSE = "<think>", "</think>\n\n"  # reasoning left in the content, in every format


def reply_parser(fmt: ReasoningFormat, prompt: str, tools: ToolCallParser | None = None, *,
                 inline: bool = False) -> ReplyParser:
    return ReplyParser(splitter_for(fmt, prompt), None if fmt.name == "harmony" else tools, inline=inline)


__all__ = ["ANSWER", "EFFORTS", "NO_REASONING", "OPTIONS", "REASONING", "UNDECIDED", "Reasoning", "ReasoningFormat",
           "ReplyParser", "budget_cut_text", "history_message", "reasoning_format_for", "reasoning_variables",
           "render_variables", "reply_parser", "splitter_for", "starting_phase"]
