"""JSON schemas of varied shape for the structured-output tests, each with a prompt.

They cover what clients send: nested objects, arrays with bounds, enums and consts, anyOf and
nullable types, ``$defs``/``$ref``, string formats, patterns and length bounds, numbers with
ranges, tuples, closed and open objects. Strings carry a ``maxLength`` where a small model would
otherwise ramble: the test is whether the output is valid, not whether a 135M model is terse.
"""

from __future__ import annotations

import jsonschema

NAME = {"type": "string", "minLength": 1, "maxLength": 24}
SHORT = {"type": "string", "maxLength": 40}

SCHEMAS: dict[str, tuple[str, dict]] = {
    "flat_person": (
        "Describe a person.",
        {"type": "object", "properties": {"name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
         "required": ["name", "age"], "additionalProperties": False},
    ),
    "boolean_flag": (
        "Is water wet?",
        {"type": "object", "properties": {"answer": {"type": "boolean"}}, "required": ["answer"]},
    ),
    "enum_color": (
        "Pick a primary color.",
        {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"]},
    ),
    "const_version": (
        "Give the API version.",
        {"type": "object", "properties": {"version": {"const": "v1"}, "ok": {"type": "boolean"}},
         "required": ["version", "ok"]},
    ),
    "number_range": (
        "Give a temperature in Celsius.",
        {"type": "object", "properties": {"celsius": {"type": "number", "minimum": -50, "maximum": 60}},
         "required": ["celsius"]},
    ),
    "string_list": (
        "List three fruits.",
        {"type": "object",
         "properties": {"fruits": {"type": "array", "items": NAME, "minItems": 3, "maxItems": 3}},
         "required": ["fruits"]},
    ),
    "integer_list": (
        "List some prime numbers.",
        {"type": "object",
         "properties": {"primes": {"type": "array", "items": {"type": "integer", "minimum": 2, "maximum": 1000},
                                   "minItems": 1, "maxItems": 6}},
         "required": ["primes"]},
    ),
    "top_level_array": (
        "List two cities.",
        {"type": "array", "items": NAME, "minItems": 2, "maxItems": 2},
    ),
    "nested_address": (
        "Give a person with an address.",
        {"type": "object",
         "properties": {
             "name": NAME,
             "address": {"type": "object",
                         "properties": {"street": SHORT, "city": NAME, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                         "required": ["street", "city", "zip"], "additionalProperties": False}},
         "required": ["name", "address"], "additionalProperties": False},
    ),
    "array_of_objects": (
        "List two books with their authors.",
        {"type": "object",
         "properties": {"books": {"type": "array", "minItems": 2, "maxItems": 2,
                                  "items": {"type": "object", "properties": {"title": SHORT, "author": NAME},
                                            "required": ["title", "author"], "additionalProperties": False}}},
         "required": ["books"]},
    ),
    "defs_and_refs": (
        "Describe a line segment by its two end points.",
        {"$defs": {"point": {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
                             "required": ["x", "y"], "additionalProperties": False}},
         "type": "object", "properties": {"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}},
         "required": ["start", "end"], "additionalProperties": False},
    ),
    "definitions_ref": (
        "Give a user and their role.",
        {"definitions": {"role": {"enum": ["admin", "editor", "viewer"]}},
         "type": "object", "properties": {"user": NAME, "role": {"$ref": "#/definitions/role"}},
         "required": ["user", "role"]},
    ),
    "any_of_value": (
        "Give a value that is a number or a word.",
        {"type": "object", "properties": {"value": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 12}]}},
         "required": ["value"]},
    ),
    "nullable_field": (
        "Give a person's middle name, or null if none.",
        {"type": "object", "properties": {"first": NAME, "middle": {"type": ["string", "null"], "maxLength": 20}},
         "required": ["first", "middle"]},
    ),
    "string_formats": (
        "Give an event with its date and a contact email.",
        {"type": "object",
         "properties": {"event": SHORT, "date": {"type": "string", "format": "date"},
                        "email": {"type": "string", "format": "email", "maxLength": 40}},
         "required": ["event", "date", "email"], "additionalProperties": False},
    ),
    "uuid_format": (
        "Give a record with an id.",
        {"type": "object", "properties": {"id": {"type": "string", "format": "uuid"}}, "required": ["id"]},
    ),
    "pattern_code": (
        "Give a product code.",
        {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"}},
         "required": ["code"]},
    ),
    "length_bounds": (
        "Give a nickname and a motto.",
        {"type": "object",
         "properties": {"nickname": {"type": "string", "minLength": 3, "maxLength": 8},
                        "motto": {"type": "string", "minLength": 10, "maxLength": 30}},
         "required": ["nickname", "motto"]},
    ),
    "tuple_items": (
        "Give a latitude and longitude pair.",
        {"type": "array", "prefixItems": [{"type": "number", "minimum": -90, "maximum": 90},
                                          {"type": "number", "minimum": -180, "maximum": 180}],
         "items": False, "minItems": 2},
    ),
    "optional_fields": (
        "Describe a car.",
        {"type": "object",
         "properties": {"make": NAME, "model": NAME, "year": {"type": "integer", "minimum": 1900, "maximum": 2030},
                        "electric": {"type": "boolean"}},
         "required": ["make"], "additionalProperties": False},
    ),
    "deep_nesting": (
        "Describe a company with a department and its manager.",
        {"type": "object",
         "properties": {"company": {"type": "object", "properties": {
             "name": NAME,
             "department": {"type": "object", "properties": {
                 "title": NAME,
                 "manager": {"type": "object", "properties": {"name": NAME, "level": {"type": "integer", "minimum": 1, "maximum": 9}},
                             "required": ["name", "level"], "additionalProperties": False}},
                 "required": ["title", "manager"], "additionalProperties": False}},
             "required": ["name", "department"], "additionalProperties": False}},
         "required": ["company"]},
    ),
    "enum_of_numbers": (
        "Rate this movie from 1 to 5 stars.",
        {"type": "object", "properties": {"stars": {"enum": [1, 2, 3, 4, 5]}, "review": SHORT},
         "required": ["stars", "review"]},
    ),
    "mixed_enum": (
        "Give a status.",
        {"type": "object", "properties": {"status": {"enum": ["ok", 404, None, True]}}, "required": ["status"]},
    ),
    "one_of_shapes": (
        "Describe a shape: a circle with a radius or a square with a side.",
        {"type": "object", "properties": {"shape": {"oneOf": [
            {"type": "object", "properties": {"kind": {"const": "circle"}, "radius": {"type": "number", "minimum": 0, "maximum": 100}},
             "required": ["kind", "radius"], "additionalProperties": False},
            {"type": "object", "properties": {"kind": {"const": "square"}, "side": {"type": "number", "minimum": 0, "maximum": 100}},
             "required": ["kind", "side"], "additionalProperties": False}]}},
         "required": ["shape"]},
    ),
    "all_of_merge": (
        "Give an item with a name and a price.",
        {"allOf": [{"type": "object", "properties": {"name": NAME}, "required": ["name"]},
                   {"type": "object", "properties": {"price": {"type": "number", "minimum": 0, "maximum": 10000}},
                    "required": ["price"]}]},
    ),
    "additional_properties_typed": (
        "Map three animals to their number of legs.",
        {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 100},
         "minProperties": 1, "maxProperties": 3},
    ),
    "unique_tags": (
        "Tag this article about space travel.",
        {"type": "object",
         "properties": {"tags": {"type": "array", "items": {"enum": ["science", "space", "travel", "rockets", "news"]},
                                 "minItems": 1, "maxItems": 3}},
         "required": ["tags"]},
    ),
    "integer_multiple": (
        "Give an even number of eggs.",
        {"type": "object", "properties": {"eggs": {"type": "integer", "minimum": 0, "maximum": 48, "multipleOf": 2}},
         "required": ["eggs"]},
    ),
    "exclusive_bounds": (
        "Give a probability strictly between 0 and 1.",
        {"type": "object", "properties": {"p": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}},
         "required": ["p"]},
    ),
    "date_time_format": (
        "When was the meeting? Give a timestamp.",
        {"type": "object", "properties": {"when": {"type": "string", "format": "date-time"}}, "required": ["when"]},
    ),
    "matrix": (
        "Give a 2 by 2 matrix of small integers.",
        {"type": "object",
         "properties": {"rows": {"type": "array", "minItems": 2, "maxItems": 2,
                                 "items": {"type": "array", "minItems": 2, "maxItems": 2,
                                           "items": {"type": "integer", "minimum": -9, "maximum": 9}}}},
         "required": ["rows"]},
    ),
    "chained_refs": (
        "Give a parent and their children.",
        {"$defs": {"person": {"type": "object", "properties": {"name": NAME}, "required": ["name"]},
                   "family": {"type": "object",
                              "properties": {"parent": {"$ref": "#/$defs/person"},
                                             "children": {"type": "array", "maxItems": 3, "items": {"$ref": "#/$defs/person"}}},
                              "required": ["parent", "children"]}},
         "$ref": "#/$defs/family"},
    ),
    "boolean_schema_true": (
        # "age": true admits any JSON value, of any length: test_structured_output runs it greedy only
        "Give a person's name and age.",
        {"type": "object", "properties": {"name": {"type": "string", "maxLength": 40}, "age": True},
         "required": ["name", "age"]},
    ),
}


def validator_for(schema: dict) -> jsonschema.protocols.Validator:
    """A validator of the schema's own draft (2020-12 if it names none), checking string formats."""
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)
