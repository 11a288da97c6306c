"""Request bodies of OpenAI's Responses API (``POST /v1/responses``) and their translation to a
``Turn`` of the stateful-chat service (service/conversations.py).

Unknown fields are ignored, as OpenAI clients send many (``truncation``, ``user``, ...).
``reasoning.effort`` goes to a reasoning model's template as chat completions' ``reasoning_effort``
does; ``reasoning.summary`` is accepted and ignored (no summary is written: reasoning items carry the
reasoning itself). Input items are checked and normalized to the stored item format (service/items.py) before
they reach the service, so a stored conversation looks the same whichever API wrote it. Responses'
flat function tools go through the service's checks as chat completions' do (service/tools.py), with
errors naming Responses' own fields (``tools[0].parameters``, not ``tools[0].function.parameters``).
MCP tools, their tool choice and their input items are read by mcp_schemas.py; with MCP tools, the
tools are offered once the servers have listed theirs (service/mcp_responses.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError

from studiolo.api.body import Body, sampling_field
from studiolo.api.errors import describe_validation
from studiolo.api.responses.mcp_schemas import MCP_INPUT_ITEMS, McpChoice, McpToolBody
from studiolo.api.wire_types import Int
from studiolo.domain.chat import Tools, ToolSpec
from studiolo.domain.errors import InvalidRequest
from studiolo.domain.image_urls import image_from_url
from studiolo.domain.responses import check_response_id
from studiolo.domain.sampling import SamplingParams
from studiolo.service.compaction import CompactRequest
from studiolo.service.constraints import Constraint, spec_of
from studiolo.service.conversations import Turn
from studiolo.service.items import Item, image_part, user_message
from studiolo.service.json_bounds import DEFAULT_MAX_DEPTH
from studiolo.service.mcp_responses import McpTool, ToolOffer
from studiolo.service.presets import given
from studiolo.service.tool_calls import check_arguments
from studiolo.service.tools import check_no_other_constraint, offered_tools
from studiolo.service.types import GenerationOptions

MAX_LOGPROBS = 20
LOGPROBS_INCLUDE = "message.output_text.logprobs"
UNNAMED_FORMAT = "response"  # the name a json_schema format given without one shows (OpenAI requires one)


class _Body(Body):
    # TextFormat.schema_ is given as "schema" on the wire and by name where it is built here
    model_config = ConfigDict(populate_by_name=True)


class ContentPart(_Body):
    type: Literal["input_text", "output_text", "input_image", "input_file"]
    text: str | None = None
    # input_image (OpenAI's ResponseInputImageParam): a data: URL (or an allowed remote one); no file_id,
    # as this server has no Files API; ``detail`` is kept and has no effect
    image_url: str | None = None
    file_id: str | None = None
    detail: Literal["low", "high", "auto", "original"] | None = None


class MessageInput(_Body):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[ContentPart]
    id: str | None = None

    def normalized(self, where: str) -> Item:
        given: list[str | ContentPart] = [self.content] if isinstance(self.content, str) else [*self.content]
        # the stored format (items.py): input_text parts (and input_image ones), or an assistant's output_text parts
        parts = [self._stored_part(part, f"{where}.content[{index}]") for index, part in enumerate(given)]
        item = {"type": "message", "role": self.role, "content": parts}
        return _with_given_id(item, self.id)

    def _stored_part(self, part: str | ContentPart, param: str) -> Item:
        if isinstance(part, ContentPart) and part.type == "input_image":
            return _image_part(part, param, self.role)
        if isinstance(part, ContentPart) and part.type == "input_file":
            raise InvalidRequest("file inputs are not supported by this server", param)
        text = part if isinstance(part, str) else part.text
        if text is None:
            raise InvalidRequest(f"'{param}.text' is required", f"{param}.text")
        if self.role == "assistant":
            return {"type": "output_text", "text": text, "annotations": []}
        return {"type": "input_text", "text": text}


def _image_part(part: ContentPart, param: str, role: str) -> Item:
    if role == "assistant":
        raise InvalidRequest("an assistant message cannot hold images", param)
    if part.file_id is not None:
        raise InvalidRequest("'file_id' is not supported: this server has no Files API; send the image as a "
                             "base64 data: URL in 'image_url'", f"{param}.file_id")
    if part.image_url is None:
        raise InvalidRequest(f"'{param}.image_url' is required", f"{param}.image_url")
    image_from_url(part.image_url, f"{param}.image_url")  # broken base64 is refused before anything is stored
    return image_part(part.image_url, part.detail)


def image_params(items: list[Item]) -> tuple[str, ...]:
    """The request field of each image in ``input``'s stored items, in order (a stored item keeps its
    input item's place and its parts' order)."""
    return tuple(f"input[{index}].content[{part_index}].image_url"
                 for index, item in enumerate(items) if isinstance(item.get("content"), list)
                 for part_index, part in enumerate(item["content"]) if part.get("type") == "input_image")


class FunctionCallInput(_Body):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    id: str | None = None

    def normalized(self, where: str) -> Item:  # its arguments are checked by _input_item
        item = {"type": "function_call", "call_id": self.call_id, "name": self.name, "arguments": self.arguments}
        return _with_given_id(item, self.id)


class FunctionCallOutputInput(_Body):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[dict[str, Any]]
    id: str | None = None

    def normalized(self, where: str) -> Item:
        check_json(self.output, f"{where}.output")  # it is stored as it is
        item = {"type": "function_call_output", "call_id": self.call_id, "output": self.output}
        return _with_given_id(item, self.id)


class CompactionInput(_Body):
    """A compaction item passed back (POST /v1/responses/compact made it): its summary, as text."""

    type: Literal["compaction"]
    encrypted_content: str = Field(min_length=1)
    id: str | None = None

    def normalized(self, where: str) -> Item:
        return _with_given_id({"type": "compaction", "encrypted_content": self.encrypted_content}, self.id)


def check_json(value: Any, param: str) -> None:
    """Refuse what the store could not write back as JSON: Python's parser takes NaN and Infinity,
    and ``Any`` fields let them through, so a turn would run and then fail to be stored."""
    try:
        json.dumps(value, allow_nan=False)
    except (ValueError, RecursionError):
        raise InvalidRequest(f"'{param}' holds a value that is not JSON (NaN or Infinity)", param) from None


class ReasoningPart(_Body):
    type: Literal["reasoning_text", "summary_text"]
    text: str


class ReasoningInput(_Body):
    """A reasoning item passed back (an earlier output's): its text becomes the next assistant
    message's reasoning (service/items.py). ``encrypted_content`` is ignored: this server never
    writes any, so it holds nothing it could read."""

    type: Literal["reasoning"]
    summary: list[ReasoningPart] = Field(default_factory=list)
    content: list[ReasoningPart] | None = None
    id: str | None = None

    def normalized(self, where: str) -> Item:
        item = {"type": "reasoning", "summary": [part.model_dump() for part in self.summary],
                "content": [part.model_dump() for part in self.content or ()]}
        return _with_given_id(item, self.id)


_INPUT_ITEMS: dict[str, Any] = {
    "message": MessageInput, "function_call": FunctionCallInput, "function_call_output": FunctionCallOutputInput,
    "compaction": CompactionInput, "reasoning": ReasoningInput, **MCP_INPUT_ITEMS,
}


def _with_given_id(item: Item, item_id: str | None) -> Item:
    return {"id": item_id, **item} if item_id else item


def _input_item(index: int, raw: dict[str, Any], max_json_depth: int) -> Item:
    kind = raw.get("type", "message")  # a message may leave its type out (OpenAI's "easy" input message)
    model = _INPUT_ITEMS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise InvalidRequest(f"input items of type {kind!r} are not supported; expected one of "
                             f"{', '.join(_INPUT_ITEMS)}", f"input[{index}].type")
    try:
        parsed = model.model_validate(raw)
    except ValidationError as exc:
        # the same message and param as a body error, with the item's place in front
        first = exc.errors()[0]
        raise describe_validation([{**first, "loc": ("body", "input", index, *first["loc"])}]) from None
    arguments = getattr(parsed, "arguments", None)  # a function call's, or an MCP call's
    if isinstance(arguments, str):  # not JSON; deep nesting; a number past int's digit limit
        check_arguments(arguments, f"input[{index}].arguments", max_json_depth)
    item = parsed.normalized(f"input[{index}]")
    check_json(item, f"input[{index}]")  # an MCP item's free-form fields are stored as they are
    return item


class FunctionTool(_Body):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def echo(self) -> dict[str, Any]:
        # Responses' function tools are strict unless told otherwise; calls here always follow the schema
        strict = True if self.strict is None else self.strict
        return {"type": "function", "name": self.name, "description": self.description,
                "parameters": self.parameters, "strict": strict}


class NamedFunctionChoice(_Body):
    type: Literal["function"]
    name: str


ToolChoice = Literal["none", "auto", "required"] | NamedFunctionChoice | McpChoice


class TextFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | bool | None = Field(None, alias="schema")  # 'schema' would shadow BaseModel's
    strict: bool | None = None
    description: str | None = None


class TextConfig(_Body):
    format: TextFormat | None = None


# OpenAI's efforts that templates do not know, as the nearest they do (as chat completions' reasoning_effort)
_EFFORTS = {"minimal": "low", "xhigh": "high"}


class ReasoningConfig(_Body):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None  # accepted, ignored: no summary is written

    @property
    def option(self) -> str | None:
        """The effort as the template's reasoning option (chat/reasoning.py)."""
        return _EFFORTS.get(self.effort or "", self.effort)


class _Turn(_Body):
    """What both POST bodies take: the conversation to continue, and how to sample."""

    model: str = Field(min_length=1)
    instructions: str | None = None
    previous_response_id: str | None = None
    max_output_tokens: Int | None = Field(None, ge=1)
    temperature: float | None = sampling_field("temperature")
    top_p: float | None = sampling_field("top_p")
    # llama.cpp's controls, as LM Studio's /api/v1/chat takes them
    top_k: Int | None = sampling_field("top_k")
    min_p: float | None = sampling_field("min_p")
    repeat_penalty: float | None = sampling_field("repeat_penalty")
    # Open Responses' fields, as chat completions'
    presence_penalty: float | None = sampling_field("presence_penalty")
    frequency_penalty: float | None = sampling_field("frequency_penalty")
    seed: Int | None = None
    conversation: Any = None
    ttl: float | None = Field(None, gt=0)  # LM Studio: idle seconds before a JIT-loaded model unloads
    # LM Studio's v0 field: a model key, "ngram", or "none" (service/speculation.py)
    draft_model: str | None = None
    # studiolo: reasoning tokens before it closes the reasoning itself (None: the model's default, else no cap)
    reasoning_budget: Int | None = Field(None, ge=0)

    def sampling(self) -> SamplingParams:
        return SamplingParams.given(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                                    min_p=self.min_p, repeat_penalty=self.repeat_penalty,
                                    presence_penalty=self.presence_penalty,
                                    frequency_penalty=self.frequency_penalty, seed=self.seed)

    def _check_continuation(self) -> None:
        if self.conversation is not None:  # silently ignoring it would lose the conversation
            raise InvalidRequest("the Conversations API is not served; continue with 'previous_response_id'",
                                 "conversation")
        if self.previous_response_id is not None:
            check_response_id(self.previous_response_id)  # a 400 before any model loads


class ResponseBody(_Turn):
    input: str | list[dict[str, Any]]
    store: bool = True
    stream: bool = False
    # function and mcp tools, each read by its own model (_parsed_tools()), so that an
    # error names the field as the client wrote it (a union's would name the member tried)
    tools: list[dict[str, Any]] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    include: list[str] | None = None
    top_logprobs: Int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    metadata: dict[str, str] | None = None
    preset: str | None = Field(None, min_length=1)  # LM Studio: a preset's settings, under the request's own
    reasoning: ReasoningConfig | None = None

    @property
    def logprobs(self) -> int | None:
        """GenerationOptions.logprobs: on only when ``include`` asks for them (OpenAI's switch)."""
        if LOGPROBS_INCLUDE not in (self.include or ()):
            return None
        return self.top_logprobs or 0

    def turn(self, max_json_depth: int = DEFAULT_MAX_DEPTH) -> Turn:
        self._check_continuation()
        self._check_stored_settings()
        constraint = self._constraint()
        options = GenerationOptions(sampling=self.sampling(), max_tokens=self.max_output_tokens,
                                    logprobs=self.logprobs, constraint=constraint,
                                    constraint_param="text.format" if constraint else None, preset=self.preset,
                                    draft_model=self.draft_model, reasoning_budget=self.reasoning_budget,
                                    given=given(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                                                min_p=self.min_p, repeat_penalty=self.repeat_penalty,
                                                max_tokens=self.max_output_tokens,
                                                constraint=constraint or (self.text and self.text.format)))
        tools = self._tools()
        if not self.mcp_tools():
            check_no_other_constraint(tools, options.constraint_param)
        items = self._items(max_json_depth)
        return Turn(self.model, items, options, self.instructions or None,
                    self.previous_response_id, self.store, tools, ttl=self.ttl,
                    unknown_previous="invalid",  # OpenAI: continuing an unknown response is a wrong request
                    reasoning_option=self.reasoning.option if self.reasoning else None,
                    reasoning_param="reasoning.effort", image_params=image_params(items))

    def settings(self) -> dict[str, Any]:
        """The request's settings as the response object repeats them (sampling values as used)."""
        sampling = self.sampling()
        choice = self.tool_choice
        return {
            "max_output_tokens": self.max_output_tokens,
            "parallel_tool_calls": self.parallel_tool_calls,
            "store": self.store,
            "temperature": sampling.temperature,
            "text": {"format": self._format_echo()},
            "tool_choice": choice.model_dump() if isinstance(choice, NamedFunctionChoice | McpChoice)
            else choice or "auto",
            "tools": [tool.echo() for _, tool in self._parsed_tools()],
            "top_logprobs": self.top_logprobs or 0,  # an integer in Open Responses' schema: 0 when none asked
            "top_p": sampling.top_p,
            "presence_penalty": sampling.presence_penalty,
            "frequency_penalty": sampling.frequency_penalty,
            "metadata": dict(self.metadata or {}),
            # the effort as asked (templates get the nearest they know); no summary is written
            "reasoning": {"effort": self.reasoning.effort if self.reasoning else None, "summary": None},
        }

    def _check_stored_settings(self) -> None:
        """The settings stored with the response (settings()) must be JSON, as its items must."""
        for index, tool in self._parsed_tools():
            if isinstance(tool, FunctionTool):
                check_json(tool.parameters, f"tools[{index}].parameters")
        fmt = self.text.format if self.text is not None else None
        if fmt is not None:
            check_json(fmt.schema_, "text.format.schema")

    def _items(self, max_json_depth: int) -> list[Item]:
        if isinstance(self.input, list) and not self.input:
            raise InvalidRequest("'input' is empty", "input")
        return input_items(self.input, max_json_depth)

    def _tools(self) -> Tools | None:
        """The function tools, checked; with MCP tools, None: those are offered with the servers'
        (tool_offer()), and only the function tools' own checks are made here."""
        offer = self.tool_offer()
        if self.mcp_tools():
            offered_tools(offer.specs, None, None, offer.parallel, _param_field(offer.params))
            return None
        return offered_tools(offer.specs, offer.choice, offer.named, offer.parallel, _param_field(offer.params))

    def tool_offer(self) -> ToolOffer:
        """The function tools and the tool choice, for service/mcp_responses.py to offer beside the MCP tools."""
        functions = [(index, tool) for index, tool in self._parsed_tools() if isinstance(tool, FunctionTool)]
        choice = self.tool_choice
        named = choice.name if isinstance(choice, NamedFunctionChoice | McpChoice) else None
        if isinstance(choice, McpChoice) and named is None:
            raise InvalidRequest("an mcp 'tool_choice' must name the tool ('name'): this server forces one "
                                 "named tool", "tool_choice.name")
        return ToolOffer(tuple(ToolSpec(tool.name, tool.description, tool.parameters, bool(tool.strict))
                               for _, tool in functions), tuple(f"tools[{index}]" for index, _ in functions),
                         choice if isinstance(choice, str) else None, named, self.parallel_tool_calls)

    def mcp_tools(self) -> list[McpTool]:
        return [tool.tool(f"tools[{index}]") for index, tool in self._parsed_tools() if isinstance(tool, McpToolBody)]

    def _parsed_tools(self) -> list[tuple[int, FunctionTool | McpToolBody]]:
        return [(index, _tool(index, raw)) for index, raw in enumerate(self.tools or ())]

    def _constraint(self) -> Constraint | None:
        fmt = self.text.format if self.text is not None else None
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return spec_of("json_object", True, None, "text.format")
        if fmt.schema_ is None:
            raise InvalidRequest("'text.format.schema' is required for a json_schema format", "text.format.schema")
        return spec_of("json", fmt.schema_, None, "text.format.schema")

    def _format_echo(self) -> dict[str, Any]:
        fmt = self.text.format if self.text is not None else None
        if fmt is None or fmt.type != "json_schema":
            return {"type": fmt.type if fmt is not None else "text"}
        # every field present, as both the openai package's types and Open Responses' schema require
        return {"type": "json_schema", "name": fmt.name or UNNAMED_FORMAT, "description": fmt.description,
                "schema": fmt.schema_, "strict": bool(fmt.strict)}



class CompactBody(_Turn):
    """``POST /v1/responses/compact``: OpenAI's fields (``model``, ``input``, ``instructions``,
    ``previous_response_id``; the rest, such as ``prompt_cache_key``, ignored) and studiolo's
    sampling fields, ``max_output_tokens`` bounding the summary."""

    input: str | list[dict[str, Any]] | None = None

    def compaction(self, max_json_depth: int = DEFAULT_MAX_DEPTH) -> CompactRequest:
        self._check_continuation()
        options = GenerationOptions(sampling=self.sampling(), max_tokens=self.max_output_tokens,
                                    draft_model=self.draft_model)
        items = input_items(self.input, max_json_depth) if self.input is not None else []
        return CompactRequest(self.model, items, options, self.instructions or None, self.previous_response_id,
                              self.ttl)


def _param_field(params: tuple[str, ...]) -> Callable[[int, str], str]:
    """Responses' function tools are flat: ``tools[0].parameters``, not chat's ``tools[0].function.parameters``
    (``params``: each function tool's own place among all tools)."""
    return lambda index, name: f"{params[index]}.{name}"


def _tool(index: int, raw: dict[str, Any]) -> FunctionTool | McpToolBody:
    kind = raw.get("type")
    models: dict[str, type[FunctionTool] | type[McpToolBody]] = {"function": FunctionTool, "mcp": McpToolBody}
    model = models.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise InvalidRequest(f"tools of type {kind!r} are not supported; expected 'function' or 'mcp'",
                             f"tools[{index}].type")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:  # the same message and param as a body error, with the tool's place in front
        first = exc.errors()[0]
        raise describe_validation([{**first, "loc": ("body", "tools", index, *first["loc"])}]) from None


def input_items(given: str | list[dict[str, Any]], max_json_depth: int = DEFAULT_MAX_DEPTH) -> list[Item]:
    """A request's ``input`` as stored items: a string is one user message."""
    if isinstance(given, str):
        return [user_message(given)]
    return [_input_item(index, raw, max_json_depth) for index, raw in enumerate(given)]
