"""Conversation items: what a stored response keeps of its turn, and how they become chat messages.

Stored responses hold their input and output as items in the shape of OpenAI's Responses API, the
one format both stateful APIs (``/v1/responses`` and LM Studio's ``/api/v1/chat``) translate to and
from, so that either can continue a conversation the other began:

- ``{"type": "message", "role": "user" | "system" | "developer" | "assistant", "content": [parts]}``
  with ``input_text`` parts (input) or ``output_text`` parts (the assistant's output);
- ``{"type": "function_call", "call_id", "name", "arguments"}`` (a call the model made);
- ``{"type": "function_call_output", "call_id", "output"}`` (the result the client sent back);
- ``{"type": "compaction", "id", "encrypted_content"}``: the summary of a compacted conversation
  (service/compaction.py), in plain text; the model sees it as its own message;
- ``{"type": "reasoning", "id", "summary": [], "content": [{"type": "reasoning_text", "text"}]}``: a
  reasoning model's reasoning, before the message or calls it led to. It becomes the next assistant
  message's ``ChatMessage.reasoning``; the model's template decides whether the prompt keeps it
  (Qwen3's keeps it only within a tool loop, after the last user message).
"""

from __future__ import annotations

import secrets
from typing import Any

from studiolo.domain.chat import ChatMessage, ToolCall
from studiolo.domain.errors import InvalidRequest

Item = dict[str, Any]


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def user_message(text: str, role: str = "user") -> Item:
    return {"type": "message", "role": role, "content": [{"type": "input_text", "text": text}]}


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


def chat_messages(items: list[Item]) -> list[ChatMessage]:
    """Items, in order, as the chat messages a template renders: consecutive function calls join
    one assistant message (after its text, if the message item came just before). Reasoning goes
    with the assistant message after it (a reasoning item starts a new one); reasoning that no
    assistant message follows is dropped."""
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
            messages.append(ChatMessage(role, message_text(item), reasoning=mine))
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


def _output_text(output: Any) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):  # Responses API: a list of content parts
        return "".join(part.get("text", "") for part in output if isinstance(part, dict))
    return "" if output is None else str(output)
