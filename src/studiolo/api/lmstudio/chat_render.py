"""What LM Studio's stateful chat answers: the result body (``output`` items and ``stats``) and,
streamed, its named SSE events, each data object carrying its ``type``.

``chat.start``, ``model_load.start|progress|end`` (only when the request loads the model),
``prompt_processing.start|progress|end`` (progress after each chunk of prompt the engine takes in),
``message.start|delta|end``, ``tool_call.start|arguments|success`` (a call of an MCP tool, run by
the server), ``error`` and ``chat.end`` with the whole result.

A turn's ``output`` lists its messages and, for each call, a ``tool_call`` item (``tool``,
``arguments`` as an object, ``output``, ``provider_info``), in order. Calls are held to the tool's
schema by the grammar, so there are no ``invalid_tool_call`` items.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from studiolo.api.errors import APIError, from_domain
from studiolo.api.lmstudio.models import draft_stats
from studiolo.api.sse import named_event
from studiolo.service.generation import Generation
from studiolo.service.items import Item, assistant_message, message_text
from studiolo.service.mcp_turn import AgentTurn, ToolCallDone, ToolCallStarted, TurnEvent
from studiolo.service.types import Finished, PromptProgress, TextDelta

log = logging.getLogger(__name__)


@dataclass
class Reply:
    """The reply as it grows (the calls' items, then the message being written), and how its
    generation ended (Finished.reason)."""

    texts: list[str] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)  # earlier rounds' text, calls and results
    reason: str | None = None

    @property
    def status(self) -> str:
        # stored as /v1/responses stores a reply cut off by max_output_tokens (one store for both APIs)
        return "incomplete" if self.reason == "length" else "completed"

    @property
    def started(self) -> bool:
        return bool(self.texts or self.items)

    def output(self) -> list[Item]:
        return [*self.items, {**assistant_message("".join(self.texts)), "status": self.status}]

    def follow(self, event: TurnEvent) -> None:
        if isinstance(event, TextDelta):
            self.texts.append(event.text)
        elif isinstance(event, ToolCallDone):
            if self.texts:  # the text the model wrote before its calls
                self.items.append(assistant_message("".join(self.texts)))
                self.texts = []
            call, result = event.items
            self.items += [{**call, "provider_info": event.provider_info}, result]
        elif isinstance(event, Finished):
            self.reason = event.reason


def result_body(instance_id: str, output: list[Item], stats: dict[str, Any]) -> dict[str, Any]:
    return {"model_instance_id": instance_id, "output": output_items(output), "stats": stats}


def output_items(output: list[Item]) -> list[dict[str, Any]]:
    """Stored items as LM Studio's output: messages, and each call with its result as one tool_call."""
    results = {item["call_id"]: item.get("output") for item in output if item.get("type") == "function_call_output"}
    shown: list[dict[str, Any]] = []
    for item in output:
        kind = item.get("type", "message")
        if kind == "message":
            shown.append({"type": "message", "content": message_text(item)})
        elif kind == "function_call":
            shown.append({"type": "tool_call", "tool": item["name"], "arguments": json.loads(item["arguments"]),
                          "output": results.get(item["call_id"], ""), "provider_info": item.get("provider_info", {})})
    return shown


def stats(generation: Generation | None) -> dict[str, Any]:
    """LM Studio's stats; zeros for a turn that never started. A turn that drafted gets v0's draft
    statistics (LM Studio documents none for /api/v1/chat)."""
    if generation is None:
        return {"input_tokens": 0, "total_output_tokens": 0, "reasoning_output_tokens": 0,
                "tokens_per_second": 0.0, "time_to_first_token_seconds": 0.0}
    usage, timing = generation.usage, generation.timing
    generated = usage.completion_tokens
    body = {
        "input_tokens": usage.prompt_tokens,
        "total_output_tokens": generated,
        "reasoning_output_tokens": 0,
        "tokens_per_second": round(timing.decode_rate(generated), 2),
        # a generation that failed has no end: no negative time
        "time_to_first_token_seconds": round(max(timing.time_to_first_token, 0.0), 3),
    }
    if generation.load_seconds is not None:
        body["model_load_time_seconds"] = round(generation.load_seconds, 3)
    return {**body, **draft_stats(generation)}  # v0's fields: LM Studio documents none for v1


def chat_event(kind: str, **data: Any) -> str:
    return named_event(kind, {"type": kind, **data})


def error_event(exc: Exception) -> str:
    """LM Studio's v1 error; the stream goes on to chat.end."""
    error = from_domain(exc)
    if error is None:
        log.error("/api/v1/chat failed after its stream began", exc_info=exc)  # a bug: keep its trace
        error = APIError(500, str(exc) or type(exc).__name__, type="server_error")
    return chat_event("error", error=error.body_v1()["error"])


async def generation_events(turn: AgentTurn, reply: Reply) -> AsyncIterator[str]:
    """prompt_processing, message and tool_call events; the reply is kept in ``reply`` for chat.end."""
    yield chat_event("prompt_processing.start")
    processing, message_started = True, False
    async for event in turn.events():
        reply.follow(event)
        if isinstance(event, PromptProgress):
            if processing:
                yield chat_event("prompt_processing.progress", progress=round(event.fraction, 4))
            continue
        if processing and not isinstance(event, ToolCallDone):
            processing = False
            yield chat_event("prompt_processing.end")
        if isinstance(event, TextDelta):
            if not message_started:
                message_started = True
                yield chat_event("message.start")
            yield chat_event("message.delta", content=event.text)
        elif isinstance(event, Finished) or (isinstance(event, ToolCallStarted) and message_started):
            if not message_started:
                yield chat_event("message.start")
            message_started = False  # a message ends with the turn, or where a call begins
            yield chat_event("message.end")
        for rendered in _tool_call_events(event):
            yield rendered


def _tool_call_events(event: TurnEvent) -> list[str]:
    if isinstance(event, ToolCallStarted):
        return [chat_event("tool_call.start", tool=event.tool, provider_info=event.provider_info)]
    if isinstance(event, ToolCallDone):
        info = event.provider_info
        return [chat_event("tool_call.arguments", tool=event.tool, arguments=event.arguments, provider_info=info),
                chat_event("tool_call.success", tool=event.tool, arguments=event.arguments, output=event.output,
                           provider_info=info)]
    return []
