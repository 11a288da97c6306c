"""Tool calls in a choice's output: the parser's findings (chat/tool_parser.py) as generation events."""

from __future__ import annotations

import secrets
import string

from studiolo.chat.tool_parser import CallArguments, CallStart, CallSyntax, ParsedEvent, ToolCallParser
from studiolo.service.types import TextDelta, TokenInfo, ToolCallDelta


class CallReader:
    """One choice's output split into content and tool calls (chat/tool_parser.py), as events."""

    def __init__(self, index: int, syntax: CallSyntax):
        self.index = index
        self._parser = ToolCallParser(syntax)

    @property
    def count(self) -> int:
        return self._parser.calls

    def feed(self, text: str, tokens: list[TokenInfo]) -> list[TextDelta | ToolCallDelta]:
        return self._events(self._parser.feed(text) if text else [], tokens)

    def finish(self) -> list[TextDelta | ToolCallDelta]:
        return self._events(self._parser.finish(), [])

    def _events(self, parsed: list[ParsedEvent], tokens: list[TokenInfo]) -> list[TextDelta | ToolCallDelta]:
        """Logprobs ride with the content the tokens were fed with (a call's tokens have none)."""
        events: list[TextDelta | ToolCallDelta] = []
        for item in parsed:
            if isinstance(item, CallStart):
                events.append(ToolCallDelta(self.index, item.call, new_call_id(), item.name))
            elif isinstance(item, CallArguments):
                events.append(ToolCallDelta(self.index, item.call, arguments=item.text))
            else:
                events.append(TextDelta(self.index, item.text, tuple(tokens)))
                tokens = []
        return events


_CALL_ID_ALPHABET = string.ascii_letters + string.digits


def new_call_id() -> str:
    """Nine letters and digits: what Mistral's templates demand of ids sent back to them."""
    return "".join(secrets.choice(_CALL_ID_ALPHABET) for _ in range(9))
