"""LM Studio's stateful chat, ``POST /api/v1/chat``: a string or items in, ``output`` items, ``stats``
and a ``response_id`` out; ``previous_response_id`` continues (or branches) a stored conversation.

Streamed, the events are LM Studio's named SSE events, each data object carrying its ``type``:
``chat.start``, ``model_load.start|progress|end`` (only when this request loads the model),
``prompt_processing.start|progress|end`` (progress after each chunk of prompt the engine takes in),
``message.start|delta|end``, ``error`` and ``chat.end`` with the whole result.

Decisions where LM Studio's documentation is silent: ``system_prompt`` applies to its own turn
only (like OpenAI's ``instructions``); ``context_length`` is the context the model gets if this
request loads it; ``reasoning`` other than "off" is a 400 (neither default model reasons); MCP
``integrations`` are a 400 (not served).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from studiolo.api.errors import APIError, from_domain
from studiolo.api.streaming import ClientDisconnected, sse_response, until_disconnected
from studiolo.config import MIN_CONTEXT
from studiolo.engine.sampling import SamplingParams
from studiolo.service.conversations import ConversationRun, Conversations, Turn
from studiolo.service.generation import Generation, GenerationFailed
from studiolo.service.items import Item, assistant_message, message_text, user_message
from studiolo.service.types import Finished, GenerationOptions, InvalidRequest, PromptProgress, TextDelta

router = APIRouter(prefix="/api/v1")


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
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    repeat_penalty: float | None = Field(None, gt=0, le=10)
    max_output_tokens: int | None = Field(None, ge=1)
    reasoning: Literal["off", "low", "medium", "high", "on"] | None = None
    context_length: int | None = Field(None, ge=MIN_CONTEXT)
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
        run = await conversations.start(turn)
        try:
            return await until_disconnected(request, _complete(conversations, run))
        except ClientDisconnected:
            return None
        finally:
            run.generation.cancel()
    if turn.previous_response_id is not None:  # an unknown id is a 404 before the stream starts
        await conversations.check_exists(turn.previous_response_id)
    loads = conversations.service.manager.needs_load(turn.model)
    return sse_response(_events(conversations, turn, loads))


async def _complete(conversations: Conversations, run: ConversationRun) -> dict[str, Any]:
    text = ""
    try:
        async for event in run.generation.events():
            if isinstance(event, TextDelta):
                text += event.text
    except GenerationFailed as exc:
        raise APIError(500, str(exc), type="server_error", code="generation_failed") from exc
    return await _result(conversations, run, text)


async def _result(conversations: Conversations, run: ConversationRun, text: str) -> dict[str, Any]:
    output = [assistant_message(text)]
    stored = await conversations.save(run, output)
    result: dict[str, Any] = {
        "model_instance_id": run.generation.instance.id,
        "output": [{"type": "message", "content": message_text(item)} for item in output],
        "stats": _stats(run.generation),
    }
    if stored is not None:
        result["response_id"] = stored.id
    return result


def _stats(generation: Generation) -> dict[str, Any]:
    usage, timing = generation.usage, generation.timing
    generated = usage.completion_tokens
    stats = {
        "input_tokens": usage.prompt_tokens,
        "total_output_tokens": generated,
        "reasoning_output_tokens": 0,
        "tokens_per_second": round(timing.decode_rate(generated), 2),
        "time_to_first_token_seconds": round(timing.time_to_first_token, 3),
    }
    if generation.load_seconds is not None:
        stats["model_load_time_seconds"] = round(generation.load_seconds, 3)
    return stats


def _event(kind: str, **data: Any) -> str:
    payload = json.dumps({"type": kind, **data}, ensure_ascii=False, separators=(",", ":"))
    return f"event: {kind}\ndata: {payload}\n\n"


async def _events(conversations: Conversations, turn: Turn, loads: bool) -> AsyncIterator[str]:
    manager = conversations.service.manager
    yield _event("chat.start", model_instance_id=manager.instance_id_for(turn.model))
    if loads:
        yield _event("model_load.start", model_instance_id=manager.instance_id_for(turn.model))
    started = time.perf_counter()
    try:
        run = await conversations.start(turn)
    except Exception as exc:  # noqa: BLE001 - every failure becomes the stream's error event
        error = from_domain(exc) or APIError(500, str(exc), type="server_error")
        yield _event("error", error=error.body_v1()["error"])
        return
    generation = run.generation
    try:
        if loads:
            yield _event("model_load.progress", model_instance_id=generation.instance.id, progress=1.0)
            seconds = generation.load_seconds if generation.load_seconds is not None else time.perf_counter() - started
            yield _event("model_load.end", model_instance_id=generation.instance.id,
                         load_time_seconds=round(seconds, 3))
        texts: list[str] = []
        async for event in _generation_events(generation, texts):
            yield event
        yield _event("chat.end", result=await _result(conversations, run, "".join(texts)))
    except GenerationFailed as exc:
        yield _event("error", error={"type": "internal_error", "message": str(exc), "code": "generation_failed"})
    finally:
        generation.cancel()


async def _generation_events(generation: Generation, texts: list[str]) -> AsyncIterator[str]:
    """prompt_processing and message events; the message's text is kept in ``texts`` for chat.end."""
    yield _event("prompt_processing.start")
    processing, message_started = True, False
    async for event in generation.events():
        if isinstance(event, PromptProgress) and processing:
            yield _event("prompt_processing.progress", progress=round(event.fraction, 4))
        elif isinstance(event, TextDelta):
            if processing:
                processing = False
                yield _event("prompt_processing.end")
            if not message_started:
                message_started = True
                yield _event("message.start")
            texts.append(event.text)
            yield _event("message.delta", content=event.text)
        elif isinstance(event, Finished):
            if processing:
                yield _event("prompt_processing.end")
            if not message_started:
                yield _event("message.start")
            yield _event("message.end")
