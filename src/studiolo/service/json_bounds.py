"""JSON within bounds: how deep a decoded value nests, and JSON text a request carries inside a
string (a tool call's arguments) read with the same bounds as a body.

Python's parser fails on such text in more ways than ``JSONDecodeError``: nesting past its
recursion limit is a ``RecursionError``, an integer literal past ``sys.get_int_max_str_digits()``
a plain ``ValueError``; and it takes NaN and Infinity, which are not JSON. Each is the client's
mistake, told as such.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from studiolo.config import RequestLimits
from studiolo.domain.errors import InvalidRequest

DEFAULT_MAX_DEPTH = RequestLimits().max_json_depth
_SCALARS = frozenset({str, int, float, bool, type(None)})


class JSONTextError(InvalidRequest):
    """Why a JSON text was not read, in words that can follow "'field' ..."."""


def refuse_constant(name: str) -> Any:
    """For ``parse_constant``: Python's parser takes NaN and Infinity, which JSON has not (and which
    the store could not write back)."""
    raise JSONTextError(f"holds {name}, which is not a JSON value")


def deeper_than(value: Any, limit: int, depth: int = 1) -> bool:
    """Whether ``value`` (itself at ``depth``) nests arrays and objects past ``limit`` levels.

    Walks containers only; a list of scalars (a prompt's token ids) is looked at by type in one
    pass instead of item by item."""
    stack = [(value, depth)]
    while stack:
        item, level = stack.pop()
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


def depth_message(limit: int) -> str:
    return f"nests arrays and objects more than {limit} levels deep, the server's limit (setting limits.max_json_depth)"


def long_number_message() -> str:
    return f"holds an integer literal of more than {sys.get_int_max_str_digits()} digits, which the server does not read"


def loads_bounded(text: str, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """``text`` as JSON, or JSONTextError saying why not."""
    try:
        value = json.loads(text, parse_constant=refuse_constant)
    except json.JSONDecodeError as exc:
        raise JSONTextError(f"is not valid JSON: {exc.msg} (at character {exc.pos})") from None
    except RecursionError:
        raise JSONTextError(depth_message(max_depth)) from None
    except JSONTextError:
        raise
    except ValueError:  # the only other: an integer literal past int's digit limit
        raise JSONTextError(long_number_message()) from None
    if deeper_than(value, max_depth):
        raise JSONTextError(depth_message(max_depth))
    return value
