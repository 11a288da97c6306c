"""Request bodies of the OpenAI-compatible endpoints, and their translation to domain requests.

Unknown fields are accepted and ignored, as OpenAI clients send many (``user``,
``metadata``, ...). Fields are checked for type and range; a bad one gives a 400 that
names it. Besides OpenAI's fields, llama.cpp's and BladeLLM's common controls are taken:
``top_k`` (-1 or 0: off), ``min_p``, ``repeat_penalty`` (``repetition_penalty``), ``stop_tokens``,
``stop_sequences``, ``ignore_eos``, ``echo`` (chat too), ``resume_response``, and the structured-output
fields of api/openai/structured.py. Speculative decoding: LM Studio's ``draft_model`` (a model key,
``"ngram"``, or ``"none"``), and on chat completions OpenAI's Predicted Outputs (``prediction``).
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Annotated, Any, Literal, cast

from pydantic import Discriminator, Field, StrictInt, Tag, field_validator

from studiolo.api.body import Body, sampling_field
from studiolo.api.openai.structured import GuidedFields, ResponseFormat, constraint_of
from studiolo.api.openai.tool_schemas import (
    MessageToolCall,
    ToolChoice,
    ToolDefinition,
    history_calls,
    tools_of,
)
from studiolo.api.wire_types import Int
from studiolo.domain.chat import ChatMessage, ImageInput
from studiolo.domain.errors import InvalidRequest
from studiolo.domain.image_urls import image_from_url
from studiolo.domain.sampling import SamplingParams
from studiolo.service.json_bounds import DEFAULT_MAX_DEPTH
from studiolo.service.presets import given
from studiolo.service.tool_calls import check_arguments, check_tool_results
from studiolo.service.tools import check_no_other_constraint
from studiolo.service.types import ChatRequest, CompletionRequest, GenerationOptions

MAX_LOGPROBS = 20
MAX_TOKEN_LIST = 1024  # stop_tokens, logit_bias: each entry is validated in Python, on the event loop
TOKEN_ID = re.compile(r"-?[0-9]+")


class StreamOptions(Body):
    include_usage: bool = False


class TextPart(Body):
    type: Literal["text"]
    text: str


class ImageURL(Body):
    url: str
    detail: str | None = None


class ImagePart(Body):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Prediction(Body):
    """OpenAI's Predicted Outputs: text the reply is expected to resemble, used as the draft."""

    type: str  # only "content" exists; another is refused by name in to_domain, not as a schema error
    content: str | list[TextPart]

    def text(self) -> str:
        if self.type != "content":
            raise InvalidRequest(f"prediction type '{self.type}' is not supported; the only type is 'content'",
                                 "prediction")
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)  # OpenAI joins the parts as they are


class Message(Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None  # an assistant's calls
    tool_call_id: str | None = None  # a tool message: the call it answers
    # an assistant's reasoning, as DeepSeek and LM Studio send it back (``reasoning``: as gpt-oss clients do)
    reasoning_content: str | None = None
    reasoning: str | None = None


class _GenerationBody(GuidedFields):
    model: str = Field(min_length=1)
    # LM Studio: idle seconds before a model this request JIT-loads is unloaded
    ttl: Int | None = Field(default=None, gt=0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Int = Field(1, ge=1)  # at most limits.max_n (service/bounds.py)
    max_tokens: Int | None = Field(None, ge=-1)
    temperature: float | None = sampling_field("temperature")
    top_p: float | None = sampling_field("top_p")
    top_k: Int | None = sampling_field("top_k")
    min_p: float | None = sampling_field("min_p")
    repeat_penalty: float | None = sampling_field("repeat_penalty")
    repetition_penalty: float | None = sampling_field("repeat_penalty")
    presence_penalty: float | None = sampling_field("presence_penalty")
    frequency_penalty: float | None = sampling_field("frequency_penalty")
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(None, max_length=MAX_TOKEN_LIST)
    seed: Int | None = None
    stop: str | list[str] | None = None
    stop_sequences: str | list[str] | None = None  # BladeLLM's name for stop
    stop_tokens: list[Int] | None = Field(None, max_length=MAX_TOKEN_LIST)
    ignore_eos: bool = False
    echo: bool = False  # return the prompt before the output (chat: as the template formatted it)
    # structured output (structured.py): one of these per request
    response_format: ResponseFormat | None = None
    preset: str | None = Field(None, min_length=1)  # LM Studio: a preset's settings, under the request's own
    # LM Studio: the model to draft with (service/speculation.py); "ngram", or "none" to switch drafting off
    draft_model: str | None = None

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[int, float] | None:
        if value is None:
            return None
        for key in value:
            if not TOKEN_ID.fullmatch(key):
                raise ValueError(f"keys must be token ids, got '{key}'")
        return {int(key): bias for key, bias in value.items()}

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling(self) -> SamplingParams:
        repeat = self.repeat_penalty if self.repeat_penalty is not None else self.repetition_penalty
        return SamplingParams.given(
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
            repeat_penalty=repeat, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, logit_bias=dict(self.logit_bias or {}), seed=self.seed,
        )

    def options(self, *, max_tokens: int | None, logprobs: int | None,
                prediction: str | None = None) -> GenerationOptions:
        stops = []
        for value in (self.stop, self.stop_sequences):
            stops.extend([value] if isinstance(value, str) else value or [])
        constraint = constraint_of(self)
        return GenerationOptions(
            sampling=self.sampling(),
            max_tokens=None if max_tokens is None or max_tokens < 0 else max_tokens,
            stop=tuple(stops),
            stop_tokens=frozenset(self.stop_tokens or ()),
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
            echo=self.echo,
            n=self.n,
            constraint=constraint[0] if constraint else None,
            constraint_param=constraint[1] if constraint else None,
            preset=self.preset,
            draft_model=self.draft_model,
            prediction=prediction,
            given=given(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
                        repeat_penalty=self.repeat_penalty if self.repeat_penalty is not None
                        else self.repetition_penalty, max_tokens=max_tokens,
                        stop=self.stop if self.stop is not None else self.stop_sequences,
                        constraint=constraint or self.response_format),  # {"type": "text"} too
        )



class ChatCompletionBody(_GenerationBody):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Int | None = Field(None, ge=-1)
    # OpenAI: a boolean; BladeLLM also sends a count, which then sets top_logprobs unless given
    logprobs: bool | Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] = False
    top_logprobs: Int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    resume_response: str | None = None  # BladeLLM: carry on from an interrupted assistant reply
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True
    prediction: Prediction | None = None
    # reasoning models (docs/API.md "Reasoning"): OpenAI's effort, and variables for the chat template
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    # studiolo: reasoning tokens before it closes the reasoning itself (None: the model's default, else no cap)
    reasoning_budget: Int | None = Field(None, ge=0)

    @property
    def wants_logprobs(self) -> bool:
        return self.logprobs is not False

    def to_domain(self, max_json_depth: int = DEFAULT_MAX_DEPTH) -> ChatRequest:
        if self.top_logprobs is not None and not self.wants_logprobs:
            raise InvalidRequest("'top_logprobs' requires 'logprobs' to be true", "top_logprobs")
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        if max_tokens == 0:
            raise InvalidRequest("'max_tokens' must be at least 1 (or -1 for no limit)", "max_tokens")
        logprobs = None
        if self.wants_logprobs:
            count = 0 if isinstance(self.logprobs, bool) else self.logprobs
            logprobs = self.top_logprobs if self.top_logprobs is not None else count
        messages = [_message_to_domain(i, m, max_json_depth) for i, m in enumerate(self.messages)]
        messages = check_tool_results(messages)
        prediction = self.prediction.text() if self.prediction is not None else None
        options = replace(self.options(max_tokens=max_tokens, logprobs=logprobs, prediction=prediction),
                          reasoning_budget=self.reasoning_budget)
        tools = tools_of(self.tools, self.tool_choice, self.parallel_tool_calls)
        check_no_other_constraint(tools, options.constraint_param)
        if self.resume_response is not None and tools is not None and tools.choice != "none":
            # the reply to resume is plain text: an interrupted call would be read as content
            raise InvalidRequest("'resume_response' continues a text reply and cannot be combined with callable "
                                 "'tools' (send tool_choice \"none\")", "resume_response")
        return ChatRequest(self.model, messages, options, self.ttl, self.resume_response, tools,
                           reasoning_option=_EFFORTS.get(self.reasoning_effort or "", self.reasoning_effort),
                           reasoning_param="reasoning_effort", template_kwargs=self.chat_template_kwargs)


# OpenAI's efforts that templates do not know, as the nearest they do
_EFFORTS = {"minimal": "low", "xhigh": "high"}


def _message_to_domain(index: int, message: Message, max_json_depth: int) -> ChatMessage:
    role = "system" if message.role == "developer" else message.role
    content = message.content
    parts: tuple[str | ImageInput, ...] = ()
    if isinstance(content, list):
        texts = []
        for part_index, part in enumerate(content):
            if isinstance(part, ImagePart):  # `detail` is accepted and has no effect
                parts += (image_from_url(part.image_url.url, f"messages[{index}].content[{part_index}].image_url"),)
            else:
                texts.append(part.text)
                parts += (part.text,)
        content = "\n".join(texts)
        parts = parts if any(isinstance(part, ImageInput) for part in parts) else ()
    tool_calls: tuple = ()
    if message.role == "assistant":
        for call_index, call in enumerate(message.tool_calls or ()):
            where = f"messages[{index}].tool_calls[{call_index}].function.arguments"
            check_arguments(call.function.arguments, where, max_json_depth)
        tool_calls = history_calls(index, message.tool_calls)
    tool_call_id = message.tool_call_id if message.role == "tool" else None
    name = message.name if message.role == "tool" else None
    reasoning = None
    if message.role == "assistant":
        reasoning = message.reasoning_content if message.reasoning_content is not None else message.reasoning
    return ChatMessage(role, content, tool_calls, tool_call_id, name, reasoning, parts)


# Token ids are strict integers (no booleans, floats or numeric strings, as OpenAI): validated in
# Rust, whereas ``Int``'s Python check per item took seconds on the event loop for a long token list.
TokenIds = list[StrictInt]


def _prompt_form(value: Any) -> str:
    """Which of the four forms a prompt is, told by its first item: a plain union would try each
    form on every item (2.6 s for 3.9 million token ids). Tags are type-like so that errors name
    ``prompt[0]``, not the form (api/errors.field_path)."""
    if isinstance(value, str):
        return "str"
    first = value[0] if isinstance(value, list) and value else None
    if isinstance(first, str):
        return "list[str]"
    return "list[list[int]]" if isinstance(first, list) else "list[int]"


Prompt = Annotated[
    Annotated[str, Tag("str")] | Annotated[list[str], Tag("list[str]")] | Annotated[TokenIds, Tag("list[int]")]
    | Annotated[list[TokenIds], Tag("list[list[int]]")],
    Discriminator(_prompt_form),
]


class CompletionBody(_GenerationBody):
    prompt: Prompt
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    suffix: str | None = None
    best_of: Int | None = Field(None, ge=1)

    def to_domain(self) -> CompletionRequest:
        if self.suffix:
            raise InvalidRequest("'suffix' (fill-in-the-middle) is not supported", "suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise InvalidRequest("'best_of' different from 'n' is not supported", "best_of")
        max_tokens = self.max_tokens
        if max_tokens == 0 and not self.echo:
            raise InvalidRequest("'max_tokens' may be 0 only with 'echo' (to score the prompt)", "max_tokens")
        # absent, null or -1: until the end of generation or of the context (not OpenAI's 16)
        options = self.options(max_tokens=max_tokens, logprobs=self.logprobs)
        return CompletionRequest(self.model, _prompts(self.prompt), options, self.ttl)


def _prompts(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise InvalidRequest("'prompt' is empty", "prompt")
    if all(isinstance(p, int) for p in prompt):
        return [cast(list[int], list(prompt))]
    return cast(list[str | list[int]], list(prompt))
