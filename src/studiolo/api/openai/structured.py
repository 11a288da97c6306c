"""Structured-output fields of a request, turned into one constraint spec.

Three families say the same thing in different words, and all are accepted on
``/v1/completions`` and ``/v1/chat/completions`` (and LM Studio's v0 twins):

- OpenAI: ``response_format`` ``{"type": "text" | "json_object" | "json_schema", ...}``; BladeLLM
  sends the type alone as a string (``"response_format": "json_object"``), and llama-server's
  clients put a ``schema`` next to ``json_object``: both are taken.
- BladeLLM (vLLM before 0.12): ``guided_json``, ``guided_regex``, ``guided_choice``,
  ``guided_grammar``, with ``guided_whitespace_pattern`` for the JSON ones.
- vLLM 0.12+: ``structured_outputs: {json | regex | choice | grammar | json_object, whitespace_pattern}``.

A request may carry one constraint: two (``guided_json`` with a ``json_schema`` response format,
say) is a 400 naming the second, as vLLM refuses it, rather than a silent pick.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from studiolo.api.body import Body
from studiolo.engine.constraints import ConstraintSpec, InvalidConstraint, grammar_of
from studiolo.service.types import InvalidRequest


class StructuredOutputs(Body):
    json_: dict[str, Any] | str | None = Field(None, alias="json")  # 'json' would shadow BaseModel.json
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    whitespace_pattern: str | None = None


ResponseFormat = str | dict[str, Any]


def constraint_of(body: Any) -> tuple[ConstraintSpec, str] | None:
    """The request's one constraint and the field it came from, or None; InvalidRequest if bad."""
    found = [item for item in _candidates(body) if item is not None]
    if len(found) > 1:
        (_, first), (_, second) = found[0], found[1]
        raise InvalidRequest(
            f"'{second}' and '{first}' both constrain the output; send only one of them", second
        )
    unused = _stray_whitespace_pattern(body, found)
    if unused:
        raise InvalidRequest(f"'{unused}' applies to JSON output only (a JSON schema or json_object)", unused)
    return found[0] if found else None


# What BladeLLM's guided_* fields and vLLM's structured_outputs name alike (the old guided set had
# no json_object field), and how each becomes a spec; whitespace applies to JSON only.
_SPEC_OF = {
    "json": lambda value, whitespace: ConstraintSpec.json_schema(value, whitespace),
    "json_object": lambda value, whitespace: ConstraintSpec.json_object(whitespace) if value else None,
    "regex": lambda value, _: ConstraintSpec.regex(value),
    "choice": lambda value, _: ConstraintSpec.choice(value),
    "grammar": lambda value, _: ConstraintSpec.grammar(value),
}


def _candidates(body: Any):
    whitespace = body.guided_whitespace_pattern
    _check_whitespace(whitespace, "guided_whitespace_pattern")
    yield _guarded("response_format", lambda: _response_format(body.response_format, whitespace))
    guided = {kind: getattr(body, f"guided_{kind}", None) for kind in _SPEC_OF}
    yield from _named_fields(guided, "guided_", whitespace)
    outputs: StructuredOutputs | None = body.structured_outputs
    if outputs is not None:
        _check_whitespace(outputs.whitespace_pattern, "structured_outputs.whitespace_pattern")
        values = {kind: getattr(outputs, "json_" if kind == "json" else kind) for kind in _SPEC_OF}
        yield from _named_fields(values, "structured_outputs.", outputs.whitespace_pattern)


def _check_whitespace(pattern: str | None, param: str) -> None:
    """A bad pattern is its own field's error, not the constraint's it would be used in."""
    if pattern is not None:
        try:
            grammar_of(ConstraintSpec.json_object(pattern))
        except InvalidConstraint as exc:
            raise InvalidRequest(str(exc), param) from None


def _named_fields(values: dict[str, Any], prefix: str, whitespace: str | None):
    """A spec for each kind given a value, named ``prefix + kind`` in errors."""
    for kind, value in values.items():
        if value is not None:
            yield _guarded(prefix + kind, lambda make=_SPEC_OF[kind], value=value: make(value, whitespace))


def _guarded(param: str, make) -> tuple[ConstraintSpec, str] | None:
    try:
        spec = make()
    except InvalidConstraint as exc:
        raise InvalidRequest(str(exc), param) from None
    return None if spec is None else (spec, param)


def _response_format(value: ResponseFormat | None, whitespace: str | None) -> ConstraintSpec | None:
    if value is None:
        return None
    kind = value if isinstance(value, str) else value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        schema = None if isinstance(value, str) else value.get("schema")
        if schema is not None:  # llama-server's {"type": "json_object", "schema": {...}}
            param = "response_format.schema"
            return _spec_named(param, lambda: ConstraintSpec.json_schema(_schema_object(schema, param), whitespace))
        return ConstraintSpec.json_object(whitespace)
    if kind == "json_schema" and isinstance(value, dict):
        wrapper = value.get("json_schema")
        if not isinstance(wrapper, dict) or "schema" not in wrapper:
            raise InvalidRequest(
                "a json_schema response format needs 'json_schema': {\"name\": ..., \"schema\": {...}}",
                "response_format.json_schema.schema",
            )
        param = "response_format.json_schema.schema"
        return _spec_named(param, lambda: ConstraintSpec.json_schema(_schema_object(wrapper["schema"], param), whitespace))
    raise InvalidRequest(
        f"unknown response format type {kind!r}; expected 'text', 'json_object' or 'json_schema'",
        "response_format.type" if isinstance(value, dict) else "response_format",
    )


def _spec_named(param: str, make) -> ConstraintSpec:
    """A schema's own errors name the schema's field, finer than the response format's."""
    try:
        return make()
    except InvalidConstraint as exc:
        raise InvalidRequest(str(exc), param) from None


def _schema_object(schema: Any, param: str) -> dict[str, Any] | bool:
    if not isinstance(schema, (dict, bool)):
        raise InvalidRequest("a JSON schema must be a JSON object", param)
    return schema


def _stray_whitespace_pattern(body: Any, found: list[tuple[ConstraintSpec, str]]) -> str | None:
    """The whitespace-pattern field given without a JSON constraint to apply to, if any."""
    is_json = bool(found) and found[0][0].kind in ("json_schema", "json_object")
    if is_json:
        return None
    if body.guided_whitespace_pattern is not None:
        return "guided_whitespace_pattern"
    outputs = body.structured_outputs
    if outputs is not None and outputs.whitespace_pattern is not None:
        return "structured_outputs.whitespace_pattern"
    return None
