"""Response bodies of OpenAI's Responses API: the response object, its output items and the
streaming events, field for field as OpenAI publishes them.

``OutputItems`` turns a generation's events into output items and the events that announce them;
streamed and non-streamed responses both go through it, so both end with the same items. Text
before a tool call is its own message item; each call is a ``function_call`` item after it. A
reasoning model's reasoning is a ``reasoning`` item (its text as one ``reasoning_text`` part,
streamed as ``response.reasoning_text.delta`` events) before the message or calls it led to.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

from studiolo.api.openai.render import chat_token_logprob
from studiolo.api.sse import named_event
from studiolo.domain.errors import InvalidRequest
from studiolo.domain.responses import StoredResponse
from studiolo.service.conversations import DEFAULT_SETTINGS
from studiolo.service.items import Item, assistant_message, function_call, new_id, reasoning_item
from studiolo.service.types import (
    Finished,
    GenerationEvent,
    ReasoningDelta,
    TextDelta,
    TokenInfo,
    ToolCallDelta,
    Usage,
)

# What a stored response shows for a setting its turn did not keep: one stored by /api/v1/chat keeps
# only its generation settings (conversations.settings_record), one stored before those were kept
# none (their defaults are shown: the response object requires numbers there).
STORED_SETTINGS: dict[str, Any] = {
    "parallel_tool_calls": True, "store": True, "text": {"format": {"type": "text"}}, "tool_choice": "auto",
    "tools": [], "metadata": {}, "reasoning": {"effort": None, "summary": None}, **DEFAULT_SETTINGS,
}
_ID_PREFIXES = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "compaction": "cmp",
                "reasoning": "rs"}


@dataclass(frozen=True)
class ResponseInfo:
    """What a response object says of its request, known before any output."""

    id: str
    model: str
    created_at: int
    instructions: str | None
    previous_response_id: str | None
    settings: dict[str, Any]  # the request's settings, as ResponseBody.settings() gives them


def usage_body(input_tokens: int, output_tokens: int, cached_tokens: int, reasoning_tokens: int = 0) -> dict[str, Any]:
    # every prompt token not read from the prefix cache was computed and stays there for later
    # requests (until evicted): those are the cache's writes
    details = {"cached_tokens": cached_tokens, "cache_write_tokens": input_tokens - cached_tokens}
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": details,
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": input_tokens + output_tokens,
    }


def generation_usage(usage: Usage) -> dict[str, Any]:
    return usage_body(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.reasoning_tokens)


def response_object(
    info: ResponseInfo,
    status: str,
    output: list[Item],
    usage: dict[str, Any] | None = None,
    *,
    completed_at: int | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    settings = info.settings
    return {
        "id": info.id, "object": "response", "created_at": info.created_at, "status": status,
        "background": False, "completed_at": completed_at, "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": info.instructions, "max_output_tokens": settings["max_output_tokens"],
        "max_tool_calls": None, "model": info.model, "output": output,
        "parallel_tool_calls": settings["parallel_tool_calls"], "previous_response_id": info.previous_response_id,
        "prompt_cache_key": None, "reasoning": settings["reasoning"], "safety_identifier": None,
        "service_tier": "default", "store": settings["store"], "temperature": settings["temperature"],
        "text": settings["text"], "tool_choice": settings["tool_choice"], "tools": settings["tools"],
        "top_logprobs": settings["top_logprobs"], "top_p": settings["top_p"],
        "presence_penalty": settings["presence_penalty"], "frequency_penalty": settings["frequency_penalty"],
        "truncation": "disabled",
        "usage": usage, "user": None, "metadata": settings["metadata"],
    }


def stored_usage(stored: StoredResponse) -> dict[str, Any]:
    usage = stored.usage
    return usage_body(usage.get("input_tokens", 0), usage.get("output_tokens", 0), usage.get("cached_tokens", 0),
                      usage.get("reasoning_tokens", 0))


def is_compaction(stored: StoredResponse) -> bool:
    return "compaction" in (stored.metadata or {})  # what service/compaction.py records


def compacted_object(stored: StoredResponse) -> dict[str, Any]:
    """OpenAI's compacted response: the compacted window as ``output`` (its user messages, then the
    compaction item), the same at POST /v1/responses/compact and at every GET."""
    return {"id": stored.id, "object": "response.compaction", "created_at": int(stored.created_at),
            "output": stored.output_items, "usage": stored_usage(stored)}


def stored_response_object(stored: StoredResponse) -> dict[str, Any]:
    completed = int(stored.created_at)  # stored when the turn ended
    details = stored.metadata or {}  # what was recorded of its request (conversations.save, responses/routes.py _save)
    settings = {**STORED_SETTINGS, "metadata": {}, **details.get("generation", {}), **details.get("settings", {})}
    if settings["top_logprobs"] is None:  # stored by an earlier studiolo, which showed null for none asked
        settings["top_logprobs"] = 0
    info = ResponseInfo(stored.id, stored.model, details.get("created_at", completed), stored.instructions,
                        stored.previous_response_id, settings)
    return response_object(info, stored.status, stored.output_items, stored_usage(stored), completed_at=completed)


def input_item_list(response_id: str, input_items: list[Item], order: str, limit: int,
                    after: str | None) -> dict[str, Any]:
    """OpenAI's list of a response's input items (newest first unless ``order`` is "asc")."""
    items = [_with_id(response_id, index, item) for index, item in enumerate(input_items)]
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise InvalidRequest(f"response {response_id} has no input item with id '{after}'", "after")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit}


def _with_id(response_id: str, index: int, item: Item) -> Item:
    """Items keep the id the client gave; others get one derived from their place, stable across listings.
    Items the client sent have no status; as listed they are complete (OpenAI's types require one)."""
    listed = {"status": "completed", **item}
    if item.get("id"):
        return listed
    digest = hashlib.sha256(f"{response_id}/{index}".encode()).hexdigest()[:32]
    return {"id": f"{_ID_PREFIXES.get(item.get('type', 'message'), 'item')}_{digest}", **listed}


def now() -> int:
    return int(time.time())


# --- output items and their events ------------------------------------------------------


def _event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, **fields}


def _text_part(text: str, logprobs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}


class _Message:
    def __init__(self, output_index: int, with_logprobs: bool):
        self.id = new_id("msg")
        self.output_index = output_index
        self._with_logprobs = with_logprobs
        self._texts: list[str] = []
        self._logprobs: list[dict[str, Any]] = []
        self._unsent: list[dict[str, Any]] = []  # entries of tokens that added no text yet

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.id, "output_index": self.output_index, "content_index": 0}

    def opening(self) -> list[dict[str, Any]]:
        item = {"id": self.id, "type": "message", "status": "in_progress", "content": [], "role": "assistant"}
        return [_event("response.output_item.added", output_index=self.output_index, item=item),
                _event("response.content_part.added", **self._where(), part=_text_part("", []))]

    def add(self, text: str, tokens: tuple[TokenInfo, ...]) -> list[dict[str, Any]]:
        if self._with_logprobs:
            entries = [chat_token_logprob(token) for token in tokens]
            self._logprobs.extend(entries)
            self._unsent.extend(entries)
        if not text:
            return []
        self._texts.append(text)
        logprobs, self._unsent = self._unsent, []
        return [_event("response.output_text.delta", **self._where(), delta=text, logprobs=logprobs)]

    def closing(self, status: str) -> list[dict[str, Any]]:
        text = "".join(self._texts)
        return [_event("response.output_text.done", **self._where(), text=text, logprobs=self._logprobs),
                _event("response.content_part.done", **self._where(), part=_text_part(text, self._logprobs)),
                _event("response.output_item.done", output_index=self.output_index, item=self.item(status))]

    def item(self, status: str) -> Item:
        item = {**assistant_message("".join(self._texts)), "id": self.id, "status": status}
        item["content"][0]["logprobs"] = self._logprobs
        return item


class _Reasoning:
    """A reasoning item: its text as one reasoning_text part, announced as OpenAI's gpt-oss
    Responses server does (a content part added, reasoning_text deltas, the part done)."""

    def __init__(self, output_index: int):
        self.id = new_id("rs")
        self.output_index = output_index
        self._texts: list[str] = []

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.id, "output_index": self.output_index, "content_index": 0}

    def opening(self) -> list[dict[str, Any]]:
        item = {"id": self.id, "type": "reasoning", "summary": [], "content": [], "status": "in_progress"}
        return [_event("response.output_item.added", output_index=self.output_index, item=item),
                _event("response.content_part.added", **self._where(), part={"type": "reasoning_text", "text": ""})]

    def add(self, text: str) -> list[dict[str, Any]]:
        if not text:
            return []
        self._texts.append(text)
        return [_event("response.reasoning_text.delta", **self._where(), delta=text)]

    def closing(self, status: str) -> list[dict[str, Any]]:
        text = "".join(self._texts)
        return [_event("response.reasoning_text.done", **self._where(), text=text),
                _event("response.content_part.done", **self._where(), part={"type": "reasoning_text", "text": text}),
                _event("response.output_item.done", output_index=self.output_index, item=self.item(status))]

    def item(self, status: str) -> Item:
        return {**reasoning_item("".join(self._texts), status), "id": self.id}


class _Call:
    def __init__(self, output_index: int, number: int, call_id: str, name: str):
        self.id = new_id("fc")
        self.output_index = output_index
        self.number = number  # which call of the output (ToolCallDelta.call)
        self.call_id = call_id
        self.name = name
        self._arguments: list[str] = []

    def opening(self) -> list[dict[str, Any]]:
        item = {"id": self.id, "type": "function_call", "status": "in_progress", "arguments": "",
                "call_id": self.call_id, "name": self.name}
        return [_event("response.output_item.added", output_index=self.output_index, item=item)]

    def add(self, arguments: str) -> list[dict[str, Any]]:
        if not arguments:
            return []
        self._arguments.append(arguments)
        return [_event("response.function_call_arguments.delta", item_id=self.id, output_index=self.output_index,
                       delta=arguments)]

    def closing(self, status: str) -> list[dict[str, Any]]:
        return [_event("response.function_call_arguments.done", item_id=self.id, output_index=self.output_index,
                       name=self.name, arguments="".join(self._arguments)),
                _event("response.output_item.done", output_index=self.output_index, item=self.item(status))]

    def item(self, status: str) -> Item:
        return {**function_call(self.call_id, self.name, "".join(self._arguments)), "id": self.id, "status": status}


class OutputItems:
    """One generation's output as Responses items, and the events announcing them as they grow."""

    def __init__(self, with_logprobs: bool):
        self.items: list[Item] = []  # the finished items, in output order
        self.status = "in_progress"
        self._with_logprobs = with_logprobs
        self._open: _Message | _Call | _Reasoning | None = None

    def feed(self, event: GenerationEvent) -> list[dict[str, Any]]:
        """The events (without sequence numbers) this generation event makes."""
        if isinstance(event, TextDelta):
            return self._text(event)
        if isinstance(event, ReasoningDelta):
            return self._reasoning(event)
        if isinstance(event, ToolCallDelta):
            return self._call(event)
        if isinstance(event, Finished):
            return self._finish("incomplete" if event.reason == "length" else "completed")
        return []  # prompt progress: Responses streams have no such event

    def _text(self, delta: TextDelta) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        message = self._open
        if not isinstance(message, _Message):
            if not delta.text and (message is not None or not delta.tokens):
                return []  # nothing to show, and no reason to end a call for it
            events += self._close("completed")
            message = _Message(len(self.items), self._with_logprobs)
            events += self._start(message)
        return events + message.add(delta.text, delta.tokens)

    def _reasoning(self, delta: ReasoningDelta) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        reasoning = self._open
        if not isinstance(reasoning, _Reasoning):
            if not delta.text:
                return []
            events += self._close("completed")
            reasoning = _Reasoning(len(self.items))
            events += self._start(reasoning)
        return events + reasoning.add(delta.text)

    def _call(self, delta: ToolCallDelta) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        call = self._open
        if delta.name is not None:  # a call's first delta: its id and name
            assert delta.id is not None  # given with the name (ToolCallDelta)
            events += self._close("completed")
            call = _Call(len(self.items), delta.call, delta.id, delta.name)
            events += self._start(call)
        assert isinstance(call, _Call)  # a call's later deltas follow its first
        return events + call.add(delta.arguments)

    def _finish(self, status: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        answered = any(item["type"] != "reasoning" for item in self.items)
        if not answered and not isinstance(self._open, _Message | _Call):  # an empty answer is still an (empty) message
            events += self._close(status)  # reasoning alone (cut short, or the model wrote no answer)
            events += self._start(_Message(len(self.items), self._with_logprobs))
        self.status = status
        return events + self._close(status)

    def _start(self, item: _Message | _Call | _Reasoning) -> list[dict[str, Any]]:
        self._open = item
        return item.opening()

    def _close(self, status: str) -> list[dict[str, Any]]:
        if self._open is None:
            return []
        events = self._open.closing(status)
        self.items.append(self._open.item(status))
        self._open = None
        return events


class EventStream:
    """SSE for a response stream: ``event: <type>`` and ``data:`` lines, numbered from 0 in order."""

    def __init__(self):
        self._next = 0

    def sse(self, event: dict[str, Any]) -> str:
        payload = {**event, "sequence_number": self._next}
        self._next += 1
        return named_event(event["type"], payload)
