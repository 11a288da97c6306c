"""Structured-output fields of a request, turned into one constraint spec.

Three families say the same thing in different words, and all are accepted on
``/v1/completions`` and ``/v1/chat/completions`` (and LM Studio's v0 twins):

- OpenAI: ``response_format`` ``{"type": "text" | "json_object" | "json_schema", ...}``; BladeLLM
  sends the type alone as a string (``"response_format": "json_object"``), and llama-server's
  clients put a ``schema`` next to ``json_object``: both are taken.
- BladeLLM (vLLM before 0.12): ``guided_json``, ``guided_regex``, ``guided_choice``,
  ``guided_grammar``, with ``guided_whitespace_pattern`` for the JSON ones.
- vLLM 0.12+: ``structured_outputs: {json | regex | choice | grammar | json_object, whitespace_pattern}``.

Here the fields are read off the wire, in order; building and checking each constraint, and
refusing more than one, is the service's (service/constraints.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import Field

from studiolo.api.body import Body
from studiolo.domain.errors import InvalidRequest
from studiolo.service import constraints
from studiolo.service.constraints import AskedConstraint, Constraint


class StructuredOutputs(Body):
    json_: dict[str, Any] | str | None = Field(None, alias="json")  # 'json' would shadow BaseModel.json
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    whitespace_pattern: str | None = None


ResponseFormat = str | dict[str, Any]


class GuidedFields(Body):
    """BladeLLM's and vLLM's constrained-decoding fields, read by ``constraint_of``: every generation
    body of every family takes them."""

    guided_json: dict[str, Any] | bool | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_whitespace_pattern: str | None = None
    structured_outputs: StructuredOutputs | None = None


def constraint_of(body: Any) -> tuple[Constraint, str] | None:
    """The request's one constraint and the field it came from, or None; InvalidRequest if bad."""
    asked = [item for item in _candidates(body) if item is not None]
    return constraints.the_one_constraint(asked, _whitespace_fields(body))


def _candidates(body: Any) -> Iterator[AskedConstraint | None]:
    """Each field asking for a constraint, built as it is met (the first bad one is the error)."""
    whitespace = body.guided_whitespace_pattern
    constraints.check_whitespace_pattern(whitespace, "guided_whitespace_pattern")
    yield _response_format(body.response_format, whitespace)
    # BladeLLM's guided_* fields and vLLM's structured_outputs name the same kinds (the old guided
    # set had no json_object field)
    guided = {kind: getattr(body, f"guided_{kind}", None) for kind in constraints.KINDS}
    yield from _named_fields(guided, "guided_", whitespace)
    outputs: StructuredOutputs | None = body.structured_outputs
    if outputs is not None:
        constraints.check_whitespace_pattern(outputs.whitespace_pattern, "structured_outputs.whitespace_pattern")
        values = {kind: getattr(outputs, "json_" if kind == "json" else kind) for kind in constraints.KINDS}
        yield from _named_fields(values, "structured_outputs.", outputs.whitespace_pattern)


def _named_fields(values: dict[str, Any], prefix: str, whitespace: str | None) -> Iterator[AskedConstraint | None]:
    """A spec for each kind given a value, named ``prefix + kind`` in errors."""
    for kind, value in values.items():
        if value is not None:
            yield _asked(constraints.spec_of(kind, value, whitespace, prefix + kind), prefix + kind)


def _asked(spec: Constraint | None, param: str) -> AskedConstraint | None:
    return None if spec is None else (spec, param)


def _response_format(value: ResponseFormat | None, whitespace: str | None) -> AskedConstraint | None:
    if value is None:
        return None
    kind = value if isinstance(value, str) else value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        schema = None if isinstance(value, str) else value.get("schema")
        if schema is not None:  # llama-server's {"type": "json_object", "schema": {...}}
            return _json_schema(schema, "response_format.schema", whitespace)
        return _asked(constraints.spec_of("json_object", True, whitespace, "response_format"), "response_format")
    if kind == "json_schema" and isinstance(value, dict):
        wrapper = value.get("json_schema")
        if not isinstance(wrapper, dict) or "schema" not in wrapper:
            raise InvalidRequest(
                "a json_schema response format needs 'json_schema': {\"name\": ..., \"schema\": {...}}",
                "response_format.json_schema.schema",
            )
        return _json_schema(wrapper["schema"], "response_format.json_schema.schema", whitespace)
    raise InvalidRequest(
        f"unknown response format type {kind!r}; expected 'text', 'json_object' or 'json_schema'",
        "response_format.type" if isinstance(value, dict) else "response_format",
    )


def _json_schema(schema: Any, param: str, whitespace: str | None) -> AskedConstraint | None:
    """A response format's schema: an object (or boolean), its errors naming the schema's own field,
    finer than the response format's."""
    if not isinstance(schema, (dict, bool)):
        raise InvalidRequest("a JSON schema must be a JSON object", param)
    return _asked(constraints.spec_of("json", schema, whitespace, param), "response_format")


def _whitespace_fields(body: Any) -> list[str]:
    """The whitespace-pattern fields the request gave: they need a JSON constraint to apply to."""
    given = []
    if body.guided_whitespace_pattern is not None:
        given.append("guided_whitespace_pattern")
    outputs = body.structured_outputs
    if outputs is not None and outputs.whitespace_pattern is not None:
        given.append("structured_outputs.whitespace_pattern")
    return given
