"""OpenAI's ``{"type": "mcp"}`` tools on ``/v1/responses``: the server lists the tools of the request's
remote MCP servers (service/mcp.py), offers them to the model beside the request's function tools,
runs the calls the model makes, and goes on until the model answers, in one response.

A response goes in rounds, as /api/v1/chat's turns do (service/mcp_turn.py): a round is one
generation over the conversation so far; when it ends with calls of MCP tools, each runs on its
server, and the ``mcp_call`` item with its result joins the conversation for the next round (the
model sees it as a function call and its result: items.mcp_as_function_items). The response ends
with the first round that answers without calls, or that calls a function tool (the client runs
those, as without MCP), or that calls a tool needing approval (``require_approval``): that call is
not run, an ``mcp_approval_request`` item ends the response, and a later request continuing it
(``previous_response_id``) with ``{"type": "mcp_approval_response", "approval_request_id",
"approve"}`` runs it (or tells the model it was refused) before its first round.

The request's ``tool_choice`` holds for the first round; later rounds are "auto", and after
``MAX_ROUNDS`` rounds that called, "none". ``max_output_tokens`` bounds the rounds together.
A server that cannot list its tools fails the request before any generation (``McpListFailed``, a
424 as OpenAI's); a call that fails is an ``mcp_call`` with ``error``, which the model reads.

Events are the rounds' generation events, with the MCP calls' own in place of their
``ToolCallDelta``: ``McpToolsListed`` first (one per server the conversation has not listed yet,
as OpenAI lists a server once per conversation), ``McpCallStarted`` when the model names a tool,
``McpArgumentsDelta``, ``McpCallDone`` once it ran, ``McpApprovalRequested`` for a call waiting for
approval. Only the last round's ``Finished`` is passed on.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import httpx2

from studiolo.domain.chat import Tools, ToolSpec
from studiolo.domain.errors import InvalidRequest, Kind, StudioloError
from studiolo.service.conversations import ConversationRun, Conversations, Turn, conversation_items, missing_previous
from studiolo.service.generation import Generation
from studiolo.service.items import Item, new_id
from studiolo.service.mcp import McpServer, McpToolbox
from studiolo.service.mcp_integrations import Integration, McpIntegrations, McpPlugin
from studiolo.service.mcp_turn import MAX_ROUNDS, said_items
from studiolo.service.tools import check_no_other_constraint, offered_tools
from studiolo.service.types import Finished, GenerationEvent, ReasoningDelta, TextDelta, ToolCallDelta, Usage

INVALID_PARAMS = -32602  # JSON-RPC's code, which MCP servers give for an unknown tool
TIMEOUT_STATUS = 504  # an mcp_call's http_error code when the tool gave no answer within the call's limit
UNREACHABLE_STATUS = 502  # an mcp_call's http_error code when the server gave no HTTP status (it was not reached)


class McpListFailed(StudioloError):
    """A request's MCP server could not list its tools: OpenAI answers 424 (Failed Dependency)."""

    kind: ClassVar[Kind] = "failed_dependency"
    code = "mcp_connection_error"


@dataclass(frozen=True)
class ApprovalPolicy:
    """Which tools of a server need the user's approval before they run (OpenAI's ``require_approval``;
    omitted, every tool needs it, as OpenAI's default is)."""

    others: bool = True  # the tools named in neither list
    always: frozenset[str] = frozenset()
    never: frozenset[str] = frozenset()

    def needed(self, tool: str) -> bool:
        if tool in self.never:
            return False
        return tool in self.always or self.others


@dataclass(frozen=True)
class McpTool:
    """One ``{"type": "mcp"}`` tool of a request."""

    server: Integration  # a per-request server, or one of mcp.json
    approval: ApprovalPolicy
    param: str  # its field: "tools[2]"

    @property
    def label(self) -> str:
        return self.server.label if isinstance(self.server, McpServer) else self.server.name


@dataclass(frozen=True)
class ToolOffer:
    """The request's function tools and ``tool_choice``, to be offered with the MCP servers' tools."""

    specs: tuple[ToolSpec, ...] = ()
    params: tuple[str, ...] = ()  # each spec's field: "tools[0]"
    choice: str | None = None  # "none" | "auto" | "required" (None: not given)
    named: str | None = None  # a named choice's tool
    parallel: bool = True


def configured_server(label: str, allowed_tools: tuple[str, ...] | None) -> McpPlugin:
    """The server of an mcp tool given by ``server_label`` alone: the server of ``mcp.json`` so named
    (allowed, and known, when the response starts)."""
    return McpPlugin(label, allowed_tools)


@dataclass(frozen=True)
class McpToolsListed:
    item: Item  # the mcp_list_tools item


@dataclass(frozen=True)
class McpCallStarted:
    item: Item  # the mcp_call (or, when ``approval``, mcp_approval_request) item, arguments still empty
    approval: bool = False


@dataclass(frozen=True)
class McpArgumentsDelta:
    item_id: str
    delta: str


@dataclass(frozen=True)
class McpCallDone:
    item: Item  # the mcp_call item with its output or error


@dataclass(frozen=True)
class McpApprovalRequested:
    item: Item  # the mcp_approval_request item, complete


ResponseEvent = (GenerationEvent | McpToolsListed | McpCallStarted | McpArgumentsDelta | McpCallDone
                 | McpApprovalRequested)


@dataclass
class _Round:
    """What one round's generation said and called."""

    said: list[TextDelta | ReasoningDelta] = field(default_factory=list)
    calls: dict[int, Item] = field(default_factory=dict)  # ToolCallDelta.call -> its MCP item
    approvals: set[int] = field(default_factory=set)  # the calls waiting for approval
    functions: bool = False  # a function tool was called: the client runs it
    ending: Finished | None = None  # the round's Finished, when it called MCP tools


class McpResponse:
    """A response and its rounds; ``generation`` is the current round's."""

    def __init__(self, conversations: Conversations, integrations: McpIntegrations, turn: Turn, offer: ToolOffer,
                 tools: list[McpTool]):
        self._conversations = conversations
        self._integrations = integrations
        self._turn = turn
        self._offer = offer
        self._tools = tools
        self._toolboxes: dict[str, McpToolbox] = {}  # server label -> its open toolbox
        self._tool_of: dict[str, McpTool] = {}  # tool name -> its MCP tool
        self._listed: list[Item] = []  # mcp_list_tools items to show
        self._ran: list[Item] = []  # approved calls, run before the first round
        self._items: list[Item] = []  # what this response added to the conversation so far
        self._finished_usage = Usage()  # of the rounds before the current one
        self._run: ConversationRun | None = None
        self._stored: ConversationRun | None = None
        self._id = ""

    @classmethod
    async def start(cls, conversations: Conversations, integrations: McpIntegrations, turn: Turn, offer: ToolOffer,
                    tools: list[McpTool]) -> McpResponse:
        """The response with its first round started: the servers reached and listed, the approved
        calls run. What can be refused is refused here; the servers' sessions end with the response,
        or now if it cannot start."""
        for tool in tools:  # the settings (per-request servers, mcp.json), before anything else
            integrations.check([tool.server], tool.param)
        await conversations.loads_model(turn)  # an unknown model (...) is refused before any server is reached
        response = cls(conversations, integrations, turn, offer, tools)
        try:
            earlier = await response._earlier_items()
            approved = response._approved_calls(earlier)
            await response._open(earlier)
            for request in approved:
                response._ran.append(await response._call(_mcp_call(request, request["id"])))
            response._items.extend(response._ran)
            await response._next_round(response._first_tools())
            response._id = response.generation_run.id
        except BaseException:
            await response.close()
            raise
        return response

    @property
    def generation(self) -> Generation:
        return self.generation_run.generation

    @property
    def generation_run(self) -> ConversationRun:
        assert self._run is not None, "start() began the first round"
        return self._run

    @property
    def run(self) -> ConversationRun:
        """The response as it is stored: the request's own input items, the first round's id (the one
        announced), the last round's generation (its KV state is the whole conversation's)."""
        run = self.generation_run
        if self._stored is None or self._stored.generation is not run.generation:
            self._stored = replace(run, id=self._id, turn=self._turn)
        return self._stored

    @property
    def usage(self) -> Usage:
        """The rounds' usage together."""
        return _added(self._finished_usage, self.generation.usage)

    def tool_names(self) -> set[str]:
        return set(self._tool_of)

    async def events(self) -> AsyncIterator[ResponseEvent]:
        try:
            for listed in self._listed:
                yield McpToolsListed(listed)
            for ran in self._ran:
                yield McpCallStarted({**ran, "arguments": "", "output": None, "error": None, "status": "in_progress"})
                yield McpCallDone(ran)
            rounds = 1
            while True:
                current = _Round()
                async for event in self._round_events(current):
                    yield event
                if current.ending is None:  # it answered, or called only function tools
                    return
                async for event in self._run_calls(current):
                    yield event
                budget = self._budget()
                if current.approvals or current.functions:  # the client's turn: approve, or run its functions
                    yield current.ending
                    return
                if budget is not None and budget <= 0:
                    yield Finished(current.ending.index, "length", "max_tokens")
                    return
                self._finished_usage = self.usage
                await self._next_round(self._later_tools(rounds < MAX_ROUNDS), budget)
                rounds += 1
        finally:
            await self.close()

    async def _round_events(self, current: _Round) -> AsyncIterator[ResponseEvent]:
        """The round's events; the ``Finished`` of a round that called MCP tools is kept in ``current``."""
        async for event in self.generation.events():
            if isinstance(event, ToolCallDelta):
                for made in self._follow_call(current, event):
                    yield made
                continue
            if isinstance(event, TextDelta | ReasoningDelta):
                current.said.append(event)
            if isinstance(event, Finished) and event.reason == "tool_calls" and current.calls:
                current.ending = event
                return
            yield event

    async def _run_calls(self, current: _Round) -> AsyncIterator[ResponseEvent]:
        """The round's MCP calls run (those needing approval only shown), joining the conversation."""
        self._items.extend(said_items(current.said))
        for number, item in current.calls.items():
            if number in current.approvals:
                self._items.append(item)
                yield McpApprovalRequested(item)
            else:
                done = await self._call(item)
                self._items.append(done)
                yield McpCallDone(done)

    async def close(self) -> None:
        """Ends every server's session (again: a no-op)."""
        toolboxes, self._toolboxes = self._toolboxes, {}
        for toolbox in toolboxes.values():
            await toolbox.close()

    # --- before the first round -----------------------------------------------------------------

    async def _earlier_items(self) -> list[Item]:
        """The conversation the response continues."""
        turn = self._turn
        with missing_previous(turn.previous_response_id, turn.unknown_previous):
            history = await self._conversations.history(turn.previous_response_id)
        return conversation_items(history)

    def _approved_calls(self, earlier: list[Item]) -> list[Item]:
        """The approval requests this request's ``mcp_approval_response`` items approve (an answer to a
        request not made, or already answered, or of a server not in ``tools``, is a 400)."""
        requests = {item["id"]: item for item in earlier if item.get("type") == "mcp_approval_request"}
        answered = {item["approval_request_id"] for item in earlier if item.get("type") == "mcp_approval_response"}
        labels = {tool.label for tool in self._tools}
        approved: list[Item] = []
        for index, item in enumerate(self._turn.items):
            if item.get("type") == "mcp_approval_request":
                requests[item["id"]] = item
            if item.get("type") != "mcp_approval_response":
                continue
            param, request_id = f"input[{index}].approval_request_id", item["approval_request_id"]
            request = requests.get(request_id)
            if request is None:
                raise InvalidRequest(f"no mcp_approval_request with id '{request_id}' in the conversation", param)
            if request_id in answered:
                raise InvalidRequest(f"the approval request '{request_id}' was already answered", param)
            answered.add(request_id)
            if item.get("approve"):
                if request["server_label"] not in labels:
                    raise InvalidRequest(f"the approved call is to the MCP server '{request['server_label']}', "
                                         "which is not in 'tools'", param)
                approved.append(request)
        return approved

    async def _open(self, earlier: list[Item]) -> None:
        """Reach and list every server, one session each; its list is shown unless the conversation
        already did."""
        shown = {item.get("server_label") for item in earlier + self._turn.items
                 if item.get("type") == "mcp_list_tools"}
        for tool in self._tools:
            label = tool.label
            self._toolboxes[label] = toolbox = await _listed_toolbox(self._integrations, tool)
            for spec in toolbox.specs:
                if spec.name in self._tool_of:
                    raise InvalidRequest(f"two MCP servers offer a tool named '{spec.name}'", tool.param)
                self._tool_of[spec.name] = tool
            if label not in shown:
                self._listed.append(_list_item(label, toolbox.specs))

    def _first_tools(self) -> Tools | None:
        offer = self._offer
        specs = list(offer.specs)
        params = list(offer.params)
        for tool in self._tools:
            specs += self._toolboxes[tool.label].specs
            params += [tool.param] * (len(specs) - len(params))
        def field(index: int, name: str) -> str:  # an MCP tool's spec is named by its server's tool
            return params[index] if index >= len(offer.specs) else f"{params[index]}.{name}"

        tools = offered_tools(specs, offer.choice, offer.named, offer.parallel, field)
        check_no_other_constraint(tools, self._turn.options.constraint_param)
        return tools

    # --- rounds ---------------------------------------------------------------------------------

    def _later_tools(self, calls_allowed: bool) -> Tools | None:
        tools = self.generation_run.turn.tools
        if tools is None:
            return None
        return Tools(tools.specs, "auto" if calls_allowed and tools.choice != "none" else "none", tools.parallel)

    def _budget(self) -> int | None:
        """The output tokens left for the next round (None: no bound)."""
        limit = self._turn.options.max_tokens
        return None if limit is None else limit - self.usage.completion_tokens

    async def _next_round(self, tools: Tools | None, budget: int | None = None) -> None:
        options = self._turn.options if budget is None else replace(self._turn.options, max_tokens=budget)
        turn = replace(self._turn, items=self._turn.items + self._items, tools=tools, options=options)
        self._run = await self._conversations.start(turn)

    def _follow_call(self, current: _Round, delta: ToolCallDelta) -> list[ResponseEvent]:
        """A call's delta: a function tool's passes on, an MCP tool's becomes its item's events."""
        if delta.name is not None:
            tool = self._tool_of.get(delta.name)
            if tool is None:
                current.functions = True
                return [delta]
            needs_approval = tool.approval.needed(delta.name)
            kind = "mcp_approval_request" if needs_approval else "mcp_call"
            item: Item = {"type": kind, "id": new_id("mcpr" if needs_approval else "mcp"),
                          "server_label": tool.label, "name": delta.name, "arguments": ""}
            if not needs_approval:
                item.update(approval_request_id=None, output=None, error=None, status="in_progress")
            else:
                current.approvals.add(delta.call)
            current.calls[delta.call] = item
            events: list[ResponseEvent] = [McpCallStarted(dict(item), approval=needs_approval)]
        elif delta.call in current.calls:
            events = []
        else:
            return [delta]  # a function call's arguments
        item = current.calls[delta.call]
        if delta.arguments:
            item["arguments"] += delta.arguments
            if delta.call not in current.approvals:
                events.append(McpArgumentsDelta(item["id"], delta.arguments))
        return events

    async def _call(self, item: Item) -> Item:
        """The call run: its item with the output, or the error the model and the client read."""
        name = item["name"]
        toolbox = self._toolboxes[self._tool_of[name].label] if name in self._tool_of else None
        if toolbox is None:  # an approved request of a tool the server no longer offers: as MCP says it
            message = f"the MCP server '{item['server_label']}' offers no tool '{name}'"
            return {**item, "status": "failed", "output": None,
                    "error": {"type": "mcp_protocol_error", "code": INVALID_PARAMS, "message": message}}
        try:
            arguments = json.loads(item["arguments"] or "{}")  # the tool grammar (or the input's check) made it JSON
            output, _ = await toolbox.call_limited(name, arguments)  # an error result is output: the model reads it
        except TimeoutError:
            message = f"the MCP tool '{name}' gave no answer within {toolbox.limits.timeout_seconds:g} s"
            return {**item, "status": "failed", "output": None,
                    "error": {"type": "http_error", "code": TIMEOUT_STATUS, "message": message}}
        except StudioloError as exc:
            return {**item, "status": "failed", "output": None, "error": call_error(exc)}
        return {**item, "status": "completed", "output": output, "error": None}


async def _listed_toolbox(integrations: McpIntegrations, tool: McpTool) -> McpToolbox:
    """One server's session and tools; a failure names the tool's field."""
    label = tool.label
    try:
        return await integrations.open([tool.server], tool.param)
    except InvalidRequest as exc:  # a tool schema it lists cannot be compiled
        raise InvalidRequest(f"MCP server '{label}': {exc}", tool.param) from None
    except StudioloError as exc:
        raise McpListFailed(f"Error retrieving tool list from MCP server: '{label}'. {exc}", tool.param) from None


def _list_item(label: str, specs: list[ToolSpec]) -> Item:
    # annotations: service/mcp.py keeps a tool's name, description and schema only
    tools = [{"name": spec.name, "description": spec.description, "input_schema": spec.parameters or {},
              "annotations": None} for spec in specs]
    return {"type": "mcp_list_tools", "id": new_id("mcpl"), "server_label": label, "tools": tools, "error": None}


def _mcp_call(request: Item, approval_request_id: str | None) -> Item:
    return {"type": "mcp_call", "id": new_id("mcp"), "server_label": request["server_label"], "name": request["name"],
            "arguments": request["arguments"], "approval_request_id": approval_request_id, "output": None,
            "error": None, "status": "in_progress"}


def call_error(exc: BaseException) -> dict[str, Any]:
    """An ``mcp_call``'s ``error`` in OpenAI's shape: ``mcp_protocol_error`` with the JSON-RPC code when
    the server refused the call, else ``http_error`` with the HTTP status (``UNREACHABLE_STATUS`` when
    there was none: the server was not reached)."""
    import mcp_types  # imported once a server is reached (service/mcp.py)
    from mcp import MCPError

    cause = _cause(exc, lambda error: isinstance(error, MCPError | httpx2.HTTPStatusError))
    if isinstance(cause, MCPError) and cause.code != mcp_types.CONNECTION_CLOSED:  # that one: a transport failure
        return {"type": "mcp_protocol_error", "code": cause.code, "message": str(exc)}
    status = cause.response.status_code if isinstance(cause, httpx2.HTTPStatusError) else UNREACHABLE_STATUS
    return {"type": "http_error", "code": status, "message": str(exc) or type(exc).__name__}


def _cause(exc: BaseException | None, wanted: Callable[[BaseException], bool]) -> BaseException | None:
    """The first exception ``wanted`` picks among ``exc``, what it was raised from or during, and the
    members of exception groups (service/mcp.py raises its own error during the SDK's)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        error = todo.pop(0)
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if wanted(error):
            return error
        todo += [error.__cause__, error.__context__]
        if isinstance(error, BaseExceptionGroup):
            todo += list(error.exceptions)
    return None


def _added(first: Usage, second: Usage) -> Usage:
    return Usage(first.prompt_tokens + second.prompt_tokens, first.completion_tokens + second.completion_tokens,
                 first.cached_tokens + second.cached_tokens, first.reasoning_tokens + second.reasoning_tokens)
