"""The request body of LM Studio's stateful chat, ``POST /api/v1/chat``, and its translation to a
``Turn`` of the conversation service (service/conversations.py).

``system_prompt`` applies to its own turn only (like OpenAI's ``instructions``); ``context_length``
is the context the model gets if this request loads it; ``reasoning`` (off, low, medium, high,
on) goes to a reasoning model's template, and one the template does not list in its
``capabilities.reasoning.allowed_options`` is a 400 naming ``reasoning`` (chat/reasoning.py,
strict). ``integrations`` may name remote MCP servers (``ephemeral_mcp``) and
servers of ``STUDIOLO_HOME/mcp.json`` (``"mcp/<name>"`` or ``{"type": "plugin", "id": "mcp/<name>"}``),
whose tools the server runs for the model (service/mcp_turn.py) if its settings allow it
(service/mcp_integrations.py).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from studiolo.api.body import Body, sampling_field
from studiolo.api.wire_types import Int
from studiolo.config import MIN_CONTEXT
from studiolo.domain.errors import InvalidRequest
from studiolo.domain.image_urls import image_from_url
from studiolo.domain.responses import check_response_id
from studiolo.domain.sampling import SamplingParams
from studiolo.service.conversations import Turn
from studiolo.service.items import Item, image_part, user_message
from studiolo.service.mcp import McpServer
from studiolo.service.mcp_integrations import Integration, McpPlugin
from studiolo.service.presets import given
from studiolo.service.types import GenerationOptions


class InputItem(Body):
    """A text item (``content``) or an image item (``data_url``: a base64 data: URL)."""

    type: Literal["message", "text", "image"]
    content: str | None = None
    data_url: str | None = None


class ChatBody(Body):
    model: str = Field(min_length=1)
    input: str | list[InputItem]
    system_prompt: str | None = None
    stream: bool = False
    temperature: float | None = sampling_field("temperature", le=1)  # LM Studio documents [0, 1]
    top_p: float | None = sampling_field("top_p")
    top_k: Int | None = sampling_field("top_k")
    min_p: float | None = sampling_field("min_p")
    repeat_penalty: float | None = sampling_field("repeat_penalty")
    max_output_tokens: Int | None = Field(None, ge=1)
    reasoning: Literal["off", "low", "medium", "high", "on"] | None = None
    context_length: Int | None = Field(None, ge=MIN_CONTEXT)
    store: bool = True
    previous_response_id: str | None = None
    integrations: list[Any] | None = None
    ttl: float | None = Field(None, gt=0)
    preset: str | None = Field(None, min_length=1)  # a preset's settings, under the request's own
    # v0's field (LM Studio documents none here): a model key, "ngram", or "none" (service/speculation.py)
    draft_model: str | None = None
    # studiolo: reasoning tokens before it closes the reasoning itself (None: the model's default, else no cap)
    reasoning_budget: Int | None = Field(None, ge=0)

    def turn(self, report_progress: bool) -> Turn:
        if self.previous_response_id is not None:
            check_response_id(self.previous_response_id)  # a 400 before any model loads
        sampling = SamplingParams.given(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                                        min_p=self.min_p, repeat_penalty=self.repeat_penalty)
        options = GenerationOptions(sampling=sampling, max_tokens=self.max_output_tokens,
                                    report_progress=report_progress, preset=self.preset,
                                    draft_model=self.draft_model, reasoning_budget=self.reasoning_budget,
                                    given=given(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                                                min_p=self.min_p, repeat_penalty=self.repeat_penalty,
                                                max_tokens=self.max_output_tokens))
        items, image_params = self._items()
        return Turn(self.model, items, options, self.system_prompt or None, self.previous_response_id,
                    self.store, ttl=self.ttl, context_length=self.context_length,
                    reasoning_option=self.reasoning, reasoning_param="reasoning", reasoning_strict=True,
                    image_params=image_params)

    def mcp_integrations(self) -> list[Integration]:
        """The request's integrations (LM Studio's shapes); anything else is a 400."""
        return [_integration(item, f"integrations[{index}]") for index, item in enumerate(self.integrations or ())]

    def _items(self) -> tuple[list[Item], tuple[str, ...]]:
        """The turn's stored items and the field of each image in them. Each text item is a user
        message of its own; an image item joins the message of the item before it and the text item
        after it, so ``[text, image, text]`` is one message with its image between its texts."""
        if isinstance(self.input, str):
            return [user_message(self.input)], ()
        items: list[Item] = []
        params: list[str] = []
        joins = False  # the previous item was an image: the next item joins its message
        for index, item in enumerate(self.input):
            part = _stored_part(item, f"input[{index}]")
            if items and (joins or part["type"] == "input_image"):
                items[-1]["content"].append(part)
            else:
                items.append({"type": "message", "role": "user", "content": [part]})
            if part["type"] == "input_image":
                params.append(f"input[{index}].data_url")
            joins = part["type"] == "input_image"
        if not items:
            raise InvalidRequest("'input' is empty", "input")
        return items, tuple(params)


def _stored_part(item: InputItem, param: str) -> Item:
    """An input item as a part of a stored message (service/items.py)."""
    if item.type == "image":
        if item.data_url is None:
            raise InvalidRequest("an image item needs its 'data_url'", f"{param}.data_url")
        image_from_url(item.data_url, f"{param}.data_url")  # broken base64 is refused before anything is stored
        return image_part(item.data_url)
    if item.content is None:
        raise InvalidRequest("a text item needs its 'content'", f"{param}.content")
    return {"type": "input_text", "text": item.content}


def _integration(item: Any, param: str) -> Integration:
    if isinstance(item, str):
        return McpPlugin(_plugin_name(item, param))
    if isinstance(item, dict) and item.get("type") == "plugin":
        return _plugin(item, param)
    if not isinstance(item, dict) or item.get("type") != "ephemeral_mcp":
        raise InvalidRequest("an integration is a plugin id (\"mcp/<name>\"), or an object of type 'plugin' or "
                             "'ephemeral_mcp'", param)
    return _mcp_server(item, param)


def _plugin(item: dict[str, Any], param: str) -> McpPlugin:
    unknown = set(item) - {"type", "id", "allowed_tools"}
    if unknown:
        raise InvalidRequest(f"unknown fields in a plugin integration: {', '.join(sorted(unknown))}", param)
    plugin_id = item.get("id")
    if not isinstance(plugin_id, str):
        raise InvalidRequest("a plugin integration needs its 'id' (\"mcp/<name>\")", f"{param}.id")
    return McpPlugin(_plugin_name(plugin_id, f"{param}.id"), _allowed_tools(item, param))


def _plugin_name(plugin_id: str, param: str) -> str:
    """The mcp.json server a plugin id names: the only plugins served are ``mcp/<name>``."""
    if not plugin_id.startswith("mcp/") or len(plugin_id) == len("mcp/"):
        raise InvalidRequest(f"unknown plugin '{plugin_id}': the plugins served are the servers of mcp.json, "
                             "as \"mcp/<name>\"", param)
    return plugin_id[len("mcp/"):]


def _allowed_tools(item: dict[str, Any], param: str) -> tuple[str, ...] | None:
    allowed = item.get("allowed_tools")
    if allowed is not None and not (isinstance(allowed, list) and all(isinstance(name, str) for name in allowed)):
        raise InvalidRequest("'allowed_tools' must be a list of tool names", f"{param}.allowed_tools")
    return tuple(allowed) if allowed is not None else None


def _mcp_server(item: dict[str, Any], param: str) -> McpServer:
    label, url = item.get("server_label"), item.get("server_url")
    if not isinstance(label, str) or not label:
        raise InvalidRequest("an ephemeral MCP integration needs its 'server_label'", f"{param}.server_label")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise InvalidRequest("'server_url' must be an http(s) URL (remote MCP servers only)", f"{param}.server_url")
    allowed, headers = _allowed_tools(item, param), item.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise InvalidRequest("'headers' must map header names to strings", f"{param}.headers")
    unknown = set(item) - {"type", "server_label", "server_url", "allowed_tools", "headers"}
    if unknown:
        raise InvalidRequest(f"unknown fields in an ephemeral MCP integration: {', '.join(sorted(unknown))}", param)
    return McpServer(label, url, allowed, tuple(headers.items()))
