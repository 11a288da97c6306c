"""Domain requests and events: what routers hand to the service and get back.

No wire format here; each API family translates its JSON to and from these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from studiolo.domain.chat import ChatMessage, Tools
from studiolo.domain.sampling import SamplingParams
from studiolo.engine.constraints import ConstraintSpec


@dataclass(frozen=True)
class GenerationOptions:
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int | None = None  # None: until the end of generation or of the context
    stop: tuple[str, ...] = ()
    stop_tokens: frozenset[int] = frozenset()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: off; k: the chosen token's plus the k most likely
    echo: bool = False  # return the prompt (chat: as the template formatted it) before the output
    n: int = 1
    constraint: ConstraintSpec | None = None  # what every choice's output must match
    constraint_param: str | None = None  # the request field the constraint came from, for errors
    report_progress: bool = False  # PromptProgress events while the prompt is processed
    save_state: bool = False  # keep each choice's KV state at its end (Generation.saved)
    preset: str | None = None  # the request's preset: fills each setting it did not give (service/presets.py)
    given: frozenset[str] = frozenset()  # the settings the request gave itself (service/presets.given)
    # speculative decoding (service/speculation.py): a model key, "ngram", "none"; None: the model's default
    draft_model: str | None = None
    prediction: str | None = None  # OpenAI's Predicted Outputs: text the output is expected to resemble
    reasoning_budget: int | None = None  # reasoning tokens before studiolo closes the reasoning (None: no cap)


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[ChatMessage]
    options: GenerationOptions
    ttl: float | None = None  # idle seconds before unloading, if this request JIT-loads the model
    # BladeLLM: an interrupted assistant reply to carry on from (placed after the assistant
    # turn's opening, with no end of turn); the output is only what comes after it
    resume_response: str | None = None
    tools: Tools | None = None
    context_length: int | None = None  # LM Studio's /api/v1/chat: the context if this request loads the model
    prompt_field: str = "messages"  # the request field a too-long prompt is blamed on
    # reasoning models (chat/reasoning.py): the request's reasoning option ("none" or "off", "on", an
    # effort; None: the model's default), named ``reasoning_param`` in a 400, and its extra template
    # variables (OpenAI-compatible servers' ``chat_template_kwargs``)
    reasoning_option: str | None = None
    reasoning_param: str = "reasoning"
    reasoning_strict: bool = False  # /api/v1/chat: an option the template does not list is a 400
    template_kwargs: dict[str, Any] | None = None
    # where the output's reasoning goes: "raw" (not looked for: it stays in the text as the model
    # wrote it), "separate" (ReasoningDelta events), "inline" (in the text as <think>...</think>)
    reasoning_output: str = "raw"


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    prompts: list[str | list[int]]  # one choice group per prompt: text, or token ids
    options: GenerationOptions
    ttl: float | None = None


@dataclass(frozen=True)
class Alternative:
    id: int
    text: str
    bytes: bytes
    logprob: float
    special: bool = False  # a control token (<|im_end|>, <eos>), not text


@dataclass(frozen=True)
class TokenInfo:
    """One output (or echoed prompt) token, for logprobs (OpenAI's and BladeLLM's shapes)."""

    id: int
    text: str
    bytes: bytes
    logprob: float | None  # None for the first prompt token, which nothing predicts
    top: tuple[Alternative, ...] = ()
    special: bool = False


@dataclass(frozen=True)
class TextDelta:
    index: int  # which choice
    text: str
    tokens: tuple[TokenInfo, ...] = ()  # the tokens this text came from (filled when logprobs are on)


@dataclass(frozen=True)
class ReasoningDelta:
    """Reasoning text of a choice (a reasoning model's thinking), apart from its answer."""

    index: int  # which choice
    text: str


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0  # of the completion tokens, those whose text fell in the reasoning

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class PromptProgress:
    """How far prompt processing has got (0..1), for LM Studio's prompt_processing events."""

    index: int
    fraction: float


@dataclass(frozen=True)
class ToolCallDelta:
    """Part of a tool call in a choice's output: first its id and name, then argument text."""

    index: int  # which choice
    call: int  # which call of the choice, from 0
    id: str | None = None  # given on the call's first delta only
    name: str | None = None  # likewise
    arguments: str = ""


@dataclass(frozen=True)
class Finished:
    index: int
    reason: str  # OpenAI's finish_reason: "stop" | "length" | "tool_calls"
    # why, in full: "eos" | "stop_string" | "max_tokens" | "context_length" | "cancelled"
    cause: str = "eos"
    stop_string: str | None = None  # the stop string that ended it (cause "stop_string"; Anthropic's stop_sequence)


GenerationEvent = TextDelta | ReasoningDelta | ToolCallDelta | PromptProgress | Finished
