"""A chat in the SDKs' shape, read into the domain's messages.

``history: {messages: [{role, content: [part, ...]}]}`` with the roles ``system``, ``user``,
``assistant`` and ``tool``, and the parts ``{type: "text", text}``, ``{type: "file", identifier,
fileType, ...}`` (an image the client uploaded through ``files``), ``{type: "toolCallRequest",
toolCallRequest: {type: "function", id?, name, arguments?}}`` (an assistant's call) and ``{type:
"toolCallResult", content, toolCallId?}`` (a tool message's result).

A tool result without an id answers the call at its place in the last assistant message before it,
and a call without an id gets one (``call_<message>_<call>``), so that templates always see the pair.
Errors name the part: ``history.messages[2].content[0].toolCallId``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from studiolo.domain.chat import ChatMessage, ImageInput, ToolCall
from studiolo.domain.errors import InvalidRequest
from studiolo.service.tool_calls import check_tool_results

ROLES = ("system", "user", "assistant", "tool")
# which parts each role may hold (the SDKs' schema)
_PARTS = {"system": ("text", "file"), "user": ("text", "file"), "assistant": ("text", "file", "toolCallRequest"),
          "tool": ("toolCallResult",)}

# what gives an uploaded file's bytes, by its identifier (the files namespace keeps them per client)
FileBytes = Callable[[str, str], bytes]


def chat_messages(history: Any, files: FileBytes, param: str = "history") -> list[ChatMessage]:
    """The chat's messages, tool results paired with their calls (service/tool_calls.py)."""
    messages = history.get("messages") if isinstance(history, dict) else None
    if not isinstance(messages, list):
        raise InvalidRequest(f"'{param}' must be {{messages: [{{role, content}}]}}", param)
    read: list[ChatMessage] = []
    origins: list[int] = []  # the SDK message each domain message came from (a tool message may give several)
    for index, message in enumerate(messages):
        got = _message(message, f"{param}.messages[{index}]", index, read, files)
        read.extend(got)
        origins.extend([index] * len(got))
    return check_tool_results(read, lambda at: f"{param}.messages[{origins[at]}].content")


def _message(message: Any, where: str, index: int, earlier: list[ChatMessage], files: FileBytes) -> list[ChatMessage]:
    role = message.get("role") if isinstance(message, dict) else None
    if role not in ROLES:
        raise InvalidRequest(f"'{where}.role' must be one of {', '.join(ROLES)}", f"{where}.role")
    content = message.get("content")
    if isinstance(content, str):  # the SDKs accept plain text in places; take it too
        content = [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise InvalidRequest(f"'{where}.content' must be a list of parts", f"{where}.content")
    for number, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _PARTS[role]:
            raise InvalidRequest(f"a {role} message's parts are {', '.join(_PARTS[role])}; got {kind!r}",
                                 f"{where}.content[{number}].type")
    if role == "tool":
        return _tool_results(content, where, earlier)
    texts: list[str] = []
    parts: list[str | ImageInput] = []
    calls: list[ToolCall] = []
    for number, part in enumerate(content):
        at = f"{where}.content[{number}]"
        if part["type"] == "text":
            text = _text(part, "text", at)
            texts.append(text)
            parts.append(text)
        elif part["type"] == "file":
            parts.append(_image(part, at, files))
        else:
            calls.append(_call(part.get("toolCallRequest"), f"{at}.toolCallRequest", index, len(calls)))
    text = "".join(texts)  # LM Studio joins a message's text parts as they are
    images = tuple(parts) if any(isinstance(part, ImageInput) for part in parts) else ()
    return [ChatMessage(role, text if texts or not calls else None, tuple(calls), parts=images)]


def _text(part: dict[str, Any], field: str, where: str) -> str:
    value = part.get(field)
    if not isinstance(value, str):
        raise InvalidRequest(f"'{where}.{field}' must be a string", f"{where}.{field}")
    return value


def _image(part: dict[str, Any], where: str, files: FileBytes) -> ImageInput:
    identifier, file_type = part.get("identifier"), part.get("fileType")
    if not isinstance(identifier, str) or not identifier:
        raise InvalidRequest(f"'{where}.identifier' must name an uploaded file", f"{where}.identifier")
    if file_type != "image":
        raise InvalidRequest(f"only images can be given to a model; this file is {file_type!r}", f"{where}.fileType")
    return ImageInput(files(identifier, f"{where}.identifier"), where)


def _call(request: Any, where: str, message: int, number: int) -> ToolCall:
    if not isinstance(request, dict) or request.get("type") != "function":
        raise InvalidRequest(f"'{where}' must be {{type: \"function\", id?, name, arguments?}}", where)
    name, call_id, arguments = request.get("name"), request.get("id"), request.get("arguments")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"'{where}.name' must be the tool's name", f"{where}.name")
    if call_id is not None and not isinstance(call_id, str):
        raise InvalidRequest(f"'{where}.id' must be a string", f"{where}.id")
    if arguments is not None and not isinstance(arguments, dict):
        raise InvalidRequest(f"'{where}.arguments' must be an object", f"{where}.arguments")
    return ToolCall(call_id or f"call_{message}_{number}", name, json.dumps(arguments or {}, ensure_ascii=False))


def _tool_results(content: list[dict[str, Any]], where: str, earlier: list[ChatMessage]) -> list[ChatMessage]:
    """One tool message per result, as chat completions carry them."""
    last_calls = next((m.tool_calls for m in reversed(earlier) if m.role == "assistant"), ())
    results = []
    for number, part in enumerate(content):
        at = f"{where}.content[{number}]"
        text, call_id = _text(part, "content", at), part.get("toolCallId")
        if call_id is None and number < len(last_calls):
            call_id = last_calls[number].id
        if not isinstance(call_id, str) or not call_id:
            raise InvalidRequest("a tool result needs the 'toolCallId' of the call it answers", f"{at}.toolCallId")
        results.append(ChatMessage("tool", text, tool_call_id=call_id))
    return results
