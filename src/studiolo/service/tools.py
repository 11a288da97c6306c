"""The tools a chat request offers the model, checked: every API family's tool definitions go
through here once they are read off the wire.

Every problem is an InvalidRequest naming the request's field: a duplicate tool name, a
parameters schema that is not an object's or that llguidance cannot compile, the schemas together
past the server's bounds (they become one grammar), a ``tool_choice`` naming no offered tool (or
``required`` with none offered), and a structured-output constraint next to tools the model may
call (one grammar per output).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from studiolo.domain.chat import Tools, ToolSpec
from studiolo.domain.errors import InvalidRequest
from studiolo.engine.constraint_limits import check_tool_schemas
from studiolo.engine.constraints import ConstraintSpec, InvalidConstraint, validate

# How the request names a field of its index-th tool ("name" or "parameters"), for errors:
# chat completions nest them in "function", Responses' tools are flat
ToolField = Callable[[int, str], str]


def offered_tools(
    specs: Sequence[ToolSpec], choice: str | None, named: str | None, parallel: bool, field: ToolField
) -> Tools | None:
    """The request's tools, checked; None when it offers none (and names none).

    ``choice`` is "none", "auto" or "required" (None: not given); ``named`` the tool a named choice
    asks for."""
    if not specs:
        if named is not None or choice == "required":
            raise InvalidRequest("'tool_choice' asks for a tool call but the request has no 'tools'", "tool_choice")
        return None
    try:  # together they become one grammar: their sizes add up
        check_tool_schemas(spec.parameters for spec in specs)
    except InvalidConstraint as exc:
        raise InvalidRequest(str(exc), "tools") from None
    for index, spec in enumerate(specs):
        _check_tool(index, spec, specs[:index], field)
    if named is not None and all(spec.name != named for spec in specs):
        offered = ", ".join(spec.name for spec in specs)
        raise InvalidRequest(f"'tool_choice' names the tool '{named}', which is not in 'tools' ({offered})",
                             "tool_choice")
    return Tools(tuple(specs), named or choice or "auto", parallel)


def _check_tool(index: int, spec: ToolSpec, earlier: Sequence[ToolSpec], field: ToolField) -> None:
    if any(other.name == spec.name for other in earlier):
        raise InvalidRequest(f"two tools are named '{spec.name}'", field(index, "name"))
    if spec.parameters is None:
        return
    if spec.parameters.get("type", "object") != "object":
        raise InvalidRequest("a tool's parameters must be a JSON schema of an object (its arguments)",
                             field(index, "parameters"))
    try:  # read leniently, as the call grammar reads it (chat/tool_formats.py _JSON_STYLE)
        validate(ConstraintSpec.json_schema({**spec.parameters, "x-guidance": {"lenient": True}}))
    except InvalidConstraint as exc:
        raise InvalidRequest(str(exc), field(index, "parameters")) from None


def check_no_other_constraint(tools: Tools | None, constraint_param: str | None) -> None:
    """One grammar per output: tools the model may call leave no room for another constraint."""
    if tools is not None and tools.active and constraint_param is not None:
        raise InvalidRequest(
            f"'{constraint_param}' cannot be combined with tools the model may call; send "
            "\"tool_choice\": \"none\" to constrain a plain answer", constraint_param)
