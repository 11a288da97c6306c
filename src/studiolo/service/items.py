"""Conversation items: what a stored response keeps of its turn, and how they become chat messages.

Stored responses hold their input and output as items in the shape of OpenAI's Responses API, the
one format both stateful APIs (``/v1/responses`` and LM Studio's ``/api/v1/chat``) translate to and
from, so that either can continue a conversation the other began:

- ``{"type": "message", "role": "user" | "system" | "developer" | "assistant", "content": [parts]}``
  with ``input_text`` parts (input) or ``output_text`` parts (the assistant's output); input messages
  may hold images too, ``{"type": "input_image", "image_url": <URL>, "detail": ...}``: the image kept
  inline, as the client's base64 ``data:`` URL (or its remote URL, fetched again when the
  conversation continues), so a response's row holds all it needs and deleting it deletes its images;
- ``{"type": "function_call", "call_id", "name", "arguments"}`` (a call the model made);
- ``{"type": "function_call_output", "call_id", "output"}`` (the result the client sent back);
- ``{"type": "compaction", "id", "encrypted_content"}``: the summary of a compacted conversation
  (service/compaction.py), in plain text; the model sees it as its own message;
- ``{"type": "reasoning", "id", "summary": [], "content": [{"type": "reasoning_text", "text"}]}``: a
  reasoning model's reasoning, before the message or calls it led to. It becomes the next assistant
  message's ``ChatMessage.reasoning``; the model's template decides whether the prompt keeps it
  (Qwen3's keeps it only within a tool loop, after the last user message).
- OpenAI's MCP items (``/v1/responses`` ``mcp`` tools, service/mcp_responses.py): ``mcp_list_tools``,
  ``mcp_call``, ``mcp_approval_request`` and ``mcp_approval_response``. The model sees them as the
  function calls and results they stand for (``mcp_as_function_items``).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from typing import Any

from studiolo.domain.chat import ChatMessage, ImageInput, ToolCall
from studiolo.domain.errors import InvalidRequest
from studiolo.domain.image_urls import image_from_url

Item = dict[str, Any]


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def user_message(text: str, role: str = "user") -> Item:
    return {"type": "message", "role": role, "content": [{"type": "input_text", "text": text}]}


def image_part(url: str, detail: str | None = None) -> Item:
    """An image in an input message, as stored (its URL checked by domain/image_urls.py first)."""
    return {"type": "input_image", "image_url": url, "detail": detail or "auto"}


def assistant_message(text: str) -> Item:
    return {
        "type": "message", "id": new_id("msg"), "role": "assistant", "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def function_call(call_id: str, name: str, arguments: str) -> Item:
    return {"type": "function_call", "id": new_id("fc"), "call_id": call_id, "name": name,
            "arguments": arguments, "status": "completed"}


def reasoning_item(text: str, status: str = "completed") -> Item:
    return {"type": "reasoning", "id": new_id("rs"), "summary": [],
            "content": [{"type": "reasoning_text", "text": text}], "status": status}


def reasoning_text(item: Item) -> str:
    """A reasoning item's text: its reasoning_text parts joined, or its summary's when it has none
    (a client may send back only a summary)."""
    for key in ("content", "summary"):
        texts = [part.get("text", "") for part in item.get(key) or () if isinstance(part, dict)]
        if any(texts):
            return "".join(texts)
    return ""


def compaction_item(summary: str) -> Item:
    return {"type": "compaction", "id": new_id("cmp"), "encrypted_content": summary}


# how the model sees a compaction item: as its own words, after the user messages it kept
SUMMARY_HEADING = "Summary of our conversation so far:\n"


def message_text(item: Item) -> str:
    """A message item's text: its content string, or its text parts joined."""
    content = item.get("content")
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or () if isinstance(part, dict))


def chat_messages(items: list[Item], image_params: Iterable[str] = ()) -> list[ChatMessage]:
    """Items, in order, as the chat messages a template renders: consecutive function calls join
    one assistant message (after its text, if the message item came just before). Reasoning goes
    with the assistant message after it (a reasoning item starts a new one); reasoning that no
    assistant message follows is dropped. ``image_params`` names the field of each image, in order,
    for errors about it (``input`` for images past the names given)."""
    params = iter(image_params)
    items = mcp_as_function_items(items)
    messages: list[ChatMessage] = []
    reasoning: str | None = None  # waiting for the assistant message it led to
    for item in items:
        kind = item.get("type", "message")
        if kind == "reasoning":
            reasoning = "\n\n".join(filter(None, (reasoning, reasoning_text(item)))) or None
            continue
        last = messages[-1] if messages else None
        if kind == "message":
            role = "system" if item.get("role") == "developer" else item.get("role", "user")
            mine = reasoning if role == "assistant" else None
            messages.append(_message(item, role, mine, params))
        elif kind == "function_call":
            call = ToolCall(item["call_id"], item["name"], item["arguments"])
            if last is not None and last.role == "assistant" and reasoning is None:
                messages[-1] = ChatMessage("assistant", last.content, last.tool_calls + (call,),
                                           reasoning=last.reasoning)
            else:
                messages.append(ChatMessage("assistant", None, (call,), reasoning=reasoning))
        elif kind == "function_call_output":
            messages.append(ChatMessage("tool", _output_text(item.get("output")), (), item["call_id"]))
        elif kind == "compaction":
            messages.append(ChatMessage("assistant", SUMMARY_HEADING + item["encrypted_content"]))
        else:
            raise InvalidRequest(f"conversation items of type '{kind}' are not supported", "input")
        reasoning = None  # taken by the assistant message, or followed by none
    return messages


# what the model reads for a call the user did not approve (an mcp_approval_response with approve false)
REFUSED_CALL = "The user did not approve this tool call."


def mcp_as_function_items(items: list[Item]) -> list[Item]:
    """MCP items as the function calls and results the model sees: the tool list is not shown (its
    tools are in the prompt's tools), an approval request is the model's call, an approved call's
    ``mcp_call`` the result answering it (the approval response itself says nothing), a refusal the
    result ``REFUSED_CALL``, and a call that needed no approval both the call and its result."""
    converted: list[Item] = []
    for item in items:
        kind = item.get("type")
        if kind == "mcp_list_tools":
            continue
        if kind == "mcp_approval_request":
            converted.append(_call_item(item["id"], item))
        elif kind == "mcp_approval_response":
            if not item.get("approve"):
                reason = f" ({item['reason']})" if item.get("reason") else ""
                converted.append(_result_item(item["approval_request_id"], REFUSED_CALL + reason))
        elif kind == "mcp_call":
            requested = item.get("approval_request_id")
            if not requested:
                converted.append(_call_item(item["id"], item))
            converted.append(_result_item(requested or item["id"], mcp_call_result(item)))
        else:
            converted.append(item)
    return converted


def mcp_call_result(item: Item) -> str:
    """What the model reads of an ``mcp_call``: its output, or what went wrong."""
    error = item.get("error")
    if error:
        if isinstance(error, dict):
            error = error.get("message") or error.get("content") or error
        return f"The tool call failed: {error}"
    return item.get("output") or ""


def _call_item(call_id: str, item: Item) -> Item:
    return {"type": "function_call", "call_id": call_id, "name": item["name"], "arguments": item["arguments"]}


def _result_item(call_id: str, output: str) -> Item:
    return {"type": "function_call_output", "call_id": call_id, "output": output}


def _message(item: Item, role: str, reasoning: str | None, params: Iterator[str]) -> ChatMessage:
    """A message item as a chat message; one with images keeps its parts in order, its text parts
    joined by newlines as chat completions' are (service/vision_prompt.py)."""
    content = item.get("content")
    if not isinstance(content, list) or not any(_is_image(part) for part in content):
        return ChatMessage(role, message_text(item), reasoning=reasoning)
    parts: list[str | ImageInput] = []
    for part in content:
        if _is_image(part):
            parts.append(image_from_url(str(part.get("image_url") or ""), next(params, "input")))
        elif isinstance(part, dict):
            parts.append(part.get("text", ""))
    text = "\n".join(part for part in parts if isinstance(part, str))
    return ChatMessage(role, text, reasoning=reasoning, parts=tuple(parts))


def _is_image(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") == "input_image"


def image_count(items: list[Item]) -> int:
    """How many images the message items hold."""
    return sum(_is_image(part) for item in items if item.get("type", "message") == "message"
               and isinstance(item.get("content"), list) for part in item["content"])


def _output_text(output: Any) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):  # Responses API: a list of content parts
        return "".join(part.get("text", "") for part in output if isinstance(part, dict))
    return "" if output is None else str(output)
