"""An Anthropic Messages request as the chat service's ``ChatRequest``: the same request a chat
completion becomes, so the prompt, tool calls, reasoning and constraints are the service's one path.

- ``system`` (text or text blocks) is the first, system message.
- A user message's ``tool_result`` blocks become tool messages (in their order, before the user's
  own text); an assistant's ``tool_use`` blocks its calls, its ``thinking`` blocks its reasoning.
- A ``system`` message within the conversation (Claude Code sends them) stays where it is.
- A last assistant message is a prefill: the reply continues it (``resume_response``).
- ``thinking`` and ``output_config.effort`` become the reasoning option and budget.

Every problem is an InvalidRequest naming the field in the bracket form the service uses
(``messages[1].content[0].source``); api/errors.py writes it dotted, as Anthropic does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from studiolo.api.anthropic.schemas import (
    CountTokensBody,
    ImageBlock,
    Message,
    MessagesBody,
    RedactedThinkingBlock,
    TextBlock,
    ThinkingBlock,
    ToolChoice,
    ToolResultBlock,
    ToolUseBlock,
)
from studiolo.api.openai.structured import constraint_of
from studiolo.domain.chat import ChatMessage, ImageInput, ToolCall, Tools, ToolSpec
from studiolo.domain.errors import InvalidRequest
from studiolo.domain.image_urls import image_from_url
from studiolo.domain.sampling import SamplingParams
from studiolo.service import constraints
from studiolo.service.constraints import AskedConstraint
from studiolo.service.presets import given
from studiolo.service.tool_calls import check_tool_results
from studiolo.service.tools import check_no_other_constraint, offered_tools
from studiolo.service.types import ChatRequest, GenerationOptions

# Anthropic's efforts that templates do not know, as the nearest they do
_EFFORTS = {"xhigh": "high", "max": "high"}
_USER_BLOCKS = (TextBlock, ImageBlock, ToolResultBlock)
_ASSISTANT_BLOCKS = (TextBlock, ToolUseBlock, ThinkingBlock, RedactedThinkingBlock)


@dataclass
class _Conversation:
    """The domain messages, and for each the wire field a tool-result error names."""

    messages: list[ChatMessage]
    fields: list[str]

    def add(self, message: ChatMessage, field: str) -> None:
        self.messages.append(message)
        self.fields.append(field)


def chat_request(body: CountTokensBody) -> ChatRequest:
    """The chat a Messages (or count_tokens) request stands for."""
    conversation, prefill = _conversation(body)
    messages = check_tool_results(conversation.messages, lambda index: conversation.fields[index])
    tools = _tools(body)
    options = _options(body) if isinstance(body, MessagesBody) else GenerationOptions(preset=body.preset)
    check_no_other_constraint(tools, options.constraint_param)
    if prefill is not None and tools is not None and tools.active:
        # the reply to continue is plain text: a call it started would be read as content
        raise InvalidRequest("a last assistant message (a prefill) cannot be combined with tools the model may "
                             "call (send tool_choice {\"type\": \"none\"})", f"messages[{len(body.messages) - 1}]")
    option, param = _reasoning_option(body)
    return ChatRequest(body.model, messages, options, body.ttl, prefill, tools, reasoning_option=option,
                       reasoning_param=param, reasoning_output="separate")


def _conversation(body: CountTokensBody) -> tuple[_Conversation, str | None]:
    conversation = _Conversation([], [])
    system = body.system if isinstance(body.system, str) or body.system is None else \
        "\n".join(block.text for block in body.system)
    if system is not None:
        conversation.add(ChatMessage("system", system), "system")
    messages, prefill = body.messages, None
    last = messages[-1]
    if last.role == "assistant" and len(messages) > 1:
        prefill = _prefill(len(messages) - 1, last)
        if prefill is not None:
            messages = messages[:-1]
    for index, message in enumerate(messages):
        if message.role == "user":
            _add_user(conversation, index, message)
        elif message.role == "system":
            _check_blocks(index, message, (TextBlock,))
            text = "\n".join(block.text for block in _blocks(message) if isinstance(block, TextBlock))
            conversation.add(ChatMessage("system", text), f"messages[{index}]")
        else:
            conversation.add(_assistant(index, message), f"messages[{index}]")
    return conversation, prefill


def _blocks(message: Message) -> list:
    return [TextBlock(type="text", text=message.content)] if isinstance(message.content, str) else message.content


def _check_blocks(index: int, message: Message, allowed: tuple[type, ...]) -> None:
    for block_index, block in enumerate(_blocks(message)):
        if not isinstance(block, allowed):
            raise InvalidRequest(f"a{'n' if message.role == 'assistant' else ''} {message.role} message cannot "
                                 f"hold '{block.type}' blocks", f"messages[{index}].content[{block_index}].type")


def _prefill(index: int, message: Message) -> str | None:
    """A last assistant message's text, which the reply continues; None if it holds calls (no prefill)."""
    _check_blocks(index, message, _ASSISTANT_BLOCKS)
    blocks = _blocks(message)
    if any(isinstance(block, ToolUseBlock) for block in blocks):
        raise InvalidRequest("the last message's tool_use blocks need their tool_result in a user message after it",
                             f"messages[{index}]")
    return "".join(block.text for block in blocks if isinstance(block, TextBlock))


def _add_user(conversation: _Conversation, index: int, message: Message) -> None:
    _check_blocks(index, message, _USER_BLOCKS)
    rest: list[tuple[int, TextBlock | ImageBlock]] = []
    results = 0
    for block_index, block in enumerate(_blocks(message)):
        where = f"messages[{index}].content[{block_index}]"
        if isinstance(block, ToolResultBlock):
            conversation.add(ChatMessage("tool", _result_text(block, where), tool_call_id=block.tool_use_id),
                             f"{where}.tool_use_id")
            results += 1
        else:
            rest.append((block_index, block))
    if rest or not results:
        conversation.add(_user(index, rest), f"messages[{index}]")


def _user(index: int, blocks: list[tuple[int, TextBlock | ImageBlock]]) -> ChatMessage:
    parts: tuple[str | ImageInput, ...] = ()
    for block_index, block in blocks:
        if isinstance(block, ImageBlock):
            parts += (_image(block, f"messages[{index}].content[{block_index}].source"),)
        else:
            parts += (block.text,)
    text = "\n".join(part for part in parts if isinstance(part, str))
    with_images = any(isinstance(part, ImageInput) for part in parts)
    return ChatMessage("user", text, parts=parts if with_images else ())


def _image(block: ImageBlock, param: str) -> ImageInput:
    source = block.source
    if source.type == "url":
        return image_from_url(source.url, f"{param}.url")
    return image_from_url(f"data:{source.media_type};base64,{source.data}", f"{param}.data")


def _result_text(block: ToolResultBlock, where: str) -> str:
    """A tool result's text; an error result says so, as the model has no other way to know."""
    content = block.content
    if isinstance(content, list):
        for part_index, part in enumerate(content):
            if isinstance(part, ImageBlock):
                raise InvalidRequest("images in a tool_result are not supported; send them in the user's own "
                                     "content", f"{where}.content[{part_index}]")
        content = "\n".join(part.text for part in content if isinstance(part, TextBlock))
    text = content or ""
    return f"Error: {text}" if block.is_error else text


def _assistant(index: int, message: Message) -> ChatMessage:
    _check_blocks(index, message, _ASSISTANT_BLOCKS)
    blocks = _blocks(message)
    text = "".join(block.text for block in blocks if isinstance(block, TextBlock))
    calls = tuple(ToolCall(block.id, block.name, json.dumps(block.input, ensure_ascii=False))
                  for block in blocks if isinstance(block, ToolUseBlock))
    thinking = "".join(block.thinking for block in blocks if isinstance(block, ThinkingBlock))
    return ChatMessage("assistant", text if text or not calls else None, calls, reasoning=thinking or None)


def _tools(body: CountTokensBody) -> Tools | None:
    specs = [ToolSpec(tool.name, tool.description, tool.input_schema) for tool in body.tools or ()]
    choice: ToolChoice | None = body.tool_choice
    if choice is None:
        return offered_tools(specs, None, None, True, _tool_field)
    if choice.type == "tool" and not choice.name:
        raise InvalidRequest("a tool_choice of type 'tool' needs the 'name' of the tool to call", "tool_choice.name")
    plain = {"auto": "auto", "any": "required", "none": "none"}.get(choice.type)
    named = choice.name if choice.type == "tool" else None
    return offered_tools(specs, plain, named, not choice.disable_parallel_tool_use, _tool_field)


def _tool_field(index: int, name: str) -> str:
    return f"tools[{index}].{'input_schema' if name == 'parameters' else name}"


def _reasoning_option(body: CountTokensBody) -> tuple[str | None, str]:
    """The reasoning option and the field it came from: ``thinking`` disabled is off, enabled is on
    (or the effort ``output_config`` asks); adaptive or absent is the model's default."""
    thinking, config = body.thinking, body.output_config
    if thinking is not None and thinking.type == "disabled":
        return "off", "thinking"
    if config is not None and config.effort is not None:
        return _EFFORTS.get(config.effort, config.effort), "output_config.effort"
    if thinking is not None and thinking.type == "enabled":
        return "on", "thinking"
    return None, "thinking"


def _options(body: MessagesBody) -> GenerationOptions:
    thinking = body.thinking
    budget = None
    if thinking is not None and thinking.type == "enabled":
        if thinking.budget_tokens is None:
            raise InvalidRequest("'thinking' of type 'enabled' needs 'budget_tokens'", "thinking.budget_tokens")
        budget = thinking.budget_tokens
    constraint = _constraint(body)
    stops = tuple(body.stop_sequences or ())
    return GenerationOptions(
        sampling=SamplingParams.given(temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
                                      min_p=body.min_p, repeat_penalty=body.repeat_penalty, seed=body.seed),
        max_tokens=body.max_tokens,
        stop=stops,
        ignore_eos=body.ignore_eos,
        # streamed: each chunk of a long prompt's prefill sends a ping, so that a client's idle timeout
        # (Claude Code falls back to a second, unstreamed request) does not fire before the first token
        report_progress=body.stream,
        constraint=constraint[0] if constraint else None,
        constraint_param=constraint[1] if constraint else None,
        preset=body.preset,
        draft_model=body.draft_model,
        reasoning_budget=budget,
        given=given(temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, min_p=body.min_p,
                    repeat_penalty=body.repeat_penalty, max_tokens=body.max_tokens,
                    stop=body.stop_sequences, constraint=constraint),
    )


def _constraint(body: MessagesBody) -> AskedConstraint | None:
    """The one output constraint: Anthropic's ``output_config.format`` or studiolo's guided fields."""
    asked = [found for found in (constraint_of(body), _output_format(body)) if found is not None]
    return constraints.the_one_constraint(asked, []) if len(asked) > 1 else (asked[0] if asked else None)


def _output_format(body: MessagesBody) -> AskedConstraint | None:
    config = body.output_config
    if config is None or config.format is None:
        return None
    param = "output_config.format.schema"
    spec = constraints.spec_of("json", config.format.schema_, None, param)
    return (spec, "output_config.format") if spec is not None else None
