"""Request bodies of Anthropic's Messages API (``POST /v1/messages`` and ``/v1/messages/count_tokens``),
as Anthropic documents them and its ``anthropic`` SDK sends them.

Unknown fields are accepted and ignored (``metadata``, ``service_tier``, ``cache_control`` on a
block, ``citations``, ...): docs/API.md "Anthropic Messages" lists what has no effect here. Beside
Anthropic's fields, studiolo's own: ``ttl``, ``draft_model``, ``preset``, ``seed``, ``min_p``,
``repeat_penalty``, ``ignore_eos`` and the structured-output fields ``guided_*`` / ``structured_outputs``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from studiolo.api.body import Body, sampling_field
from studiolo.api.openai.structured import GuidedFields
from studiolo.api.wire_types import Int

MAX_STOP_SEQUENCES = 16


class TextBlock(Body):
    type: Literal["text"]
    text: str


class Base64Source(Body):
    type: Literal["base64"]
    media_type: str
    data: str


class URLSource(Body):
    type: Literal["url"]
    url: str


class ImageBlock(Body):
    type: Literal["image"]
    source: Annotated[Base64Source | URLSource, Field(discriminator="type")]


class ToolUseBlock(Body):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]


ResultPart = Annotated[TextBlock | ImageBlock, Field(discriminator="type")]


class ToolResultBlock(Body):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[ResultPart] | None = None
    is_error: bool = False


class ThinkingBlock(Body):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None  # studiolo's are empty; any is taken back unread


class RedactedThinkingBlock(Body):
    type: Literal["redacted_thinking"]
    data: str


ContentBlock = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
    Field(discriminator="type"),
]


class Message(Body):
    # "system": a system message within the conversation (Claude Code's beta mid-conversation-system)
    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlock]


class Tool(Body):
    # a custom tool: Anthropic's server tools (web search, bash, ...) carry another type and no schema
    type: Literal["custom"] | None = None
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    input_schema: dict[str, Any]


class ToolChoice(Body):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None  # with "tool": the tool to call
    disable_parallel_tool_use: bool = False


class Thinking(Body):
    # enabled: thinking on, capped at budget_tokens; disabled: off where the template can switch it
    # off; adaptive: the model's default
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: Int | None = Field(None, ge=0)


class OutputFormat(Body):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")  # 'schema' would shadow BaseModel.schema


class OutputConfig(Body):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: OutputFormat | None = None


class CountTokensBody(Body):
    """What ``count_tokens`` reads: the prompt's parts, and the model to render them with."""

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None
    ttl: Int | None = Field(default=None, gt=0)  # LM Studio: idle seconds before a JIT-loaded model unloads
    preset: str | None = Field(None, min_length=1)


class MessagesBody(CountTokensBody, GuidedFields):
    max_tokens: Int = Field(ge=1)
    stream: bool = False
    stop_sequences: list[str] | None = None
    # Anthropic's range is 0 to 1
    temperature: float | None = sampling_field("temperature", le=1.0)
    top_p: float | None = sampling_field("top_p")
    top_k: Int | None = sampling_field("top_k")
    metadata: dict[str, Any] | None = None  # user_id: taken, no effect
    # studiolo's own
    seed: Int | None = None
    min_p: float | None = sampling_field("min_p")
    repeat_penalty: float | None = sampling_field("repeat_penalty")
    draft_model: str | None = None
    ignore_eos: bool = False

    @property
    def response_format(self) -> None:
        """OpenAI's field, which this API has not (structured.constraint_of reads it)."""
        return None

    @field_validator("stop_sequences")
    @classmethod
    def _few_stops(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(value) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        return value
