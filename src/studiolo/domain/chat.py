"""A conversation as every API family hands it to the service: messages, tool calls, tools."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ToolCall:
    """A call the assistant made (in a conversation's history, or in an output)."""

    id: str
    name: str
    arguments: str  # a JSON object, as text (OpenAI's function.arguments)


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call (OpenAI's ``tools[].function``)."""

    name: str
    description: str | None = None
    parameters: dict | None = None  # a JSON schema for the arguments; None: takes none
    strict: bool = False


@dataclass(frozen=True)
class ImageInput:
    """An image a client put in a message: its bytes as sent (base64 decoded, not yet checked)."""

    data: bytes
    param: str  # the request field it came from, for errors: "messages[1].content[0].image_url"
    url: str | None = None  # a remote http(s) URL still to fetch (``data`` is then empty; service/image_fetch.py)


@dataclass(frozen=True)
class ChatMessage:
    role: str  # system | user | assistant | tool ("developer" arrives here as "system")
    content: str | None
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant's calls
    tool_call_id: str | None = None  # a tool message: the call it answers
    name: str | None = None  # a tool message: the function's name
    reasoning: str | None = None  # an assistant's reasoning, given back to templates that read it
    # a message with images: its text parts and images in order (``content`` is then its text parts
    # alone, joined); empty for a message of text only
    parts: tuple[str | ImageInput, ...] = ()

    @property
    def images(self) -> tuple[ImageInput, ...]:
        return tuple(part for part in self.parts if isinstance(part, ImageInput))


@dataclass(frozen=True)
class Tools:
    """What a chat request offers the model to call, and how it may call it."""

    specs: tuple[ToolSpec, ...]
    choice: str = "auto"  # "auto" | "required" | "none" | a tool's name (OpenAI's named choice)
    parallel: bool = True  # several calls in one reply

    @property
    def active(self) -> bool:
        return bool(self.specs) and self.choice != "none"
