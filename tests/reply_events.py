"""What a reply parser's events add up to, for the reasoning and tool-call parser tests."""

from __future__ import annotations

from studiolo.chat.reasoning import Reasoning
from studiolo.chat.tool_parser import CallArguments, CallStart, Text


def summary(events) -> tuple[str, str, list[tuple[str, str]]]:
    """(reasoning, answer text, [(call name, arguments)]) of a parser's events, each call's pieces joined."""
    reasoning = "".join(e.text for e in events if isinstance(e, Reasoning))
    answer = "".join(e.text for e in events if isinstance(e, Text))
    calls: dict[int, list[str]] = {}
    for event in events:
        if isinstance(event, CallStart):
            calls[event.call] = [event.name, ""]
        elif isinstance(event, CallArguments):
            calls[event.call][1] += event.text
    return reasoning, answer, [(name, args) for name, args in calls.values()]
