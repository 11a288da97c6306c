"""A stateful chat turn whose model may call the tools of the request's MCP servers (service/mcp.py),
as LM Studio's ``/api/v1/chat`` runs its ``integrations``: the server, not the client, runs the calls.

The turn goes in rounds. A round is one generation over the conversation so far; if it ends with
tool calls, each runs on its server, and the call and its result join the conversation (as the
Responses API's ``function_call`` and ``function_call_output`` items, which the model's template
renders in its own way) for the next round. The turn ends with the first round that answers
without calls; after ``MAX_ROUNDS`` rounds that called (the toolbox's ``limits.max_rounds``), the
next may not call (``tool_choice`` "none"). Without servers, a turn is its one round.

Events are the rounds' generation events (the ``Finished`` of a round that called is not passed on)
and, for each call, ``ToolCallStarted`` when the model names the tool and ``ToolCallDone`` once
its result is back. A call runs under the toolbox's limits (``McpToolbox.run``: a timeout, a cut
of its output); one that failed (an error result, a timeout, its server gone) is a ``ToolCallDone``
with its ``failure``, and the model reads the failure as the call's result in its next round.
Cancelling the turn (the client left) cancels the call in flight. The stored response is the whole
turn: its input items, then every round's reasoning, text, calls and results, then the answer.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from studiolo.domain.chat import Tools
from studiolo.service.conversations import ConversationRun, Conversations, Turn
from studiolo.service.generation import Generation
from studiolo.service.items import Item, assistant_message, function_call, reasoning_item
from studiolo.service.mcp import MAX_ROUNDS, CallFailure, McpToolbox
from studiolo.service.types import Finished, GenerationEvent, ReasoningDelta, TextDelta, ToolCallDelta


@dataclass(frozen=True)
class ToolCallStarted:
    tool: str
    provider_info: dict[str, str]


@dataclass(frozen=True)
class ToolCallDone:
    """A call ran: its arguments, its result, and the items they are in the conversation."""

    tool: str
    arguments: dict[str, Any]
    output: str
    provider_info: dict[str, str]
    items: tuple[Item, Item]  # function_call, function_call_output
    failure: CallFailure | None = None  # the call failed; ``output`` is what the model reads of it


TurnEvent = GenerationEvent | ToolCallStarted | ToolCallDone


class AgentTurn:
    """A turn and its rounds; ``generation`` is the current round's."""

    def __init__(self, conversations: Conversations, turn: Turn, toolbox: McpToolbox | None):
        self._conversations = conversations
        self._turn = turn
        self._toolbox = toolbox
        self._items: list[Item] = []  # what the rounds so far added to the conversation
        self._run: ConversationRun | None = None
        self._stored: ConversationRun | None = None

    @classmethod
    async def start(cls, conversations: Conversations, turn: Turn, toolbox: McpToolbox | None) -> AgentTurn:
        """The turn with its first round started (what can be refused is refused here); the toolbox
        is closed when the turn ends, or now if it cannot start."""
        agent = cls(conversations, replace(turn, tools=toolbox.tools()) if toolbox is not None else turn, toolbox)
        try:
            await agent._next_round(calls_allowed=True)
        except BaseException:
            await agent.close()
            raise
        return agent

    @property
    def _max_rounds(self) -> int:
        return self._toolbox.limits.max_rounds if self._toolbox is not None else MAX_ROUNDS

    @property
    def generation(self) -> Generation:
        assert self._run is not None, "start() began the first round"
        return self._run.generation

    @property
    def run(self) -> ConversationRun:
        """The turn as it is stored: its own input items, and the last round's id and generation."""
        assert self._run is not None, "start() began the first round"
        if self._stored is None or self._stored.generation is not self._run.generation:
            self._stored = replace(self._run, turn=self._turn)
        return self._stored

    async def events(self) -> AsyncIterator[TurnEvent]:
        try:
            rounds = 1
            while True:
                calls: dict[int, list[str]] = {}  # call -> [id, name, arguments]
                said: list[TextDelta | ReasoningDelta] = []  # the round's text (and reasoning) before its calls
                async for event in self.generation.events():
                    if isinstance(event, ToolCallDelta):  # only a turn with a toolbox offers tools
                        if event.name is not None and self._toolbox is not None:
                            calls[event.call] = [event.id or "", event.name, ""]
                            yield ToolCallStarted(event.name, self._toolbox.provider_info(event.name))
                        if event.call in calls:
                            calls[event.call][2] += event.arguments
                        continue
                    if isinstance(event, TextDelta | ReasoningDelta):
                        said.append(event)
                    if isinstance(event, Finished) and event.reason == "tool_calls" and calls:
                        break  # the turn goes on
                    yield event
                else:
                    return
                self._items.extend(said_items(said))
                for call_id, name, arguments in calls.values():
                    yield await self._call(call_id, name, arguments)
                await self._next_round(calls_allowed=rounds < self._max_rounds)
                rounds += 1
        finally:
            await self.close()

    async def _call(self, call_id: str, name: str, arguments: str) -> ToolCallDone:
        assert self._toolbox is not None, "only a turn with tools makes calls"
        values = json.loads(arguments)  # the tool grammar made it a JSON object
        outcome = await self._toolbox.run(name, values)
        items = (function_call(call_id, name, arguments),
                 {"type": "function_call_output", "call_id": call_id, "output": outcome.output})
        self._items.extend(items)
        return ToolCallDone(name, values, outcome.output, self._toolbox.provider_info(name), items, outcome.failure)

    async def _next_round(self, calls_allowed: bool) -> None:
        turn = replace(self._turn, items=self._turn.items + self._items)
        if not calls_allowed and turn.tools is not None:
            turn = replace(turn, tools=Tools(turn.tools.specs, "none", turn.tools.parallel))
        self._run = await self._conversations.start(turn)

    async def close(self) -> None:
        if self._toolbox is not None:
            await self._toolbox.close()


def said_items(said: list[TextDelta | ReasoningDelta]) -> list[Item]:
    """A round's text as items: each run of reasoning a reasoning item (the next round's template
    may keep it: Qwen3's does, within a tool loop), each run of text a message."""
    items: list[Item] = []
    for index, delta in enumerate(said):
        if index == 0 or type(said[index - 1]) is not type(delta):
            items.append(reasoning_item("") if isinstance(delta, ReasoningDelta) else assistant_message(""))
        part = items[-1]["content"][0]
        part["text"] += delta.text
    return [item for item in items if item["content"][0]["text"]]
