"""Tool calling on the wire: OpenAI's ``tools``, ``tool_choice``, ``parallel_tool_calls`` and the
messages that carry calls and results, turned into domain values.

The service checks the tools (service/tools.py: names, parameter schemas, the choice) and that a
tool result answers an earlier call (service/tool_calls.py), for both chat APIs; every problem is a
400 naming the field, as chat completions name it. A call in the history whose arguments are not a
JSON object is refused here, as it is read.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field

from studiolo.api.body import Body
from studiolo.domain.chat import ToolCall, Tools, ToolSpec
from studiolo.domain.errors import InvalidRequest
from studiolo.service.tools import offered_tools


class FunctionDefinition(Body):
    # OpenAI: letters, digits, underscores and dashes, at most 64 characters (dots allowed too)
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(Body):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(Body):
    name: str


class NamedToolChoice(Body):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class CalledFunction(Body):
    name: str
    arguments: str  # a JSON object as text


class MessageToolCall(Body):
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: CalledFunction


def tools_of(definitions: list[ToolDefinition] | None, choice: ToolChoice | None, parallel: bool) -> Tools | None:
    """The request's tools, checked by the service; None when it offers none (and names none)."""
    specs = [tool_spec(definition.function) for definition in definitions or ()]
    named = choice.function.name if isinstance(choice, NamedToolChoice) else None
    plain = choice if isinstance(choice, str) else None
    return offered_tools(specs, plain, named, parallel, _function_field)


def tool_spec(function: FunctionDefinition) -> ToolSpec:
    return ToolSpec(function.name, function.description, function.parameters, bool(function.strict))


def _function_field(index: int, name: str) -> str:
    return f"tools[{index}].function.{name}"


def history_calls(index: int, calls: list[MessageToolCall] | None) -> tuple[ToolCall, ...]:
    """An assistant message's calls; their arguments must be JSON objects."""
    result = []
    for call_index, call in enumerate(calls or ()):
        try:
            arguments = json.loads(call.function.arguments)
        except json.JSONDecodeError as exc:
            arguments = exc
        if not isinstance(arguments, dict):
            raise InvalidRequest("a tool call's arguments must be a JSON object (as text)",
                                 f"messages[{index}].tool_calls[{call_index}].function.arguments")
        result.append(ToolCall(call.id, call.function.name, call.function.arguments))
    return tuple(result)
