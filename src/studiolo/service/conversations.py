"""Stateful chats: a turn continues a stored response, and the finished turn is stored in its turn.

Both stateful APIs (LM Studio's ``/api/v1/chat`` and OpenAI's ``/v1/responses``) go through here:

1. ``start``: the conversation so far (the chain of stored responses ending at
   ``previous_response_id``) and the turn's new items become chat messages, after the turn's own
   instructions (a system message; instructions are not carried over from earlier turns, as in
   OpenAI's Responses API). The generation runs like any chat completion, so the engine reuses the
   cached prefix of the conversation and prefills only the new turn.
2. ``save``: once the output is complete, the response is written (committed before the client
   hears of its end) with the items this turn added, its output items and its usage. A turn sent
   with ``store: false`` is not written; a turn the client abandoned is not either.

Storage faults (a full disk, a read-only or damaged database: store/faults.py): a turn to be stored
is refused before it is generated if the store already knows it cannot write (``StorageUnavailable``,
``StorageFull``). If storing fails only once the answer is written, the answer is not thrown away:
``save`` returns None as for ``store: false`` and ``run.storage_error`` says why, for the API to
show beside the answer (docs/API.md, "Storage faults").

Continuing from any earlier response branches the conversation: responses form a tree.

Between preparing a turn's generation and starting it, ``generate`` restores the conversation's
KV state saved with its previous response, when the engine holds less than half of the prompt
(the cells were evicted, or the server restarted): the prefill is then only the new turn.

Stored responses are also read and deleted here (``get``, ``input_items``, ``delete``), off the
event loop; ids follow the one rule of domain/responses.py.

Ownership: with auth on, a stored response belongs to the API token whose request stored it
(``request_owner()``, set by the auth middleware for each request): every read, continuation and
delete here passes the request's owner to the store, and another token's response is not found.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

from studiolo.chat.reasoning import reasoning_format_for, reasoning_variables
from studiolo.config import Budgets
from studiolo.domain.auth import request_owner
from studiolo.domain.chat import ChatMessage, Tools
from studiolo.domain.responses import (
    PreviousResponseNotFound,
    ResponseNotFound,
    StoredResponse,
    check_response_id,
    new_response_id,
)
from studiolo.models.load_progress import Watch
from studiolo.service import saved_state
from studiolo.service.embeddings import check_generation_model
from studiolo.service.generation import Generation, GenerationService
from studiolo.service.items import Item, chat_messages, image_count
from studiolo.service.tool_calls import check_tool_results
from studiolo.service.types import ChatRequest, GenerationOptions, Usage
from studiolo.store.faults import StorageUnavailable
from studiolo.store.responses import ResponseStore

log = logging.getLogger(__name__)
T = TypeVar("T")

# What a previous_response_id naming no stored response is: LM Studio's chat answers it as a missing
# response (404 response_not_found), OpenAI's Responses API as a wrong request (400
# previous_response_not_found).
UnknownPrevious = Literal["not_found", "invalid"]


@dataclass(frozen=True)
class Turn:
    model: str
    items: list[Item]  # what this turn adds to the conversation
    options: GenerationOptions
    instructions: str | None = None  # a system message for this turn only
    previous_response_id: str | None = None
    store: bool = True
    tools: Tools | None = None
    ttl: float | None = None
    context_length: int | None = None  # if this turn loads the model
    unknown_previous: UnknownPrevious = "not_found"
    # reasoning models (ChatRequest's fields): the request's option, the field a 400 names, and
    # whether an option the template does not list is refused (/api/v1/chat) or read leniently
    reasoning_option: str | None = None
    reasoning_param: str = "reasoning"
    reasoning_strict: bool = False
    # the request fields of this turn's images, in order, for errors about them (an image of the
    # stored conversation is named by previous_response_id)
    image_params: tuple[str, ...] = ()


@dataclass
class ConversationRun:
    id: str  # the response's id, known from the start (streams announce it first)
    turn: Turn
    generation: Generation
    history: list[StoredResponse] = field(default_factory=list)
    storage_error: StorageUnavailable | None = None  # why the finished turn could not be stored

    @property
    def model(self) -> str:
        return self.generation.model


STATE_BUDGET_BYTES = Budgets.stored_state_mib * 2**20  # saved KV states on disk, also bounded by free disk


class Conversations:
    def __init__(self, service: GenerationService, store: ResponseStore, state_budget: int = STATE_BUDGET_BYTES):
        self.service = service
        self.store = store
        self.state_budget = state_budget

    async def start(self, turn: Turn) -> ConversationRun:
        if turn.reasoning_option is not None:  # before a load it would refuse (no await otherwise: a
            await asyncio.to_thread(self.check_reasoning, turn)  # client gone here must not stop the load)
        with missing_previous(turn.previous_response_id, turn.unknown_previous):
            history = await self.history(turn.previous_response_id)
            if turn.store:
                await asyncio.to_thread(self.check_can_store, turn.items, turn.instructions)
            options = replace(turn.options, save_state=turn.store)  # the next turn may need it after a restart
            request = ChatRequest(turn.model, _messages(turn, history), options, turn.ttl, tools=turn.tools,
                                  context_length=turn.context_length, prompt_field="input",
                                  **_reasoning_fields(turn))
            generation = await self.generate(request, turn.previous_response_id)
        return ConversationRun(new_response_id(), turn, generation, history)

    async def history(self, previous_response_id: str | None) -> list[StoredResponse]:
        """The stored conversation a turn continues, oldest first (none for a first turn)."""
        if previous_response_id is None:
            return []
        return await asyncio.to_thread(self.store.conversation, previous_response_id, request_owner())

    async def generate(self, request: ChatRequest, previous_response_id: str | None) -> Generation:
        """A generation continuing ``previous_response_id``'s conversation: prepared, given the
        conversation's saved KV state if the engine lacks its prefix, then started."""
        prepared = await self.service.prepare_chat(request)
        if previous_response_id is not None and prepared.lacks_prefix():  # only then is the disk read
            blob = await asyncio.to_thread(self.store.load_state, previous_response_id, request_owner())
            state = saved_state.decode(blob)
            if state is not None:
                prepared.offer_state(state)
        return self.service.start_chat(prepared)

    async def loads_model(self, turn: Turn) -> bool:
        """Whether starting ``turn`` would load its model. A turn that would is first checked for
        what can be refused without the load (an embedding model, an unknown previous id, a storage
        fault), so that a stream showing the load begins only for a turn that can run."""
        manager = self.service.manager
        check_generation_model(manager, turn.model)
        if not manager.needs_load(turn.model):
            return False
        await self._check_ready(turn)
        return True

    def watch_load(self, turn: Turn) -> Watch:
        """The progress of the load starting ``turn`` waits for (models/load_progress.py)."""
        return self.service.manager.watch_jit_load(turn.model)

    def instance_id(self, turn: Turn) -> str:
        """The id of the model instance ``turn`` would run on now, or that its load would give."""
        return self.service.manager.instance_id_for(turn.model)

    def check_reasoning(self, turn: Turn) -> None:
        """A 400 for a reasoning option the model's template cannot honour, read from the model's file
        without loading it (the prompt's rendering would refuse it the same way, once loaded)."""
        if turn.reasoning_option is None:
            return
        info = self.service.manager.model_info(turn.model)
        if info is not None:  # a model without a template gets a built-in one: those do not reason
            reasoning_variables(reasoning_format_for(info.chat_template or ""), turn.reasoning_option,
                                param=turn.reasoning_param, strict=turn.reasoning_strict)

    async def _check_ready(self, turn: Turn) -> None:
        """Raise what ``start`` would for the reasoning option and the store (unknown previous id,
        storage fault), before a load."""
        if turn.reasoning_option is not None:
            await asyncio.to_thread(self.check_reasoning, turn)
        if turn.previous_response_id is not None:
            with missing_previous(turn.previous_response_id, turn.unknown_previous):
                await asyncio.to_thread(self.store.get, turn.previous_response_id, request_owner())
        if turn.store:
            await asyncio.to_thread(self.check_can_store, turn.items, turn.instructions)

    async def get(self, response_id: str) -> StoredResponse:
        """A stored response, by the id a client asks for (deleted ones are not found)."""
        return await self._by_id(self.store.get, response_id)

    async def input_items(self, response_id: str) -> list[Item]:
        """The items a stored response's own turn added (not its history)."""
        return await self._by_id(self.store.input_items, response_id)

    async def delete(self, response_id: str) -> None:
        """Delete a stored response; the conversations continuing it stay whole (store/responses.py)."""
        await self._by_id(self.store.delete, response_id)

    async def _by_id(self, action: Callable[[str, str | None], T], response_id: str) -> T:
        # the id is the request's subject (the Responses API's path parameter), not a previous response
        check_response_id(response_id, "response_id")
        try:
            return await asyncio.to_thread(action, response_id, request_owner())
        except ResponseNotFound:
            raise ResponseNotFound(response_id, f"Response with id '{response_id}' not found.",
                                   "response_id") from None

    def storage_fault(self) -> StorageUnavailable | None:
        """Why storing is off, as last seen (no probe: cheap enough for every health check)."""
        return self.store.faults.current

    def check_can_store(self, items: list[Item], instructions: str | None = None) -> None:
        """StorageUnavailable (StorageFull) if a turn adding ``items`` could not be stored now: known
        before it is generated, so no answer is computed only to be lost. Blocking: run it in a thread."""
        need = len(json.dumps(items, ensure_ascii=False)) + len(instructions or "")
        self.store.check_writable(need)

    async def save(
        self, run: ConversationRun, output: list[Item], status: str = "completed", details: dict | None = None,
        usage: Usage | None = None,
    ) -> StoredResponse | None:
        """Store the finished turn (unless ``store`` was false); returns what was stored. ``details``:
        what the API wants back when it shows the response again (its request's settings); ``usage``:
        the turn's, when it took more than its last generation (rounds of tool calls)."""
        if not run.turn.store:
            return None
        generation = run.generation
        record = {"generation": settings_record(run.turn.options), **(details or {})}
        try:
            with missing_previous(run.turn.previous_response_id, run.turn.unknown_previous):  # deleted meanwhile
                stored = await asyncio.to_thread(
                    self.store.create, run.model, run.turn.items, output, usage_record(usage or generation.usage),
                    previous_response_id=run.turn.previous_response_id, status=status,
                    instructions=run.turn.instructions, metadata=record, response_id=run.id,
                    owner=request_owner(),
                )
        except StorageUnavailable as fault:  # logged by the store; the answer is still the client's
            run.storage_error = fault
            return None
        saved = generation.saved.get(0)
        if saved is not None:
            blob = saved_state.encode(generation.instance.key, generation.adapter_key, saved)
            await asyncio.to_thread(self._keep_state, run.id, blob)
        return stored

    def _keep_state(self, response_id: str, blob: bytes) -> None:
        # the response is stored by now; its KV state only spares a later prefill, so failing to
        # keep it (a locked or full disk, a blob over SQLite's limit) must not fail the request
        try:
            self.store.keep_state(response_id, blob, self.state_budget)
        except (StorageUnavailable, sqlite3.Error, OSError, ResponseNotFound) as exc:  # not found: deleted meanwhile
            log.warning("could not keep the KV state of %s (its continuation will prefill): %s", response_id, exc)


@contextmanager
def missing_previous(previous_response_id: str | None, unknown: UnknownPrevious) -> Iterator[None]:
    """Raise a missing previous response as the turn's API family names it (``Turn.unknown_previous``)."""
    try:
        yield
    except ResponseNotFound as exc:
        if unknown == "invalid" and exc.response_id == previous_response_id:
            raise PreviousResponseNotFound(exc.response_id) from None
        raise


def conversation_items(history: list[StoredResponse]) -> list[Item]:
    """A stored conversation's items in order: each turn's input, then its output."""
    items: list[Item] = []
    for response in history:
        items.extend(response.input_items)
        items.extend(response.output_items)
    return items


def _messages(turn: Turn, history: list[StoredResponse]) -> list[ChatMessage]:
    earlier = conversation_items(history)
    params = ("previous_response_id",) * image_count(earlier) + turn.image_params
    messages = chat_messages(earlier + turn.items, params)
    messages = check_tool_results(messages, lambda index: "input")  # results answer earlier calls
    if turn.instructions:
        messages.insert(0, ChatMessage("system", turn.instructions))
    return messages


def _reasoning_fields(turn: Turn) -> dict[str, Any]:
    """A turn's reasoning, as ChatRequest takes it. Both stateful APIs give reasoning items of their
    own, always apart from the answer (the server's --reasoning-output is chat completions' field)."""
    return {"reasoning_option": turn.reasoning_option, "reasoning_param": turn.reasoning_param,
            "reasoning_strict": turn.reasoning_strict, "reasoning_output": "separate"}


def settings_record(options: GenerationOptions) -> dict[str, Any]:
    """The generation settings a stored turn keeps (whichever API ran it), so that retrieving it
    later can say which values were used: the Responses object requires them as numbers."""
    sampling = options.sampling
    return {"temperature": sampling.temperature, "top_p": sampling.top_p,
            "presence_penalty": sampling.presence_penalty, "frequency_penalty": sampling.frequency_penalty,
            "max_output_tokens": options.max_tokens, "top_logprobs": options.logprobs or 0}


# what a response stored before turns kept their settings shows: LM Studio's defaults (its request
# may have given others, which were not kept)
DEFAULT_SETTINGS = settings_record(GenerationOptions())


def usage_record(usage: Usage) -> dict:
    return {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens, "cached_tokens": usage.cached_tokens,
            "reasoning_tokens": usage.reasoning_tokens}
