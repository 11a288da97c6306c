"""Bounds on what reaches llguidance's native code, checked in Python before any of it runs.

llguidance compiles schemas and grammars recursively in Rust: a chain of 5,000 ``$ref``s (or
1,000 of them each five levels deep) overflowed the thread's stack and killed the process with
SIGSEGV, as did a Lark rule chain 3,000 long; 2,000 was answered. Its own limits
(``LLParserLimits``) guard the lexer and parser, not that recursion, and time grows faster than
the input (50,000 Lark alternatives: 3 s; 100,000 choices: 33 s, then a panic). So every
definition is measured first, cheaply and without recursion past the limit, and one over a bound
is the client's 400 naming the limit and the setting that raises it (docs/API.md, "Limits of
constrained decoding").

The bounds are ``RequestLimits`` fields (``settings.json`` ``"limits"``); ``configure`` sets them
for the process (the app does at start), else they are read from the settings on first use.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from studiolo.config import RequestLimits, load_limits
from studiolo.domain.errors import InvalidRequest
from studiolo.domain.json_text import JSONTooDeep, JSONTooLarge, NotJSON, NumberTooLong, read_json_text


class InvalidConstraint(InvalidRequest):
    """A schema, regex, choice list or grammar that cannot be compiled; the message says why."""


_limits: RequestLimits | None = None


def configure(limits: RequestLimits) -> None:
    global _limits
    _limits = limits


def limits() -> RequestLimits:
    global _limits
    if _limits is None:
        _limits = load_limits()
    return _limits


def _over(what: str, value: int, limit: int, setting: str) -> InvalidConstraint:
    return InvalidConstraint(f"{what} is {value:,}; the limit is {limit:,} (setting limits.{setting})")


# --- JSON schemas --------------------------------------------------------------------------


def check_schema_text(text: str) -> None:
    """The schema as JSON text: its size."""
    size = len(text.encode())
    if size > limits().max_schema_bytes:
        raise _over("the JSON schema's size in bytes", size, limits().max_schema_bytes, "max_schema_bytes")


def check_schema(schema: Any) -> None:
    """Depth (following ``$ref``s, as llguidance's compiler recurses) and ``$ref`` count."""
    bounds = limits()
    refs, anchors = _census(schema, bounds.max_schema_entries)
    if refs > bounds.max_schema_refs:
        raise _over("the number of $ref in the JSON schema", refs, bounds.max_schema_refs, "max_schema_refs")
    try:
        _DepthWalk(schema, anchors, bounds.max_json_depth).depth(schema, 0)
    except RecursionError:  # a max_json_depth set past what Python's own recursion allows
        raise _over("the JSON schema's depth", sys.getrecursionlimit(), bounds.max_json_depth,
                    "max_json_depth") from None


# llguidance's time grows fast with an object's patternProperties (it intersects and complements
# their regexes): 50 took 0.06 s, 200 took 1.5 s, 500 over 60 s.
MAX_PATTERN_PROPERTIES = 32


def _census(schema: Any, max_entries: int) -> tuple[int, dict[str, Any]]:
    """How many ``$ref`` the schema holds and its ``$anchor``s, refusing any list or map longer
    than ``max_entries`` on the way (without recursion)."""
    refs, stack = 0, [(schema, "")]
    anchors: dict[str, Any] = {}
    while stack:
        node, key = stack.pop()
        if isinstance(node, (dict, list)) and len(node) > max_entries:
            raise _over(f"the number of entries of {key or 'the schema'!r} in the JSON schema", len(node),
                        max_entries, "max_schema_entries")
        if isinstance(node, dict):
            refs += isinstance(node.get("$ref"), str)
            if isinstance(node.get("$anchor"), str):
                anchors.setdefault(node["$anchor"], node)
            patterns = node.get("patternProperties")
            if isinstance(patterns, dict) and len(patterns) > MAX_PATTERN_PROPERTIES:
                raise InvalidConstraint(f"an object of the JSON schema has {len(patterns)} patternProperties; "
                                        f"the limit is {MAX_PATTERN_PROPERTIES}")
            stack.extend((value, name) for name, value in node.items())
        elif isinstance(node, list):
            stack.extend((value, key) for value in node)
    return refs, anchors


class _DepthWalk:
    """Measures a schema's depth with each local ``$ref`` standing for the schema it points to.

    Depth counts JSON levels (objects and arrays), and the walk stops as soon as it passes the
    bound, so it recurses no deeper than that. A ``$ref`` into a schema already being measured is
    recursion, which llguidance turns into a grammar rule rather than recursing on: it adds
    nothing. Each ``$ref`` target is measured once. Refs that do not point into this document
    (``other.json#/x``, a ``$id``'s base) are refused: they could not be followed here, so they
    could hide a chain.
    """

    def __init__(self, root: Any, anchors: dict[str, Any], max_depth: int):
        self.root = root
        self.anchors = anchors
        self.max_depth = max_depth
        self.measured: dict[str, int] = {}  # ref -> depth of its target
        self.open: set[str] = set()  # refs whose target is being measured (recursion)

    def depth(self, node: Any, above: int) -> int:
        """Levels at and below ``node`` (0 for a scalar), given ``above`` levels over it."""
        if not isinstance(node, (dict, list)):
            return 0
        self.check(above + 1)
        children = node.values() if isinstance(node, dict) else node
        deepest = max((self.depth(child, above + 1) for child in children), default=0)
        ref = node.get("$ref") if isinstance(node, dict) else None
        if isinstance(ref, str):
            deepest = max(deepest, self.through(ref, above + 1))
        return deepest + 1

    def check(self, depth: int) -> None:
        if depth > self.max_depth:
            raise _over("the JSON schema's depth (counting levels reached through $ref)", depth,
                        self.max_depth, "max_json_depth")

    def through(self, ref: str, above: int) -> int:
        if ref in self.open:
            return 0
        if ref not in self.measured:
            target = self.target(ref)
            self.open.add(ref)
            try:
                self.measured[ref] = self.depth(target, above)
            finally:
                self.open.discard(ref)
        self.check(above + self.measured[ref])
        return self.measured[ref]

    def target(self, ref: str) -> Any:
        """What a local ref points to; None (nothing to measure) if it points nowhere."""
        if not ref.startswith("#"):
            raise InvalidConstraint(f"$ref {ref[:80]!r} does not point into this schema; only local references "
                                    "('#/$defs/name', '#anchor') are supported")
        fragment = _unquote(ref[1:])
        if fragment and not fragment.startswith("/"):
            return self.anchors.get(fragment)
        node = self.root
        for part in fragment.split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict):
                node = node.get(part)
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return None
        return node


_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")


def _unquote(text: str) -> str:
    return _PERCENT.sub(lambda m: chr(int(m.group(1), 16)), text)


def schema_from_text(text: str) -> Any:
    """A schema given as JSON text (BladeLLM's guided_json), parsed; sized first."""
    bounds = limits()
    try:  # NaN and Infinity pass, as they always have here; depth is check_schema's, after $refs
        return read_json_text(text, max_bytes=bounds.max_schema_bytes, allow_constants=True)
    except JSONTooLarge as error:
        raise _over("the JSON schema's size in bytes", error.size, error.limit, "max_schema_bytes") from None
    except NotJSON as error:
        raise InvalidConstraint(f"the JSON schema is not valid JSON: {error}") from None
    except JSONTooDeep:
        raise InvalidConstraint(f"the JSON schema nests deeper than the limit of {bounds.max_json_depth} levels "
                                "(setting limits.max_json_depth)") from None
    except NumberTooLong as error:
        raise InvalidConstraint(f"the JSON schema holds a number that cannot be read: {error}") from None


# --- regexes, grammars, choices ----------------------------------------------------------


def check_text(what: str, text: str) -> None:
    """A regex or grammar: its size."""
    size = len(text.encode())
    if size > limits().max_grammar_bytes:
        raise _over(f"the {what}'s size in bytes", size, limits().max_grammar_bytes, "max_grammar_bytes")


# A rule's head: 'name ::=' in GBNF; 'name:', 'NAME:', '?name:', 'name.2:' or 'name{a}:' in Lark
_GBNF_RULE = re.compile(r"^[ \t]*[A-Za-z0-9_-]+[ \t]*::=", re.MULTILINE)
_LARK_RULE = re.compile(r"^[ \t]*[?!]?[A-Za-z_][A-Za-z0-9_]*(?:\{[^}\n]*\})?(?:\.-?\d+)?[ \t]*:", re.MULTILINE)
# How deep parentheses may nest in a GBNF grammar: its converter recurses in Python for each
# level (and llguidance's Lark parser refuses nesting past 50 on its own).
MAX_GROUP_DEPTH = 50


def check_grammar(text: str, syntax: str) -> None:
    """A GBNF or Lark grammar: size, rules (llguidance recurses along rule chains), nesting."""
    name = "GBNF grammar" if syntax == "gbnf" else "Lark grammar"
    check_text(name, text)
    rules = len((_GBNF_RULE if syntax == "gbnf" else _LARK_RULE).findall(text))
    if rules > limits().max_grammar_rules:
        raise _over(f"the number of rules of the {name}", rules, limits().max_grammar_rules, "max_grammar_rules")
    if syntax == "gbnf":
        depth = _group_depth(text)
        if depth > MAX_GROUP_DEPTH:
            raise InvalidConstraint(f"the GBNF grammar nests parentheses {depth:,} deep; the limit is "
                                    f"{MAX_GROUP_DEPTH}")


_QUOTED = re.compile(r'"(?:[^"\\\n]|\\.)*"|\[(?:[^\]\\\n]|\\.)*\]|#[^\n]*')


def _group_depth(text: str) -> int:
    """Deepest nesting of ( ) outside literals, character classes and comments."""
    depth = deepest = 0
    for char in _QUOTED.sub("", text):
        if char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth -= 1
    return deepest


def check_choices(choices: Iterable[str]) -> tuple[str, ...]:
    """guided_choice: how many strings, and their total size (each one is a lexeme)."""
    choices = tuple(choices)
    bound = limits().max_choices
    if len(choices) > bound:
        raise _over("the number of choices", len(choices), bound, "max_choices")
    if all(isinstance(choice, str) for choice in choices):
        size = sum(len(choice.encode("utf-8", "surrogatepass")) for choice in choices)
        if size > limits().max_grammar_bytes:
            raise _over("the choices' total size in bytes", size, limits().max_grammar_bytes, "max_grammar_bytes")
    return choices


def check_tool_schemas(schemas: Iterable[Mapping | None]) -> None:
    """All of a request's tool schemas together: they become one grammar, so they share the size
    and ``$ref`` bounds (each is also checked alone, where its error can name it)."""
    present = [schema for schema in schemas if schema is not None]
    try:
        text = json.dumps(present, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        return  # each schema's own check names what is wrong
    size = len(text.encode())
    if size > limits().max_schema_bytes:
        raise _over("the tools' parameter schemas' total size in bytes", size, limits().max_schema_bytes,
                    "max_schema_bytes")
    refs = text.count('"$ref":')
    if refs > limits().max_schema_refs:
        raise _over("the number of $ref in the tools' parameter schemas", refs, limits().max_schema_refs,
                    "max_schema_refs")
