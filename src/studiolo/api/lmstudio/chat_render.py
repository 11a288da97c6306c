"""What LM Studio's stateful chat answers: the result body (``output`` items and ``stats``) and,
streamed, its named SSE events, each data object carrying its ``type``.

``chat.start``, ``model_load.start|progress|end`` (only when the request loads the model),
``prompt_processing.start|progress|end`` (progress after each chunk of prompt the engine takes in),
``message.start|delta|end``, ``error`` and ``chat.end`` with the whole result.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from studiolo.api.errors import APIError, from_domain
from studiolo.api.sse import named_event
from studiolo.service.generation import Generation
from studiolo.service.items import Item, assistant_message, message_text
from studiolo.service.types import Finished, GenerationEvent, PromptProgress, TextDelta

log = logging.getLogger(__name__)


@dataclass
class Reply:
    """The message as it grows, and how its generation ended (Finished.reason)."""

    texts: list[str] = field(default_factory=list)
    reason: str | None = None

    @property
    def status(self) -> str:
        # stored as /v1/responses stores a reply cut off by max_output_tokens (one store for both APIs)
        return "incomplete" if self.reason == "length" else "completed"

    def output(self) -> list[Item]:
        return [{**assistant_message("".join(self.texts)), "status": self.status}]

    def follow(self, event: GenerationEvent) -> None:
        if isinstance(event, TextDelta):
            self.texts.append(event.text)
        elif isinstance(event, Finished):
            self.reason = event.reason


def result_body(instance_id: str, output: list[Item], stats: dict[str, Any]) -> dict[str, Any]:
    return {"model_instance_id": instance_id,
            "output": [{"type": "message", "content": message_text(item)} for item in output], "stats": stats}


def stats(generation: Generation | None) -> dict[str, Any]:
    """LM Studio's stats; zeros for a turn that never started."""
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
    return body


def chat_event(kind: str, **data: Any) -> str:
    return named_event(kind, {"type": kind, **data})


def error_event(exc: Exception) -> str:
    """LM Studio's v1 error; the stream goes on to chat.end."""
    error = from_domain(exc)
    if error is None:
        log.error("/api/v1/chat failed after its stream began", exc_info=exc)  # a bug: keep its trace
        error = APIError(500, str(exc) or type(exc).__name__, type="server_error")
    return chat_event("error", error=error.body_v1()["error"])


async def generation_events(generation: Generation, reply: Reply) -> AsyncIterator[str]:
    """prompt_processing and message events; the message is kept in ``reply`` for chat.end."""
    yield chat_event("prompt_processing.start")
    processing, message_started = True, False
    async for event in generation.events():
        reply.follow(event)
        if isinstance(event, PromptProgress) and processing:
            yield chat_event("prompt_processing.progress", progress=round(event.fraction, 4))
        elif isinstance(event, TextDelta):
            if processing:
                processing = False
                yield chat_event("prompt_processing.end")
            if not message_started:
                message_started = True
                yield chat_event("message.start")
            yield chat_event("message.delta", content=event.text)
        elif isinstance(event, Finished):
            if processing:
                yield chat_event("prompt_processing.end")
            if not message_started:
                yield chat_event("message.start")
            yield chat_event("message.end")
