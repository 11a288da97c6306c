"""What LM Studio's stateful chat answers: the result body (``output`` items and ``stats``) and,
streamed, its named SSE events, each data object carrying its ``type``.

``chat.start``, ``model_load.start|progress|end`` (only when the request loads the model),
``prompt_processing.start|progress|end`` (progress after each chunk of prompt the engine takes in),
``reasoning.start|delta|end`` (a reasoning model's reasoning, before the message it led to),
``message.start|delta|end``, ``tool_call.start|arguments|success|failure`` (a call of an MCP tool,
run by the server), ``error`` and ``chat.end`` with the whole result.

A turn's ``output`` lists its reasoning (``{"type": "reasoning", "content"}``), its messages and,
for each call, a ``tool_call`` item (``tool``, ``arguments`` as an object, ``output``,
``provider_info``), in order. Calls are held to the tool's schema by the grammar, so a call is
never invalid; one whose run failed (service/mcp.py ``CallFailure``) is an ``invalid_tool_call``
item, ``reason`` and ``metadata`` as in its ``tool_call.failure`` event.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from studiolo.api.errors import APIError, from_domain
from studiolo.api.lmstudio.models import STOP_REASONS, draft_stats
from studiolo.api.sse import named_event
from studiolo.service.generation import Generation
from studiolo.service.items import Item, assistant_message, message_text, reasoning_item, reasoning_text
from studiolo.service.mcp_turn import AgentTurn, ToolCallDone, ToolCallStarted, TurnEvent
from studiolo.service.types import Finished, PromptProgress, ReasoningDelta, TextDelta

log = logging.getLogger(__name__)


@dataclass
class Reply:
    """The reply as it grows (the calls' items, then the reasoning and message being written), and how
    its generation ended (Finished.reason)."""

    texts: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)  # not yet followed by text or a call
    items: list[Item] = field(default_factory=list)  # earlier rounds' reasoning, text, calls and results
    reason: str | None = None

    @property
    def status(self) -> str:
        # stored as /v1/responses stores a reply cut off by max_output_tokens (one store for both APIs)
        return "incomplete" if self.reason == "length" else "completed"

    @property
    def started(self) -> bool:
        return bool(self.texts or self.reasoning or self.items)

    def output(self) -> list[Item]:
        reasoning = [reasoning_item("".join(self.reasoning), self.status)] if self.reasoning else []
        return [*self.items, *reasoning, {**assistant_message("".join(self.texts)), "status": self.status}]

    def follow(self, event: TurnEvent) -> None:
        if isinstance(event, ReasoningDelta):
            self._text_done()  # answer text before more reasoning (Harmony may write both in turn)
            self.reasoning.append(event.text)
        elif isinstance(event, TextDelta):
            self._reasoning_done()
            self.texts.append(event.text)
        elif isinstance(event, ToolCallDone):
            self._reasoning_done()
            self._text_done()  # the text the model wrote before its calls
            call, result = event.items
            call = {**call, "provider_info": event.provider_info}
            if event.failure is not None:  # stored with the call: the output shows it (output_items)
                call["failure"] = {"type": event.failure.kind, "reason": event.failure.reason}
            self.items += [call, result]
        elif isinstance(event, Finished):
            self.reason = event.reason

    def _reasoning_done(self) -> None:
        if self.reasoning:
            self.items.append(reasoning_item("".join(self.reasoning)))
            self.reasoning = []

    def _text_done(self) -> None:
        if self.texts:
            self.items.append(assistant_message("".join(self.texts)))
            self.texts = []


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
        elif kind == "reasoning":
            shown.append({"type": "reasoning", "content": reasoning_text(item)})
        elif kind == "function_call" and "failure" in item:
            failure = item["failure"]
            shown.append({"type": "invalid_tool_call", "reason": failure["reason"], "metadata": _failure_metadata(
                failure["type"], item["name"], json.loads(item["arguments"]), item.get("provider_info", {}))})
        elif kind == "function_call":
            shown.append({"type": "tool_call", "tool": item["name"], "arguments": json.loads(item["arguments"]),
                          "output": results.get(item["call_id"], ""), "provider_info": item.get("provider_info", {})})
    return shown


def _failure_metadata(kind: str, tool: str, arguments: dict[str, Any], provider_info: dict[str, str]) -> dict[str, Any]:
    return {"type": kind, "tool_name": tool, "arguments": arguments, "provider_info": provider_info}


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
        "reasoning_output_tokens": usage.reasoning_tokens,
        "tokens_per_second": round(timing.decode_rate(generated), 2),
        # a generation that failed has no end: no negative time
        "time_to_first_token_seconds": round(max(timing.time_to_first_token, 0.0), 3),
        # studiolo's: why the last round ended, in v0's words (LM Studio shows it; v1 has no field)
        "stop_reason": STOP_REASONS.get(generation.causes.get(0, "eos"), "eosFound"),
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
    """prompt_processing, reasoning, message and tool_call events; the reply is kept in ``reply`` for
    chat.end."""
    yield chat_event("prompt_processing.start")
    processing, parts = True, _OpenPart()
    async for event in turn.events():
        reply.follow(event)
        if isinstance(event, PromptProgress):
            if processing:
                yield chat_event("prompt_processing.progress", progress=round(event.fraction, 4))
            continue
        if processing and not isinstance(event, ToolCallDone):
            processing = False
            yield chat_event("prompt_processing.end")
        for rendered in parts.follow(event) + _tool_call_events(event):
            yield rendered


class _OpenPart:
    """Which part of the reply is being written, "reasoning" or "message": each has its start and
    end events around its deltas. Every round that does not call ends with a message, if empty."""

    def __init__(self) -> None:
        self.kind: str | None = None

    def follow(self, event: TurnEvent) -> list[str]:
        if isinstance(event, ReasoningDelta):
            return [*self._to("reasoning"), chat_event("reasoning.delta", content=event.text)]
        if isinstance(event, TextDelta):
            return [*self._to("message"), chat_event("message.delta", content=event.text)]
        if isinstance(event, Finished):
            return [*self._to("message"), *self._to(None)]
        if isinstance(event, ToolCallStarted):  # the part before a call ends where it begins
            return self._to(None)
        return []

    def _to(self, kind: str | None) -> list[str]:
        """The events that end the open part and start ``kind`` (None: none)."""
        if kind == self.kind:
            return []
        events = [chat_event(f"{self.kind}.end")] if self.kind is not None else []
        if kind is not None:
            events.append(chat_event(f"{kind}.start"))
        self.kind = kind
        return events


def _tool_call_events(event: TurnEvent) -> list[str]:
    if isinstance(event, ToolCallStarted):
        return [chat_event("tool_call.start", tool=event.tool, provider_info=event.provider_info)]
    if isinstance(event, ToolCallDone):
        info = event.provider_info
        arguments = chat_event("tool_call.arguments", tool=event.tool, arguments=event.arguments, provider_info=info)
        if event.failure is not None:
            metadata = _failure_metadata(event.failure.kind, event.tool, event.arguments, info)
            return [arguments, chat_event("tool_call.failure", reason=event.failure.reason, metadata=metadata)]
        return [arguments, chat_event("tool_call.success", tool=event.tool, arguments=event.arguments,
                                      output=event.output, provider_info=info)]
    return []
