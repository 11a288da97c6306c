"""Tool calling on the wire: OpenAI's ``tools``, ``tool_choice``, ``parallel_tool_calls`` and the
messages that carry calls and results, checked and turned into domain values.

Every problem is a 400 naming the field: a duplicate tool name, a parameters schema llguidance
cannot compile, a ``tool_choice`` naming no offered tool (or ``required`` with none offered), a
call whose arguments are not a JSON object, and a
structured-output constraint next to tools the model may call (one grammar per output). A tool
result must answer an earlier call: service/tool_calls.py checks that, for both chat APIs.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field

from studiolo.api.body import Body
from studiolo.engine.constraint_limits import check_tool_schemas
from studiolo.engine.constraints import ConstraintSpec, InvalidConstraint, validate
from studiolo.service.types import InvalidRequest, ToolCall, Tools, ToolSpec


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
    """The request's tools, checked; None when it offers none (and names none)."""
    named = choice.function.name if isinstance(choice, NamedToolChoice) else None
    if not definitions:
        if named is not None or choice == "required":
            raise InvalidRequest("'tool_choice' asks for a tool call but the request has no 'tools'", "tool_choice")
        return None
    try:  # together they become one grammar: their sizes add up
        check_tool_schemas(definition.function.parameters for definition in definitions)
    except InvalidConstraint as exc:
        raise InvalidRequest(str(exc), "tools") from None
    specs = []
    for index, definition in enumerate(definitions):
        function = definition.function
        if any(spec.name == function.name for spec in specs):
            raise InvalidRequest(f"two tools are named '{function.name}'", f"tools[{index}].function.name")
        if function.parameters is not None:
            if function.parameters.get("type", "object") != "object":
                raise InvalidRequest("a tool's parameters must be a JSON schema of an object (its arguments)",
                                     f"tools[{index}].function.parameters")
            try:
                validate(ConstraintSpec.json_schema(function.parameters))
            except InvalidConstraint as exc:
                raise InvalidRequest(str(exc), f"tools[{index}].function.parameters") from None
        specs.append(ToolSpec(function.name, function.description, function.parameters, bool(function.strict)))
    if named is not None and all(spec.name != named for spec in specs):
        offered = ", ".join(spec.name for spec in specs)
        raise InvalidRequest(f"'tool_choice' names the tool '{named}', which is not in 'tools' ({offered})",
                             "tool_choice")
    return Tools(tuple(specs), named or choice or "auto", parallel)


def check_no_other_constraint(tools: Tools | None, constraint_param: str | None) -> None:
    if tools is not None and tools.active and constraint_param is not None:
        raise InvalidRequest(
            f"'{constraint_param}' cannot be combined with tools the model may call; send "
            "\"tool_choice\": \"none\" to constrain a plain answer", constraint_param)


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
