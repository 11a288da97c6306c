"""Prompts: a chat rendered by its model's template (with its reasoning variables and earlier
reasoning), or a completion's text or tokens; and, per model, the template and the reasoning format
read from it, cached by instance.

A chat's ``Prompt`` also says how its output is read (``ReasoningSplit``): whether the output is
split into reasoning and answer, and where the reasoning starts, which depends on the rendered
prompt (chat/reasoning.py ``starting_phase``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from studiolo.chat.harmony_tools import one_call_per_message
from studiolo.chat.reasoning import (
    NO_REASONING,
    ReasoningFormat,
    ReplyParser,
    history_message,
    reasoning_format_for,
    render_variables,
    splitter_for,
)
from studiolo.chat.templates import ChatTemplate, RenderTooLong, TemplateError, builtin_template_for
from studiolo.chat.tool_formats import HARMONY, format_for, template_messages
from studiolo.chat.tool_parser import ToolCallParser
from studiolo.config import RequestLimits
from studiolo.domain.chat import ChatMessage
from studiolo.domain.errors import InvalidRequest
from studiolo.engine.llama import LlamaModel
from studiolo.engine.long_text import tokenize_long
from studiolo.engine.vision_chunks import PlacedImage
from studiolo.models.instance import Instance
from studiolo.service.types import ChatRequest
from studiolo.service.vision_prompt import image_prompt


@dataclass(frozen=True)
class ReasoningSplit:
    """How a chat's output is split into reasoning and answer (ChatRequest.reasoning_output)."""

    fmt: ReasoningFormat
    prompt: str  # the rendered prompt: whether it opened the reasoning
    inline: bool = False  # the reasoning goes back into the text as <think>...</think>

    def parser(self, tools: ToolCallParser | None) -> ReplyParser:
        """The splitter in front of the request's tool-call parser. Harmony's calls are messages of
        their own, found by its splitter (tool format HARMONY): its answer text is never read for
        calls."""
        harmony = self.fmt.name == "harmony"
        return ReplyParser(splitter_for(self.fmt, self.prompt), None if harmony else tools, inline=self.inline)

    @property
    def control_text(self) -> bool:
        """Harmony's markers are special tokens: the output is read with their text."""
        return self.fmt.name == "harmony"


@dataclass(frozen=True)
class Prompt:
    tokens: list[int]
    text: str = ""  # what echo returns: the prompt as the client gave it
    added_bos: bool = False  # tokens[0] is a BOS the tokenizer added, not in the text
    reasoning: ReasoningSplit | None = None  # None: the output is not looked at for reasoning
    images: tuple[PlacedImage, ...] = ()  # where the prompt's images sit in ``tokens`` (service/vision_prompt.py)


class ChatPrompts:
    """Renders chats with each model's template; the template and its reasoning format are read once
    per instance (reading them touches the model's metadata)."""

    def __init__(self, limits: RequestLimits):
        self.limits = limits
        self._templates: dict[str, tuple[ChatTemplate, ReasoningFormat]] = {}

    def template(self, loaded: Instance) -> ChatTemplate:
        return self._read(loaded)[0]

    def reasoning_format(self, loaded: Instance) -> ReasoningFormat:
        return self._read(loaded)[1]

    def _read(self, loaded: Instance) -> tuple[ChatTemplate, ReasoningFormat]:
        cached = self._templates.get(loaded.key)
        if cached is None:
            model = loaded.model
            source = model.chat_template() or builtin_template_for(model.architecture())
            template = ChatTemplate(source, model.token_text_special(model.bos_id),
                                    model.token_text_special(model.eos_id))
            cached = self._templates[loaded.key] = (template, reasoning_format_for(source))
        return cached

    def chat_prompt(self, loaded: Instance, template: ChatTemplate, request: ChatRequest,
                    stop: Callable[[], bool]) -> Prompt:
        """The chat's prompt, rendered and tokenized (in a worker thread: ``stop`` says the client left;
        the tokenizer holds the model's vocabulary lock, so an unload waits for it or ends it)."""
        if any(message.parts for message in request.messages):
            with_images = image_prompt(loaded, request, self.limits,
                                       lambda marked: self.chat_prompt_text(loaded, template, marked, stop), stop)
            split = self._split(loaded, request, with_images.text)
            return Prompt(with_images.tokens, with_images.text, reasoning=split, images=with_images.images)
        text = self.chat_prompt_text(loaded, template, request, stop)
        tokens = tokenize_long(loaded.model, text, add_special=True, should_stop=stop)
        return Prompt(tokens, text, reasoning=self._split(loaded, request, text))

    def _split(self, loaded: Instance, request: ChatRequest, text: str) -> ReasoningSplit | None:
        fmt = self.reasoning_format(loaded)
        if not fmt.reasons:
            return None
        if request.reasoning_output == "raw":
            # Harmony's calls are found only by its splitter: with tools, a raw output is read as the
            # inline one (the reasoning in the content, as <think>...</think>), so calls are calls
            harmony_tools = fmt.name == "harmony" and request.tools is not None and request.tools.active
            return ReasoningSplit(fmt, text, inline=True) if harmony_tools else None
        return ReasoningSplit(fmt, text, inline=request.reasoning_output == "inline")

    def chat_prompt_text(self, loaded: Instance, template: ChatTemplate, request: ChatRequest,
                         stop: Callable[[], bool] | None = None) -> str:
        """The conversation as the model's template formats it, ready to tokenize.

        With ``resume_response`` the text ends inside the assistant's turn, after the reply so far.
        """
        tool_format = format_for(template.source)
        messages, variables = template_messages(tool_format, request.messages, request.tools)
        fmt = self.reasoning_format(loaded)
        messages = _with_reasoning(fmt, messages, request.messages)
        if tool_format is HARMONY:  # after the reasoning is matched to its messages
            messages = one_call_per_message(messages)
        variables.update(render_variables(fmt, request.reasoning_option, request.template_kwargs,
                                          param=request.reasoning_param, strict=request.reasoning_strict))
        limit = self.limits.max_prompt_chars
        try:
            text = template.render(messages, add_generation_prompt=True, max_chars=limit, should_stop=stop,
                                   **variables)
        except TemplateError as exc:
            exc.param = request.prompt_field  # Responses and /api/v1/chat send "input"
            raise
        except RenderTooLong:
            raise InvalidRequest(f"the prompt as the model's chat template formats it is longer than {limit} "
                                 "characters, the server's limit (setting limits.max_prompt_chars)",
                                 request.prompt_field) from None
        model = loaded.model
        if model.add_bos and template.bos_token and text.startswith(template.bos_token):
            text = text[len(template.bos_token) :]  # the tokenizer adds it; avoid a double BOS
        return text + (request.resume_response or "")

    @staticmethod
    def completion_prompt(model: LlamaModel, prompt: str | list[int], stop: Callable[[], bool]) -> Prompt:
        """Text prompts get the model's BOS, as llama-server does; token prompts are taken as they are."""
        if isinstance(prompt, str):
            tokens = tokenize_long(model, prompt, add_special=True, should_stop=stop)
            return Prompt(tokens, prompt, added_bos=model.add_bos)
        pieces = b"".join(model.token_bytes(t, special=True) for t in prompt if model.is_valid_token(t))
        return Prompt(list(prompt), pieces.decode("utf-8", errors="replace"))


def _with_reasoning(fmt: ReasoningFormat, rendered: list[dict], messages: list[ChatMessage]) -> list[dict]:
    """Earlier assistant turns with their reasoning where the template reads it (history_message).

    The rendered messages may hold a system message the tool format added, but never add or drop an
    assistant's: the n-th rendered assistant message is the n-th given one."""
    if fmt is NO_REASONING:
        return rendered
    reasonings = iter([m.reasoning for m in messages if m.role == "assistant"])
    return [history_message(fmt, m, next(reasonings, None)) if m.get("role") == "assistant" else m
            for m in rendered]
