"""JSON text read within bounds: its size in bytes, how deep it nests, and its numbers.

Python's parser fails on hostile text in more ways than ``JSONDecodeError``: nesting past its
recursion limit is a ``RecursionError``, an integer literal past ``sys.get_int_max_str_digits()``
a plain ``ValueError``; and it takes NaN and Infinity, which are not JSON. ``read_json_text`` turns
each into one of the errors below. They carry the facts (a limit, a position, Python's own words)
rather than a sentence, because each caller words its refusal its own way.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

# Types of the items of a list that need no walk: a list of only these nests no further.
_SCALARS = frozenset({str, int, float, bool, type(None)})


class UnreadableJSON(ValueError):
    """Why a JSON text was not read."""


class JSONTooLarge(UnreadableJSON):
    """The text is longer than ``limit`` bytes (UTF-8)."""

    def __init__(self, size: int, limit: int):
        super().__init__(f"the text is {size:,} bytes; the limit is {limit:,}")
        self.size = size
        self.limit = limit


class NotJSON(UnreadableJSON):
    """A syntax error; reads as Python's own ``JSONDecodeError`` and keeps its message and position."""

    def __init__(self, error: json.JSONDecodeError):
        super().__init__(str(error))
        self.msg = error.msg
        self.pos = error.pos


class JSONTooDeep(UnreadableJSON):
    """Arrays and objects nest past ``limit`` levels, or past what Python's parser can recurse
    through (``limit`` None when the caller set no bound of its own)."""

    def __init__(self, limit: int | None):
        super().__init__(f"nests arrays and objects more than {limit} levels deep" if limit is not None
                         else "nests arrays and objects deeper than the parser can follow")
        self.limit = limit


class NumberTooLong(UnreadableJSON):
    """An integer literal past Python's digit limit; reads as Python's own words."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.digit_limit = sys.get_int_max_str_digits()


class NotAJSONValue(UnreadableJSON):
    """NaN, Infinity or -Infinity: Python's parser takes them, JSON has no such value."""

    def __init__(self, name: str):
        super().__init__(f"holds {name}, which is not a JSON value")
        self.name = name


def read_json_text(text: str, *, max_bytes: int | None = None, max_depth: int | None = None,
                   allow_constants: bool = False) -> Any:
    """``text`` as JSON, or an ``UnreadableJSON`` saying why not.

    ``max_bytes`` bounds the UTF-8 size before any parsing; ``max_depth`` the levels of arrays and
    objects (the top value is level 1); without it only the parser's recursion limit applies.
    ``allow_constants`` lets NaN and Infinity through, as Python's parser does by default.
    """
    if max_bytes is not None:
        _check_size(text, max_bytes)
    value = _parse(text, allow_constants, max_depth)
    if max_depth is not None and deeper_than(value, max_depth):
        raise JSONTooDeep(max_depth)
    return value


def _check_size(text: str, limit: int) -> None:
    size = len(text.encode())
    if size > limit:
        raise JSONTooLarge(size, limit)


def _parse(text: str, allow_constants: bool, max_depth: int | None) -> Any:
    """Python's parser, each of its failures turned into an ``UnreadableJSON``."""
    try:
        if allow_constants:
            return json.loads(text)
        return json.loads(text, parse_constant=_refuse_constant)
    except UnreadableJSON:  # _refuse_constant's, from inside the parser
        raise
    except json.JSONDecodeError as exc:
        raise NotJSON(exc) from None
    except RecursionError:
        raise JSONTooDeep(max_depth) from None
    except ValueError as exc:  # the only other: an integer literal past int's digit limit
        raise NumberTooLong(str(exc)) from None


def _refuse_constant(name: str) -> Any:
    """For ``parse_constant``: NaN and Infinity are not JSON (and could not be written back as JSON)."""
    raise NotAJSONValue(name)


def deeper_than(value: Any, limit: int, depth: int = 1) -> bool:
    """Whether ``value`` (itself at ``depth``) nests arrays and objects past ``limit`` levels.

    Walks containers only, without recursion; a list of scalars (a prompt's token ids) is looked
    at by type in one pass instead of item by item."""
    stack = [(value, depth)]
    while stack:
        item, level = stack.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            if _SCALARS.issuperset(map(type, item)):
                continue
            children = item
        else:
            continue
        if level > limit:
            return True
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return False
