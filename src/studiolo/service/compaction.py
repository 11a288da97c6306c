"""Compaction: a conversation made shorter by the model itself (OpenAI's ``POST /v1/responses/compact``).

The window to compact is the conversation so far (the stored chain ending at
``previous_response_id``) followed by the request's own items. The model reads the window as the
conversation it is, then one more user turn asks it for a summary; since the window is the
conversation's own prompt, the engine reuses its cached prefix and prefills only that request.

The compacted window has OpenAI's shape: every user message of the window, verbatim and in order,
then one ``compaction`` item whose ``encrypted_content`` is the summary (plain text here: nothing
is encrypted). It replaces everything else: the assistant's messages, tool calls and results,
system and developer messages, and any earlier compaction item. It is stored as a response that
starts a conversation of its own (its ancestors are not part of it), so a later turn continues from
it by ``previous_response_id``; a client may as well pass the window back as input. If storing fails
once the summary is written (a storage fault), the summary is still returned, unstored, with
``run.storage_error`` saying why; a fault known before is refused before the model runs.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace

from studiolo.domain.auth import request_owner
from studiolo.domain.chat import ChatMessage
from studiolo.domain.errors import InvalidRequest
from studiolo.domain.responses import StoredResponse, new_response_id
from studiolo.service.conversations import (
    Conversations,
    conversation_items,
    missing_previous,
    settings_record,
    usage_record,
)
from studiolo.service.generation import Generation
from studiolo.service.items import (
    Item,
    chat_messages,
    compaction_item,
    message_text,
    new_id,
)
from studiolo.service.tool_calls import check_tool_results
from studiolo.service.types import ChatRequest, Finished, GenerationOptions, TextDelta
from studiolo.store.faults import StorageUnavailable

# a summary longer than this would hardly shorten a conversation a small local context can hold
DEFAULT_MAX_TOKENS = 512
SUMMARY_REQUEST = (
    "Summarize our conversation so far for your own later use. Keep every fact, name, number, "
    "decision and open question it holds; leave out greetings and repetition. Write only the summary."
)


@dataclass(frozen=True)
class CompactRequest:
    model: str
    items: list[Item]  # added to the conversation before it is compacted
    options: GenerationOptions  # max_tokens None: DEFAULT_MAX_TOKENS
    instructions: str | None = None  # a system message for the summarizing pass only
    previous_response_id: str | None = None
    ttl: float | None = None


@dataclass
class CompactRun:
    id: str  # the compacted response's id
    request: CompactRequest
    window: list[Item]
    options: GenerationOptions  # as used (the default max_tokens filled in)
    generation: Generation
    storage_error: StorageUnavailable | None = None  # why the compacted window could not be stored


class Compactions:
    def __init__(self, conversations: Conversations):
        self.conversations = conversations

    async def start(self, request: CompactRequest) -> CompactRun:
        """Begin the summarizing pass; what cannot be done is refused here, before any output."""
        conversations, previous = self.conversations, request.previous_response_id
        with missing_previous(previous, "invalid"):  # compaction is OpenAI's: a 400 previous_response_not_found
            window = conversation_items(await conversations.history(previous)) + request.items
            if not window:
                raise InvalidRequest("there is nothing to compact: give 'input' or 'previous_response_id'", "input")
            await asyncio.to_thread(conversations.check_can_store, request.items, request.instructions)
            options = request.options
            if options.max_tokens is None:
                options = replace(options, max_tokens=DEFAULT_MAX_TOKENS)
            # a reasoning model's reasoning is split off and left out: the summary is its answer
            chat = ChatRequest(request.model, _summary_messages(window, request.instructions), options, request.ttl,
                               prompt_field="input", reasoning_output="separate")
            generation = await conversations.generate(chat, previous)  # its prefix is the conversation's
        return CompactRun(new_response_id(), request, window, options, generation)

    async def finish(self, run: CompactRun) -> StoredResponse:
        """The summary, as the compacted window, stored (always: that is how it is continued)."""
        texts: list[str] = []
        status = "completed"
        async for event in run.generation.events():  # a failure is the caller's error response
            if isinstance(event, TextDelta):
                texts.append(event.text)
            elif isinstance(event, Finished) and event.reason == "length":
                status = "incomplete"  # cut by max_tokens or the context: still a (shorter) summary
        output = _user_messages(run.window) + [compaction_item("".join(texts).strip())]
        details = {"generation": settings_record(run.options),
                   "compaction": {"previous_response_id": run.request.previous_response_id}}
        usage = usage_record(run.generation.usage)
        try:
            return await asyncio.to_thread(
                self.conversations.store.create, run.generation.model, [], output, usage,
                status=status, metadata=details, response_id=run.id, owner=request_owner())
        except StorageUnavailable as fault:  # logged by the store; the summary is still the client's
            run.storage_error = fault
            return StoredResponse(run.id, run.generation.model, time.time(), None, [], output, usage, status,
                                  None, details)


def _summary_messages(window: list[Item], instructions: str | None) -> list[ChatMessage]:
    messages = check_tool_results(chat_messages(window), lambda index: "input")  # results answer earlier calls
    if instructions:
        messages.insert(0, ChatMessage("system", instructions))
    return messages + [ChatMessage("user", SUMMARY_REQUEST)]


def _user_messages(window: list[Item]) -> list[Item]:
    """The window's user messages as output items (OpenAI's compacted output keeps them verbatim)."""
    return [{"id": item.get("id") or new_id("msg"), "type": "message", "status": "completed", "role": "user",
             "content": [{"type": "input_text", "text": message_text(item)}]}
            for item in window if item.get("type", "message") == "message" and item.get("role") == "user"]
