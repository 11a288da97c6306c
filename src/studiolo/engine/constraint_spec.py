"""What a sequence's output must match: the spec every constraint is compiled from, and its builders.

The builders bound each definition before anything recursive sees it (engine/constraint_limits.py),
so a spec that exists is safe to hand to llguidance; engine/constraints.py compiles it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from llguidance.gbnf_to_lark import is_lark_syntax

from studiolo.engine import constraint_limits as bounds
from studiolo.engine.constraint_limits import InvalidConstraint
from studiolo.engine.json_schema import closed_objects

JSON_KINDS = frozenset({"json_schema", "json_object"})
KINDS = JSON_KINDS | {"regex", "choice", "lark", "gbnf"}


@dataclass(frozen=True)
class ConstraintSpec:
    """What a sequence's output must match; hashable, so it keys the compile cache.

    ``definition`` per kind: the schema as JSON text (json_schema), None (json_object), the
    pattern (regex), a tuple of strings (choice), the grammar text (lark, gbnf). Build specs
    with the class methods, which accept a schema as a dict and choices as any iterable.
    ``whitespace_pattern`` (JSON kinds only) is the regex allowed between JSON tokens; None
    means ``JSON_WHITESPACE``. ``end_outside``: wherever the grammar may end, what the model would
    write outside it counts as ending (see ``ConstraintState.apply``).
    """

    kind: str
    definition: str | tuple[str, ...] | None = None
    whitespace_pattern: str | None = None
    end_outside: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidConstraint(f"unknown constraint kind {self.kind!r}; expected one of {sorted(KINDS)}")
        if self.whitespace_pattern is not None and self.kind not in JSON_KINDS:
            raise InvalidConstraint("a whitespace pattern applies to JSON constraints only")
        definition_types: dict[str, type] = {"json_object": type(None), "choice": tuple}
        expected = definition_types.get(self.kind, str)
        if not isinstance(self.definition, expected):
            raise InvalidConstraint(f"a {self.kind} constraint needs a {expected.__name__} definition")

    @classmethod
    def json_schema(cls, schema: Mapping | str, whitespace_pattern: str | None = None) -> ConstraintSpec:
        """A JSON schema, as a dict or as JSON text (BladeLLM's guided_json takes either)."""
        if isinstance(schema, str):
            schema = bounds.schema_from_text(schema)
        if not isinstance(schema, (Mapping, bool)):
            raise InvalidConstraint(f"invalid JSON schema: a schema must be an object or boolean, not {schema!r:.40}")
        bounds.check_schema(schema)  # before anything recurses over it, here or in llguidance
        # Canonical text, keys in the schema's order: llguidance emits properties in that order.
        try:
            text = json.dumps(closed_objects(schema), ensure_ascii=False, separators=(",", ":"))
        except (TypeError, ValueError) as error:  # a value JSON cannot hold, a circular reference
            raise InvalidConstraint(f"the JSON schema cannot be written as JSON: {error}") from None
        bounds.check_schema_text(text)
        if whitespace_pattern is not None:
            bounds.check_text("whitespace pattern", whitespace_pattern)
        return cls("json_schema", text, whitespace_pattern)

    @classmethod
    def json_object(cls, whitespace_pattern: str | None = None) -> ConstraintSpec:
        """Any JSON object (OpenAI's ``response_format: {"type": "json_object"}``)."""
        if whitespace_pattern is not None:
            bounds.check_text("whitespace pattern", whitespace_pattern)
        return cls("json_object", None, whitespace_pattern)

    @classmethod
    def regex(cls, pattern: str) -> ConstraintSpec:
        if isinstance(pattern, str):
            bounds.check_text("regex", pattern)
        return cls("regex", pattern)

    @classmethod
    def choice(cls, choices: Iterable[str]) -> ConstraintSpec:
        choices = bounds.check_choices(choices)
        if not choices:
            raise InvalidConstraint("the list of choices is empty")
        if not all(isinstance(choice, str) for choice in choices):
            raise InvalidConstraint("every choice must be a string")
        return cls("choice", choices)

    @classmethod
    def lark(cls, grammar: str, *, end_outside: bool = False) -> ConstraintSpec:
        return cls("lark", grammar, end_outside=end_outside)

    @classmethod
    def gbnf(cls, grammar: str) -> ConstraintSpec:
        return cls("gbnf", grammar)

    @classmethod
    def grammar(cls, text: str) -> ConstraintSpec:
        """An EBNF grammar in either syntax (guided_grammar): Lark if it says so, GBNF otherwise;
        bounded (the constructors above are for the server's own grammars)."""
        syntax = "lark" if is_lark_syntax(text) else "gbnf"
        bounds.check_grammar(text, syntax)
        return cls.lark(text) if syntax == "lark" else cls.gbnf(text)
