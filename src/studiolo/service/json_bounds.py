"""JSON within bounds: how deep a decoded value nests, and JSON text a request carries inside a
string (a tool call's arguments) read with the same bounds as a body.

The reading itself is ``domain.json_text``'s; here each way it fails becomes the client's mistake,
told as such in words that can follow "'field' ...".
"""

from __future__ import annotations

import sys
from typing import Any

from studiolo.config import RequestLimits
from studiolo.domain.errors import InvalidRequest
from studiolo.domain.json_text import (
    JSONTooDeep,
    NotAJSONValue,
    NotJSON,
    NumberTooLong,
    deeper_than,
    read_json_text,
)

__all__ = ["DEFAULT_MAX_DEPTH", "JSONTextError", "deeper_than", "depth_message", "loads_bounded",
           "long_number_message"]

DEFAULT_MAX_DEPTH = RequestLimits().max_json_depth


class JSONTextError(InvalidRequest):
    """Why a JSON text was not read, in words that can follow "'field' ..."."""


def depth_message(limit: int) -> str:
    return f"nests arrays and objects more than {limit} levels deep, the server's limit (setting limits.max_json_depth)"


def long_number_message() -> str:
    return (f"holds an integer literal of more than {sys.get_int_max_str_digits()} digits, "
            "which the server does not read")


def loads_bounded(text: str, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """``text`` as JSON, or JSONTextError saying why not."""
    try:
        return read_json_text(text, max_depth=max_depth)
    except NotJSON as exc:
        raise JSONTextError(f"is not valid JSON: {exc.msg} (at character {exc.pos})") from None
    except JSONTooDeep:
        raise JSONTextError(depth_message(max_depth)) from None
    except NumberTooLong:
        raise JSONTextError(long_number_message()) from None
    except NotAJSONValue as exc:
        raise JSONTextError(f"holds {exc.name}, which is not a JSON value") from None
