"""Tool calls in a choice's output: the parser's findings (chat/tool_parser.py) as generation events."""

from __future__ import annotations

import secrets
import string
from collections.abc import Callable, Sequence
from dataclasses import replace

from studiolo.chat.reasoning import Reasoning, ReplyParser
from studiolo.chat.reasoning_parsers import SplitEvent
from studiolo.chat.tool_parser import CallArguments, CallStart, ToolCallParser
from studiolo.domain.chat import ChatMessage
from studiolo.domain.errors import InvalidRequest
from studiolo.engine.constraints import compiler_for
from studiolo.engine.llama import LlamaModel
from studiolo.service.json_bounds import DEFAULT_MAX_DEPTH, JSONTextError, loads_bounded
from studiolo.service.types import ReasoningDelta, TextDelta, TokenInfo, ToolCallDelta

OutputDelta = TextDelta | ReasoningDelta | ToolCallDelta


class CallReader:
    """One choice's output split into content and tool calls (chat/tool_parser.py), and reasoning
    when a reasoning splitter is in front (chat/reasoning.py ReplyParser), as events; the output
    follows the tool grammar, so a call cut short is never content."""

    def __init__(self, index: int, parser: ToolCallParser | ReplyParser):
        self.index = index
        self._parser = parser
        self.count = 0  # calls started

    def feed(self, text: str, tokens: list[TokenInfo]) -> list[OutputDelta]:
        return self._events(self._parser.feed(text) if text else [], tokens)

    def finish(self) -> list[OutputDelta]:
        return self._events(self._parser.finish(), [])

    def _events(self, parsed: Sequence[SplitEvent], tokens: list[TokenInfo]) -> list[OutputDelta]:
        """Logprobs ride with the content the tokens were fed with (a call's and the reasoning's
        tokens have none)."""
        events: list[OutputDelta] = []
        for item in parsed:
            if isinstance(item, CallStart):
                self.count += 1
                events.append(ToolCallDelta(self.index, item.call, new_call_id(), item.name))
            elif isinstance(item, CallArguments):
                events.append(ToolCallDelta(self.index, item.call, arguments=item.text))
            elif isinstance(item, Reasoning):
                events.append(ReasoningDelta(self.index, item.text))
            else:
                events.append(TextDelta(self.index, item.text, tuple(tokens)))
                tokens = []
        return events


def marker_tokens(model: LlamaModel, markers: tuple[str, ...]) -> dict[str, int]:
    """The format's markers (ToolFormat.markers) that are one special token of ``model`` (Qwen2.5's
    ``<tool_call>`` and ``</tool_call>``, gpt-oss' ``<|channel|>`` and the like), with that token:
    the tool grammar names the token, which the model writes, not the text (whose tokenizing would
    give the token back: llama.cpp always parses user-defined tokens). Builds the model's
    llguidance tokenizer if need be: call off the event loop."""
    tokenizer = compiler_for(model).tokenizer
    found = {}
    for marker in markers:
        tokens = tokenizer.tokenize_str(marker) if marker else []
        if len(tokens) == 1 and tokenizer.is_special_token(tokens[0]):
            found[marker] = tokens[0]
    return found


_CALL_ID_ALPHABET = string.ascii_letters + string.digits


def new_call_id() -> str:
    """Nine letters and digits: what Mistral's templates demand of ids sent back to them."""
    return "".join(secrets.choice(_CALL_ID_ALPHABET) for _ in range(9))


def check_arguments(text: str, param: str, max_depth: int = DEFAULT_MAX_DEPTH) -> None:
    """A call sent back in a conversation must carry its arguments as a JSON object (as text), since
    templates write calls back as objects; anything else is a 400 naming ``param`` (chat completions'
    and Responses' fields both come here)."""
    try:
        value = loads_bounded(text, max_depth)
    except JSONTextError as exc:
        raise InvalidRequest(f"'{param}' must be a JSON object (as text); it {exc}", param) from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"'{param}' must be a JSON object (as text): a tool call's arguments", param)


def check_tool_results(
    messages: list[ChatMessage], param: Callable[[int], str] = lambda index: f"messages[{index}].tool_call_id"
) -> list[ChatMessage]:
    """Every tool message answers a call made earlier; it gets that call's function name. ``param``
    names the field of the message at an index, for the 400."""
    calls: dict[str, str] = {}
    checked = []
    for index, message in enumerate(messages):
        calls.update((call.id, call.name) for call in message.tool_calls)
        if message.role == "tool":
            if not message.tool_call_id:
                raise InvalidRequest("a tool message needs the 'tool_call_id' of the call it answers",
                                     param(index))
            if message.tool_call_id not in calls:
                raise InvalidRequest(f"no earlier assistant message made a tool call with id '{message.tool_call_id}'",
                                     param(index))
            if message.name is None:
                message = replace(message, tool_calls=(), name=calls[message.tool_call_id])
        checked.append(message)
    return checked
