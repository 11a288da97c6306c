"""How a JSON schema is read before llguidance compiles it: as llama.cpp's and xgrammar's JSON
grammars read it, so that small models finish (every output stays valid under the schema sent).

- An object that lists ``properties`` and says nothing of ``additionalProperties`` gets no other
  keys; an ``allOf`` gets the keys any branch lists.
- A number without bounds gets llama.cpp's (16 digits before the point) and at most 10 after it.
"""

from __future__ import annotations

from typing import Any

_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
_SCHEMA_LISTS = frozenset({"anyOf", "oneOf", "prefixItems"})
_SCHEMAS = frozenset({"items", "additionalProperties", "not", "if", "then", "else", "contains",
                      "unevaluatedItems", "unevaluatedProperties", "propertyNames", "additionalItems"})
_OPEN_KEYS = frozenset({"additionalProperties", "patternProperties", "unevaluatedProperties", "allOf"})


def closed_objects(schema, *, close: bool = True):
    """The schema with ``additionalProperties: false`` wherever an object lists its properties
    and says nothing of others, as llama.cpp's and xgrammar's JSON grammars read such schemas.

    Without it the grammar lets the model invent keys after the listed ones, and small models
    do, often until they run out of tokens. Every output of the closed schema is valid under the
    original. ``allOf`` branches are left open: closing each would forbid the others' keys.
    """
    if not isinstance(schema, dict):
        return schema  # true, false, or something the compiler will refuse
    result: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            result[key] = {name: closed_objects(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            result[key] = [closed_objects(sub) for sub in value]
        elif key == "allOf" and isinstance(value, list):
            result[key] = [closed_objects(sub, close=False) for sub in value]
        elif key in _SCHEMAS:
            result[key] = closed_objects(value)
        else:
            result[key] = value
    if close and "properties" in schema and not _OPEN_KEYS & schema.keys():
        result["additionalProperties"] = False
    elif close and "allOf" in schema:
        _close_merged(result)
    _bound_numbers(result)
    return result


# llama.cpp's JSON grammars allow at most 16 digits before the point and 16 after. llguidance
# allows any number, and a small model can get stuck appending digits (0.5000000...) until it
# runs out of tokens. These bounds are llama.cpp's, but for 10 digits after the point, the most
# llguidance's multipleOf takes (1e-12 already fails to compile: "too many digits").
_MAX_MAGNITUDE = 10**16 - 1
_SMALLEST_STEP = 1e-10


def _bound_numbers(schema: dict) -> None:
    """Give numbers without bounds llama.cpp's digit limits (a subset of what the schema allows)."""
    kinds = schema.get("type")
    kinds = {kinds} if isinstance(kinds, str) else set(kinds) if isinstance(kinds, list) else set()
    if not kinds & {"number", "integer"} or "multipleOf" in schema:
        return
    if "number" in kinds:
        schema["multipleOf"] = _SMALLEST_STEP  # at most 10 digits after the point, no exponent
    if not {"minimum", "exclusiveMinimum"} & schema.keys():
        schema["minimum"] = -_MAX_MAGNITUDE
    if not {"maximum", "exclusiveMaximum"} & schema.keys():
        schema["maximum"] = _MAX_MAGNITUDE


def _close_merged(schema: dict) -> None:
    """Close an allOf's object at its own level: the keys any branch lists, and no others."""
    branches = schema["allOf"]
    if schema.keys() & (_OPEN_KEYS - {"allOf"}) or not all(isinstance(b, dict) for b in branches):
        return
    if any(b.keys() & (_OPEN_KEYS - {"additionalProperties"}) or "properties" not in b for b in branches):
        return  # a branch with its own allOf, patterns or no property list: leave it open
    if any(b.get("additionalProperties", False) is not False for b in branches):
        return  # a branch that allows other keys, on purpose
    listed = {name: True for branch in branches for name in branch["properties"]}
    schema["properties"] = {**listed, **schema.get("properties", {})}
    schema["additionalProperties"] = False
