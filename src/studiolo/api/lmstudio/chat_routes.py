"""LM Studio's stateful chat, ``POST /api/v1/chat``: a string or items in, ``output`` items, ``stats``
and a ``response_id`` out; ``previous_response_id`` continues (or branches) a stored conversation.

Streamed, the events are LM Studio's named SSE events, each data object carrying its ``type``:
``chat.start``, ``model_load.start|progress|end`` (only when this request loads the model),
``prompt_processing.start|progress|end`` (progress after each chunk of prompt the engine takes in),
``message.start|delta|end``, ``error`` and ``chat.end`` with the whole result. As LM Studio's
streaming docs say, an ``error`` is followed by ``chat.end`` carrying whatever was generated (not
stored); what can be refused before any work (an embedding model, an unknown id, and, when the
model is loaded, a prompt too long for it) is a 4xx before the stream, as unstreamed.

Decisions where LM Studio's documentation is silent: ``system_prompt`` applies to its own turn
only (like OpenAI's ``instructions``); ``context_length`` is the context the model gets if this
request loads it; ``reasoning`` other than "off" is a 400 (neither default model reasons); MCP
``integrations`` are a 400 (not served).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field

from studiolo.api.errors import APIError, from_domain
from studiolo.api.routing import make_router
from studiolo.api.sse import ClientDisconnected, sse_response, until_disconnected
from studiolo.api.wire_types import Int
from studiolo.config import MIN_CONTEXT
from studiolo.domain.errors import InvalidRequest
from studiolo.domain.sampling import SamplingParams
from studiolo.service.conversations import ConversationRun, Conversations, Turn
from studiolo.service.embeddings import check_generation_model
from studiolo.service.generation import Generation
from studiolo.service.items import Item, assistant_message, message_text, user_message
from studiolo.service.types import Finished, GenerationOptions, PromptProgress, TextDelta

router = make_router(prefix="/api/v1")
log = logging.getLogger(__name__)


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class InputItem(_Body):
    type: Literal["message", "text", "image"]
    content: str | None = None
    data_url: str | None = None


class ChatBody(_Body):
    model: str = Field(min_length=1)
    input: str | list[InputItem]
    system_prompt: str | None = None
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: Int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    repeat_penalty: float | None = Field(None, gt=0, le=10)
    max_output_tokens: Int | None = Field(None, ge=1)
    reasoning: Literal["off", "low", "medium", "high", "on"] | None = None
    context_length: Int | None = Field(None, ge=MIN_CONTEXT)
    store: bool = True
    previous_response_id: str | None = None
    integrations: list[Any] | None = None
    ttl: float | None = Field(None, gt=0)

    def turn(self, report_progress: bool) -> Turn:
        if self.reasoning not in (None, "off"):
            raise InvalidRequest(f"reasoning '{self.reasoning}' is not supported by this model", "reasoning")
        if self.integrations:
            raise InvalidRequest("MCP integrations are not supported by this server", "integrations")
        if self.previous_response_id is not None and not self.previous_response_id.startswith("resp_"):
            raise InvalidRequest("'previous_response_id' must start with 'resp_'", "previous_response_id")
        sampling = SamplingParams.given(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                                        min_p=self.min_p, repeat_penalty=self.repeat_penalty)
        options = GenerationOptions(sampling=sampling, max_tokens=self.max_output_tokens,
                                    report_progress=report_progress)
        return Turn(self.model, self._items(), options, self.system_prompt or None, self.previous_response_id,
                    self.store, ttl=self.ttl, context_length=self.context_length)

    def _items(self) -> list[Item]:
        if isinstance(self.input, str):
            return [user_message(self.input)]
        items = []
        for index, item in enumerate(self.input):
            if item.type == "image":
                raise InvalidRequest("Model does not support images. Please use a model that does.", f"input[{index}]")
            if item.content is None:
                raise InvalidRequest("a text item needs its 'content'", f"input[{index}].content")
            items.append(user_message(item.content))
        if not items:
            raise InvalidRequest("'input' is empty", "input")
        return items


def _conversations(request: Request) -> Conversations:
    return request.app.state.conversations


@router.post("/chat")
async def chat(body: ChatBody, request: Request):
    conversations = _conversations(request)
    turn = body.turn(report_progress=body.stream)
    if not body.stream:
        try:
            run = await until_disconnected(request, conversations.start(turn))
        except ClientDisconnected:
            return None
        try:
            return await until_disconnected(request, _complete(conversations, run))
        except ClientDisconnected:
            return None
        finally:
            run.generation.cancel()
    manager = conversations.service.manager
    # the refusals that need no load are 4xx before the stream, as unstreamed: an HTTP 200 whose
    # stream says "error" is for what goes wrong once work is under way
    check_generation_model(manager, turn.model)
    if manager.needs_load(turn.model):  # the stream shows the load, so it starts first
        await conversations.check_ready(turn)  # unknown previous id, storage fault
        return sse_response(_loading_events(conversations, turn))
    try:  # the model is loaded: this refuses at once (context, ids)
        run = await until_disconnected(request, conversations.start(turn))
    except ClientDisconnected:
        return None
    return sse_response(_events(conversations, run), on_close=run.generation.cancel)


@dataclass
class _Reply:
    """The message as it grows, and how its generation ended (Finished.reason)."""

    texts: list[str] = field(default_factory=list)
    reason: str | None = None

    @property
    def status(self) -> str:
        # stored as /v1/responses stores a reply cut off by max_output_tokens (one store for both APIs)
        return "incomplete" if self.reason == "length" else "completed"

    def output(self) -> list[Item]:
        return [{**assistant_message("".join(self.texts)), "status": self.status}]


async def _complete(conversations: Conversations, run: ConversationRun) -> dict[str, Any]:
    reply = _Reply()
    async for event in run.generation.events():  # a failure is the app's error response (errors.from_domain)
        _follow(reply, event)
    return await _result(conversations, run, reply)


def _follow(reply: _Reply, event: Any) -> None:
    if isinstance(event, TextDelta):
        reply.texts.append(event.text)
    elif isinstance(event, Finished):
        reply.reason = event.reason


async def _result(conversations: Conversations, run: ConversationRun, reply: _Reply) -> dict[str, Any]:
    output = reply.output()
    stored = await conversations.save(run, output, reply.status)
    result = _result_body(run.generation.instance.id, output, _stats(run.generation))
    if stored is not None:
        result["response_id"] = stored.id
    elif run.storage_error is not None:  # the answer stands, unstored (docs/API.md, "Storage faults")
        result["storage_error"] = from_domain(run.storage_error).body_v1()["error"]
    return result


def _result_body(instance_id: str, output: list[Item], stats: dict[str, Any]) -> dict[str, Any]:
    return {"model_instance_id": instance_id,
            "output": [{"type": "message", "content": message_text(item)} for item in output], "stats": stats}


def _stats(generation: Generation | None) -> dict[str, Any]:
    """LM Studio's stats; zeros for a turn that never started."""
    if generation is None:
        return {"input_tokens": 0, "total_output_tokens": 0, "reasoning_output_tokens": 0,
                "tokens_per_second": 0.0, "time_to_first_token_seconds": 0.0}
    usage, timing = generation.usage, generation.timing
    generated = usage.completion_tokens
    stats = {
        "input_tokens": usage.prompt_tokens,
        "total_output_tokens": generated,
        "reasoning_output_tokens": 0,
        "tokens_per_second": round(timing.decode_rate(generated), 2),
        # a generation that failed has no end: no negative time
        "time_to_first_token_seconds": round(max(timing.time_to_first_token, 0.0), 3),
    }
    if generation.load_seconds is not None:
        stats["model_load_time_seconds"] = round(generation.load_seconds, 3)
    return stats


def _event(kind: str, **data: Any) -> str:
    payload = json.dumps({"type": kind, **data}, ensure_ascii=False, separators=(",", ":"))
    return f"event: {kind}\ndata: {payload}\n\n"


def _error_event(exc: Exception) -> str:
    """LM Studio's v1 error; the stream goes on to chat.end."""
    error = from_domain(exc)
    if error is None:
        log.error("/api/v1/chat failed after its stream began", exc_info=exc)  # a bug: keep its trace
        error = APIError(500, str(exc) or type(exc).__name__, type="server_error")
    return _event("error", error=error.body_v1()["error"])


async def _loading_events(conversations: Conversations, turn: Turn) -> AsyncIterator[str]:
    """The stream of a turn whose model this request loads: the load's events, then the turn's."""
    instance_id = conversations.service.manager.instance_id_for(turn.model)
    yield _event("chat.start", model_instance_id=instance_id)
    yield _event("model_load.start", model_instance_id=instance_id)
    started = time.perf_counter()
    try:
        run = await conversations.start(turn)
    except Exception as exc:  # noqa: BLE001 - the stream has begun: every failure is its error event
        yield _error_event(exc)
        yield _event("chat.end", result=_result_body(instance_id, [], _stats(None)))
        return
    generation = run.generation
    try:
        yield _event("model_load.progress", model_instance_id=generation.instance.id, progress=1.0)
        seconds = generation.load_seconds if generation.load_seconds is not None else time.perf_counter() - started
        yield _event("model_load.end", model_instance_id=generation.instance.id, load_time_seconds=round(seconds, 3))
        async for event in _turn_events(conversations, run):
            yield event
    finally:
        generation.cancel()


async def _events(conversations: Conversations, run: ConversationRun) -> AsyncIterator[str]:
    """The stream of a turn already started on a loaded model."""
    yield _event("chat.start", model_instance_id=run.generation.instance.id)
    try:
        async for event in _turn_events(conversations, run):
            yield event
    finally:
        run.generation.cancel()


async def _turn_events(conversations: Conversations, run: ConversationRun) -> AsyncIterator[str]:
    """Generation events, then chat.end; a failure is an error event, and chat.end still follows with
    whatever was generated (LM Studio's streaming docs), unstored."""
    reply = _Reply()
    try:
        async for event in _generation_events(run.generation, reply):
            yield event
        result = await _result(conversations, run, reply)
    except Exception as exc:  # noqa: BLE001 - the stream has begun: every failure is its error event
        yield _error_event(exc)
        output = reply.output() if reply.texts else []
        result = _result_body(run.generation.instance.id, output, _stats(run.generation))
    yield _event("chat.end", result=result)


async def _generation_events(generation: Generation, reply: _Reply) -> AsyncIterator[str]:
    """prompt_processing and message events; the message is kept in ``reply`` for chat.end."""
    yield _event("prompt_processing.start")
    processing, message_started = True, False
    async for event in generation.events():
        _follow(reply, event)
        if isinstance(event, PromptProgress) and processing:
            yield _event("prompt_processing.progress", progress=round(event.fraction, 4))
        elif isinstance(event, TextDelta):
            if processing:
                processing = False
                yield _event("prompt_processing.end")
            if not message_started:
                message_started = True
                yield _event("message.start")
            yield _event("message.delta", content=event.text)
        elif isinstance(event, Finished):
            if processing:
                yield _event("prompt_processing.end")
            if not message_started:
                yield _event("message.start")
            yield _event("message.end")
