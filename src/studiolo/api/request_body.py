"""Reading and parsing a request body within bounds, before FastAPI and pydantic see it.

What a body can cost is bounded here, in this order:

- its size: a body over ``max_body_mib`` is a 413 before it is read whole (a declared
  ``Content-Length`` over the limit is refused before any of it is read);
- its objects and arrays: counted (outside strings) before it is parsed, past
  ``max_json_containers`` a 400: each costs parsing and validation time on the event loop;
- its JSON: parsed one top-level member at a time, so that what cannot be read (a syntax error,
  nesting past the parser's recursion limit, an integer literal past Python's digit limit)
  is a 400 naming the member's field, not FastAPI's "There was an error parsing the body";
- its nesting: deeper than ``max_json_depth`` is a 400 naming the field, before validation
  walks it (pydantic, the surrogate check and the store all recurse);
- the length of the lists that pydantic would otherwise validate item by item on the event loop
  (``messages``, ``input``, ``prompt``): counted here, on the decoded JSON.

A parsed body is handed to FastAPI as Starlette's cached ``Request.json()``, so it is parsed once.
"""

from __future__ import annotations

import json
from json.decoder import WHITESPACE, scanstring  # type: ignore[attr-defined]
from typing import Any

import numpy as np
from fastapi import Request

from studiolo.api.errors import APIError
from studiolo.config import RequestLimits
from studiolo.service.json_bounds import deeper_than, depth_message, long_number_message

MIB = 2**20


# NaN and Infinity are read as Python reads them: the fields that take numbers refuse them (allow_inf_nan),
# and those that keep any JSON check it where they name the exact field (responses/schemas.py, check_json)
_DECODER = json.JSONDecoder()


def too_large(limits: RequestLimits, size: int | None = None) -> APIError:
    given = f" ({size} bytes)" if size is not None else ""
    return APIError(413, f"the request body{given} is larger than the server's limit of {limits.max_body_mib} MiB "
                    "(setting limits.max_body_mib)", param="body", code="request_too_large")


async def read_bounded(request: Request, limits: RequestLimits) -> bytes:
    """The whole body, refused (413) as soon as it is known to pass ``max_body_mib``."""
    limit = limits.max_body_mib * MIB
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and (len(declared) > 18 or int(declared) > limit):
        raise too_large(limits, int(declared))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limits)
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # Starlette's cache: FastAPI reads the body from here
    return body


def is_json_request(request: Request) -> bool:
    """Whether FastAPI would parse the body as JSON (no content type, or a JSON one)."""
    content_type = request.headers.get("content-type")
    if not content_type:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def containers_in(body: bytes) -> int:
    """Objects and arrays in a JSON text: its ``{`` and ``[`` outside strings (an upper bound if it
    is not valid JSON). Escaped backslashes and quotes are blanked first (same length), so that
    the quotes left delimit strings; a bracket is in a string when an odd number precede it."""
    neutral = body.replace(b"\\\\", b"__").replace(b'\\"', b"__")
    octets = np.frombuffer(neutral, dtype=np.uint8)
    quotes = np.flatnonzero(octets == ord('"'))
    opens = np.flatnonzero((octets == ord("{")) | (octets == ord("[")))
    return int(np.count_nonzero(np.searchsorted(quotes, opens) % 2 == 0))


def check_containers(body: bytes, limits: RequestLimits) -> None:
    limit = limits.max_json_containers
    if body.count(b"{") + body.count(b"[") <= limit:  # the common case: one pass, no strings to tell apart
        return
    count = containers_in(body)
    if count > limit:
        raise APIError(400, f"the request body holds {count} JSON objects and arrays, more than the server's limit "
                       f"of {limit} (setting limits.max_json_containers)", param="body", code="too_many_items")


def parse_bounded(body: bytes, limits: RequestLimits) -> Any:
    """The body's JSON, each failure a 400 naming the top-level field it is in (or ``body``)."""
    check_containers(body, limits)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise APIError(400, f"the request body is not UTF-8 text (byte {exc.start})", param="body",
                       code="invalid_json") from None
    start = _skip_space(text, 0)
    if not text.startswith("{", start):  # not an object: pydantic says what was expected
        value = _decoded(text, start, limits)
        _check_depth(value, limits.max_json_depth, 1, "body")
        return value
    return _parse_object(text, start + 1, limits.max_json_depth)


def _parse_object(text: str, at: int, max_depth: int) -> dict[str, Any]:
    """A top-level object, member by member: the member being read names the error."""
    result: dict[str, Any] = {}
    at = _skip_space(text, at)
    if text.startswith("}", at):
        return _end(text, at + 1, result)
    while True:
        if not text.startswith('"', at):
            raise _syntax_error("expected a field name in double quotes", at, "body")
        try:
            key, at = scanstring(text, at + 1)
        except ValueError as exc:
            raise _syntax_error(str(exc).split(":")[0], at, "body") from None
        at = _skip_space(text, at)
        if not text.startswith(":", at):
            raise _syntax_error("expected ':'", at, key)
        value_at = _skip_space(text, at + 1)
        value, at = _decoded_member(text, value_at, key, max_depth)
        _check_depth(value, max_depth, 2, key)
        result[key] = value
        at = _skip_space(text, at)
        if text.startswith("}", at):
            return _end(text, at + 1, result)
        if not text.startswith(",", at):
            raise _syntax_error("expected ',' or '}'", at, key)
        at = _skip_space(text, at + 1)


def _end(text: str, at: int, result: dict[str, Any]) -> dict[str, Any]:
    at = _skip_space(text, at)
    if at != len(text):
        raise _syntax_error("extra data after the JSON object", at, "body")
    return result


def _decoded(text: str, at: int, limits: RequestLimits) -> Any:
    value, end = _decoded_member(text, at, "body", limits.max_json_depth)
    if _skip_space(text, end) != len(text):
        raise _syntax_error("extra data after the JSON value", end, "body")
    return value


def _decoded_member(text: str, at: int, param: str, max_depth: int) -> tuple[Any, int]:
    try:
        return _DECODER.raw_decode(text, at)
    except json.JSONDecodeError as exc:
        raise _syntax_error(exc.msg, exc.pos, param) from None
    except RecursionError:
        raise _too_deep(param, max_depth) from None
    except ValueError:  # the only other: an integer literal past int's digit limit
        raise APIError(400, f"{_named(param)} {long_number_message()}", param=param,
                       code="number_too_long") from None


def _syntax_error(message: str, position: int, param: str) -> APIError:
    return APIError(400, f"{_named(param)} is not valid JSON: {message} (at character {position})", param=param,
                    code="invalid_json")


def _too_deep(param: str, limit: int) -> APIError:
    return APIError(400, f"{_named(param)} {depth_message(limit)}", param=param, code="json_too_deep")


def _named(param: str) -> str:
    return f"'{param}'" if param != "body" else "the request body"


def _skip_space(text: str, at: int) -> int:
    return WHITESPACE.match(text, at).end()


def _check_depth(value: Any, limit: int, depth: int, param: str) -> None:
    if deeper_than(value, limit, depth):
        raise _too_deep(param, limit)


# The lists each route takes whose items pydantic would validate one by one: (field, limit's name).
COUNTED_LISTS: dict[str, tuple[str, str]] = {
    "/v1/chat/completions": ("messages", "max_messages"),
    "/api/v0/chat/completions": ("messages", "max_messages"),
    "/v1/responses": ("input", "max_messages"),
    "/v1/responses/compact": ("input", "max_messages"),
    "/api/v1/chat": ("input", "max_messages"),
    "/v1/messages": ("messages", "max_messages"),
    "/v1/messages/count_tokens": ("messages", "max_messages"),
}

# Completions' prompts: a list of texts or of token lists is that many prompts (a list of token ids
# is one prompt); each prompt is at least one sequence, so they are bounded by max_sequences.
COUNTED_PROMPTS = frozenset({"/v1/completions", "/api/v0/completions"})
# Embeddings' inputs: their text is tokenized whole (in a worker thread, but on a core for as long as
# it takes), so it is bounded as a prompt's is; the number of inputs as OpenAI bounds it.
EMBEDDINGS = frozenset({"/v1/embeddings", "/api/v0/embeddings"})
# Rerank: each document is tokenized with the query, so the query counts once per document.
RERANK = frozenset({"/v1/rerank", "/rerank", "/v2/rerank"})


# Lists of a generation request whose every item costs work before the model runs: each tool's schema
# is compiled into the call grammar, each stop string is matched against the output at every token.
BOUNDED_LISTS = (("tools", "max_tools"), ("stop", "max_stop_strings"), ("stop_sequences", "max_stop_strings"))
GENERATION_PATHS = frozenset(COUNTED_LISTS) | COUNTED_PROMPTS


def check_counts(path: str, value: Any, limits: RequestLimits) -> None:
    """Refuse a list past its limit before pydantic validates its items (a 400 naming the field)."""
    if not isinstance(value, dict):
        return
    if path in GENERATION_PATHS:
        _check_generation_lists(value, limits)
    if path in EMBEDDINGS:
        _check_embedding_inputs(value.get("input"), limits)
        return
    if path in RERANK:
        _check_rerank_documents(value.get("query"), value.get("documents"), limits)
        return
    if path in COUNTED_PROMPTS:
        prompts = value.get("prompt")
        if isinstance(prompts, list) and prompts and not isinstance(prompts[0], int):
            _check_count("prompt", len(prompts), "max_sequences", limits)
        elif isinstance(prompts, list) and len(prompts) > limits.max_prompt_chars:  # one prompt of token ids
            raise APIError(400, f"'prompt' has {len(prompts)} token ids, more than the server's limit of "
                           f"{limits.max_prompt_chars} (setting limits.max_prompt_chars)", param="prompt",
                           code="too_many_items")
        return
    counted = COUNTED_LISTS.get(path)
    if counted is not None and isinstance(value.get(counted[0]), list):
        _check_count(counted[0], len(value[counted[0]]), counted[1], limits)


def _check_embedding_inputs(inputs: Any, limits: RequestLimits) -> None:
    from studiolo.api.openai.embeddings import (
        MAX_INPUTS,  # imported here: that module imports this one
    )

    texts = [inputs] if isinstance(inputs, str) else inputs if isinstance(inputs, list) else []
    if texts and not isinstance(texts[0], int) and len(texts) > MAX_INPUTS:
        raise APIError(400, f"'input' has {len(texts)} items, more than {MAX_INPUTS} (OpenAI's limit)", param="input",
                       code="too_many_items")
    chars = sum(len(text) for text in texts if isinstance(text, (str, list)))
    if chars > limits.max_prompt_chars:
        raise APIError(400, f"'input' is {chars} characters (or token ids), more than the server's limit of "
                       f"{limits.max_prompt_chars} (setting limits.max_prompt_chars)", param="input")


def _check_rerank_documents(query: Any, documents: Any, limits: RequestLimits) -> None:
    from studiolo.api.rerank.routes import MAX_DOCUMENTS  # imported here, as embeddings' limit

    if not isinstance(documents, list):
        return
    if len(documents) > MAX_DOCUMENTS:
        raise APIError(400, f"'documents' has {len(documents)} items, more than {MAX_DOCUMENTS}", param="documents",
                       code="too_many_items")
    texts = [d.get("text") if isinstance(d, dict) else d for d in documents]
    query_chars = len(query) if isinstance(query, str) else 0
    chars = sum(len(text) + query_chars for text in texts if isinstance(text, str))
    if chars > limits.max_prompt_chars:
        raise APIError(400, f"the documents with the query repeated for each are {chars} characters, more than the "
                       f"server's limit of {limits.max_prompt_chars} (setting limits.max_prompt_chars)",
                       param="documents")


def _check_count(field: str, count: int, limit_name: str, limits: RequestLimits) -> None:
    limit = getattr(limits, limit_name)
    if count > limit:
        raise APIError(400, f"'{field}' has {count} items, more than the server's limit of {limit} "
                       f"(setting limits.{limit_name})", param=field, code="too_many_items")


def _check_generation_lists(value: dict[str, Any], limits: RequestLimits) -> None:
    for field, limit_name in BOUNDED_LISTS:
        if isinstance(value.get(field), list):
            _check_count(field, len(value[field]), limit_name, limits)
    for field in ("stop", "stop_sequences"):
        stops = value.get(field)
        for index, stop in enumerate(stops if isinstance(stops, list) else [stops]):
            if isinstance(stop, str) and len(stop) > limits.max_stop_chars:
                where = f"{field}[{index}]" if isinstance(stops, list) else field
                raise APIError(400, f"'{where}' is {len(stop)} characters, more than the server's limit of "
                               f"{limits.max_stop_chars} (setting limits.max_stop_chars)", param=where,
                               code="string_too_long")
