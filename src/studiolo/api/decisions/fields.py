"""Reading a decision request's JSON by hand: its shapes nest unions (text or parts, typed items,
questions keyed by id), and every mistake must be a 400 naming the exact field."""

from __future__ import annotations

import json
from typing import Any

from studiolo.domain.errors import InvalidRequest


def need(value: Any, kind: type | tuple[type, ...], param: str, what: str) -> Any:
    """``value`` if it is of ``kind`` (a bool is not a number), else a 400 naming ``param``."""
    if value is None:
        raise InvalidRequest(f"'{param}' is required", param, code="missing_required_parameter")
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
        raise InvalidRequest(f"'{param}' must be {what}", param, code="invalid_type")
    return value


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def json_text(data: Any, param: str) -> str:
    """An ``input_json`` part's data as the model reads it: compact JSON text."""
    if not (isinstance(data, dict) or (isinstance(data, list) and all(isinstance(item, dict) for item in data))):
        raise InvalidRequest(f"'{param}' must be an object or an array of objects", param, code="invalid_type")
    return json.dumps(data, ensure_ascii=False)


def parts_text(value: Any, param: str, text_types: tuple[str, ...] = ("input_text",)) -> str:
    """A string, or a list of text and JSON parts joined by blank lines; images are refused by name
    (decisions read text only)."""
    if isinstance(value, str):
        return value
    parts = need(value, list, param, "a string or a list of parts")
    texts = []
    for index, part in enumerate(parts):
        where = f"{param}[{index}]"
        part = need(part, dict, where, "an object")
        kind = part.get("type")
        if kind in text_types:
            key = "refusal" if kind == "refusal" else "text"
            texts.append(need(part.get(key), str, f"{where}.{key}", "a string"))
        elif kind == "input_json":
            texts.append(json_text(part.get("data"), f"{where}.data"))
        elif kind == "input_image":
            raise InvalidRequest("images are not supported by decisions on this server: send text", where,
                                 code="unsupported_value")
        else:
            raise InvalidRequest(f"unknown part type {kind!r} (expected one of: "
                                 f"{', '.join(text_types + ('input_json',))})", f"{where}.type", code="invalid_value")
    return "\n\n".join(texts)
