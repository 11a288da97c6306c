"""One generation request as the engine sees it: tokens in, tokens out."""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from studiolo.domain.sampling import SamplingParams
from studiolo.engine.constraints import CompiledConstraint, ConstraintState
from studiolo.engine.llama import LoraAdapter
from studiolo.engine.reasoning_gate import ReasoningGate, ReasoningSpec
from studiolo.engine.sampling import TokenLogprob, TokenSampler
from studiolo.engine.speculation import DraftStats, SequenceSpeculation, Speculation
from studiolo.engine.vision_chunks import PlacedImage, row_position

if TYPE_CHECKING:  # slots.py is the engine's; a sequence only points at its slot
    from studiolo.engine.slots import Slot


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate, in tokens. Built by the service layer."""

    prompt: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int | None = None  # None: until end of generation or of the context
    stop_tokens: frozenset[int] = frozenset()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; k >= 0: the chosen token's, plus the top k
    prompt_logprobs: bool = False  # also score every prompt token after the first
    # scoring without sampling (engine/prompt_scoring.py; with max_tokens=0): the log-probabilities of
    # the prompt's last ``score_tail`` tokens, and of each ``score_next`` id as the token after the prompt
    score_tail: int = 0
    score_next: tuple[int, ...] = ()
    # at its end, its slot keeps only its first ``keep_cells`` tokens' cells (None: all): a decision's
    # reads leave the shared input behind, not their question, which nothing will reuse and which the
    # RAM prompt cache would otherwise save, one copy of the input per question
    keep_cells: int | None = None
    constraint: CompiledConstraint | None = None  # what the output must match (JSON schema, regex, ...)
    adapter: LoraAdapter | None = None  # a LoRA adapter to decode with (None: the bare model)
    report_progress: bool = False  # send a PrefillProgressEvent after each chunk of prompt
    save_state: bool = False  # hand the sequence's KV state back with its FinishEvent
    speculation: Speculation | None = None  # where drafts come from, to verify several tokens a step
    reasoning: ReasoningSpec | None = None  # a reasoning model's output: its phases, budget, waiting constraint
    # the prompt's images: their rows stand in ``prompt`` as placeholder ids (engine/vision_steps.py)
    images: tuple[PlacedImage, ...] = ()
    # time.monotonic() past which a sequence still waiting for a slot leaves the queue (engine/admission.py)
    queue_deadline: float | None = None


class SequenceState(enum.Enum):
    WAITING = "waiting"  # queued, no KV slot yet
    PREFILLING = "prefilling"  # prompt being fed in chunks
    DECODING = "decoding"  # one token per step
    FINISHED = "finished"


@dataclass(frozen=True)
class TokenEvent:
    token: int
    piece: bytes  # the token's UTF-8 bytes; a character may span several tokens
    logprob: TokenLogprob | None = None


@dataclass(frozen=True)
class PrefillProgressEvent:
    """How much of the prompt is in the KV cache (cached tokens count as done)."""

    done: int
    total: int


@dataclass(frozen=True)
class PromptLogprobsEvent:
    """Log-probabilities of prompt tokens 1..n-1, each given the tokens before it."""

    logprobs: list[TokenLogprob]


@dataclass(frozen=True)
class ScoresEvent:
    """What GenerationRequest.score_tail and score_next asked for, sent once the prompt is in."""

    tail: tuple[float, ...]  # the last score_tail prompt tokens, each given the tokens before it
    next: tuple[float, ...]  # each score_next id, given the whole prompt


@dataclass(frozen=True)
class FinishEvent:
    reason: str  # "stop" | "length" (max_tokens) | "context" (context full) | "cancelled" | "error" | "unloaded"
    # | "constraint" (the grammar reached one of llguidance's limits)
    # | "queue_timeout" (it waited past GenerationRequest.queue_deadline for a slot)
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    prefill_seconds: float
    decode_seconds: float
    error: str | None = None
    saved: SavedSequence | None = None  # with GenerationRequest.save_state, when it ended well
    draft: DraftStats | None = None  # what speculation drafted, when the request asked for it
    reasoning_tokens: int = 0  # output tokens taken before the answer began (GenerationRequest.reasoning)


@dataclass(frozen=True)
class SavedSequence:
    """A sequence's KV cells as llama.cpp saves them, and the tokens they hold (by position)."""

    tokens: list[int]
    state: bytes


EngineEvent = TokenEvent | PrefillProgressEvent | PromptLogprobsEvent | ScoresEvent | FinishEvent

_ids = itertools.count(1)


class Sequence:
    """Mutable generation state, touched only by the engine's worker thread."""

    def __init__(self, request: GenerationRequest, sink):
        self.id = next(_ids)
        self.request = request
        self.sink = sink  # where events go (engine.stream.TokenStream)
        self.state = SequenceState.WAITING
        self.slot: Slot | None = None  # once admitted
        self.cached_tokens = 0  # prompt tokens whose KV was reused
        self.n_past = 0  # rows with KV in the cache for this sequence (its KV position: position(n_past))
        self.pending: int | None = None  # sampled, not yet fed back
        self.generated: list[int] = []
        self.sampler: TokenSampler | None = None
        self.constraint: ConstraintState | None = None  # the request's constraint, advanced token by token
        self.speculation: SequenceSpeculation | None = None  # its drafting, once admitted
        self.gate: ReasoningGate | None = None  # its reasoning phase, with GenerationRequest.reasoning
        self.forced = False  # the token being taken was appended by the gate, not sampled
        self.raw_logits: np.ndarray | None = None  # the row of logits a token is being chosen from, for logprobs
        self.prompt_scores: list[TokenLogprob] = []  # filled while prefilling, if asked
        self.tail_scores: list[float] = []  # likewise, with GenerationRequest.score_tail
        self.cancelled = False
        self.submitted_at = time.perf_counter()
        self.prefill_started_at = 0.0
        self.first_token_at = 0.0

    @property
    def prompt(self) -> list[int]:
        return self.request.prompt

    @property
    def admitted_slot(self) -> Slot:
        """The slot of a running sequence (admitted, not finished): it holds one all along."""
        assert self.slot is not None, "the sequence was not admitted"
        return self.slot

    @property
    def pending_token(self) -> int:
        """The token a decoding sequence sampled last, fed back in its next batch."""
        assert self.pending is not None, "the sequence is not decoding"
        return self.pending

    def prompt_remaining(self) -> int:
        return len(self.prompt) - self.n_past

    def position(self, row: int) -> int:
        """The KV position of row ``row`` of the sequence (prompt, then generated tokens): ``row`` but
        past an M-RoPE image, which takes fewer positions than rows (vision_chunks.row_position)."""
        return row_position(self.request.images, row) if self.request.images else row

    def finish_event(self, reason: str, error: str | None = None, saved: SavedSequence | None = None) -> FinishEvent:
        now = time.perf_counter()
        first = self.first_token_at or now
        return FinishEvent(
            reason=reason,
            prompt_tokens=len(self.prompt),
            cached_tokens=self.cached_tokens,
            completion_tokens=len(self.generated),
            prefill_seconds=first - (self.prefill_started_at or first),
            decode_seconds=now - first,
            error=error,
            saved=saved,
            draft=self.speculation.stats if self.speculation is not None else None,
            reasoning_tokens=self.gate.reasoning_tokens if self.gate is not None else 0,
        )
