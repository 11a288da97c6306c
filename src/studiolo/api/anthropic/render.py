"""Response bodies of Anthropic's Messages API: the ``message`` object, its content blocks, and the
stream's named events, field for field as Anthropic's SDK types them.

``ContentBlocks`` turns a generation's events into content blocks and the events that build them
(``content_block_start``, ``content_block_delta``, ``content_block_stop``); streamed and whole
messages both go through it, so both end with the same blocks. A reasoning model's reasoning is a
``thinking`` block (its ``signature`` empty: studiolo signs nothing, and reads none back), text a
``text`` block, each call a ``tool_use`` block whose input streams as ``input_json_delta`` pieces.
"""

from __future__ import annotations

import json
from typing import Any

from studiolo.api.errors import APIError
from studiolo.api.sse import named_event
from studiolo.service.generation import Generation
from studiolo.service.types import Finished, GenerationEvent, ReasoningDelta, TextDelta, ToolCallDelta, Usage

# Finished.cause -> Anthropic's stop_reason (a finish with calls is "tool_use", whatever its cause)
_STOP_REASONS = {"stop_string": "stop_sequence", "max_tokens": "max_tokens",
                 "context_length": "model_context_window_exceeded"}


def message_id(generation: Generation) -> str:
    return "msg_" + generation.id.split("-", 1)[-1]


def stop_reason(finished: Finished) -> str:
    if finished.reason == "tool_calls":
        return "tool_use"
    return _STOP_REASONS.get(finished.cause, "end_turn")


def usage_body(usage: Usage) -> dict[str, Any]:
    """Anthropic's usage: ``input_tokens`` are the prompt tokens computed, ``cache_read_input_tokens``
    those taken from the prefix cache (their sum is the prompt, what count_tokens says); nothing is
    written to a cache on request, so ``cache_creation_input_tokens`` is 0."""
    return {
        "input_tokens": usage.prompt_tokens - usage.cached_tokens,
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": usage.cached_tokens,
        "output_tokens_details": {"thinking_tokens": usage.reasoning_tokens},
    }


def message_object(generation: Generation, content: list[dict[str, Any]], finished: Finished | None,
                   usage: dict[str, Any]) -> dict[str, Any]:
    """The message; ``finished`` None: its start, before any output (streamed)."""
    return {
        "id": message_id(generation),
        "type": "message",
        "role": "assistant",
        "model": generation.model,
        "content": content,
        "stop_reason": stop_reason(finished) if finished else None,
        "stop_sequence": finished.stop_string if finished else None,
        "usage": usage,
    }


def start_usage(generation: Generation) -> dict[str, Any]:
    """Usage as message_start tells it: the prompt is known, not yet what the cache held of it."""
    return {"input_tokens": generation.prompt_tokens, "output_tokens": 0, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0}


def error_body(error: APIError) -> dict[str, Any]:
    return error.body_anthropic()


class ContentBlocks:
    """A generation's events as content blocks, and as the stream events that build them."""

    def __init__(self) -> None:
        self.content: list[dict[str, Any]] = []
        self._arguments: list[str] = []  # per block: a tool_use block's input as text so far
        self._open: str | None = None  # the type of the block being written
        self.finished: Finished | None = None

    def feed(self, event: GenerationEvent) -> list[tuple[str, dict[str, Any]]]:
        """The (event name, payload) pairs ``event`` makes."""
        if isinstance(event, ReasoningDelta):
            return self._piece("thinking", "thinking", event.text)
        if isinstance(event, TextDelta):
            return self._piece("text", "text", event.text)
        if isinstance(event, ToolCallDelta):
            return self._call(event)
        if isinstance(event, Finished):
            self.finished = event
            return self._close()
        return []  # prompt progress: Anthropic has no event for it

    def _piece(self, kind: str, key: str, text: str) -> list[tuple[str, dict[str, Any]]]:
        if not text:
            return []
        events = []
        if self._open != kind:
            events = self._close()
            block: dict[str, Any] = {"type": kind, key: ""}
            if kind == "thinking":
                block["signature"] = ""
            events.append(self._start(kind, block))
        self.content[-1][key] += text
        delta = {"type": f"{kind}_delta", key: text}
        return [*events, ("content_block_delta", {"type": "content_block_delta", "index": self._index, "delta": delta})]

    def _call(self, event: ToolCallDelta) -> list[tuple[str, dict[str, Any]]]:
        events = []
        if event.name is not None:
            events = self._close()
            events.append(self._start("tool_use", {"type": "tool_use", "id": event.id, "name": event.name,
                                                   "input": {}}))
        if event.arguments:
            self._arguments[-1] += event.arguments
            delta = {"type": "input_json_delta", "partial_json": event.arguments}
            events.append(("content_block_delta", {"type": "content_block_delta", "index": self._index,
                                                   "delta": delta}))
        return events

    @property
    def _index(self) -> int:
        return len(self.content) - 1

    def _start(self, kind: str, block: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        self._open = kind
        self.content.append(block)
        self._arguments.append("")
        started = {**block, "input": {}} if kind == "tool_use" else dict(block)
        return "content_block_start", {"type": "content_block_start", "index": self._index, "content_block": started}

    def _close(self) -> list[tuple[str, dict[str, Any]]]:
        if self._open is None:
            return []
        events = []
        if self._open == "thinking":  # Anthropic's signature comes just before the block's stop
            delta = {"type": "signature_delta", "signature": ""}
            events.append(("content_block_delta", {"type": "content_block_delta", "index": self._index,
                                                   "delta": delta}))
        elif self._open == "tool_use":
            self.content[-1]["input"] = _input_object(self._arguments[-1])
        self._open = None
        return [*events, ("content_block_stop", {"type": "content_block_stop", "index": self._index})]


def _input_object(arguments: str) -> dict[str, Any]:
    """A call's input as an object; a call cut short (max_tokens) has no whole object: {}."""
    try:
        value = json.loads(arguments) if arguments else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def sse(name: str, payload: dict[str, Any]) -> str:
    return named_event(name, payload)
