"""Scoring prompt tokens from the logits of a prefill, without sampling anything.

The logits at row p of a sequence are the distribution of its token at row p + 1. Two kinds of
request read them while their prompt is prefilled:

- ``prompt_logprobs`` (echo with logprobs): every prompt token after the first, with its top k.
  It reads the logits of every row, so it reuses no cached prefix.
- ``score_tail`` and ``score_next`` (decisions, service/decisions.py): the last ``score_tail``
  prompt tokens (a label written after a question), and candidate ids as the token after the whole
  prompt (one-token labels, read from one row). Only rows from ``len(prompt) - score_tail - 1`` on
  are read, so everything before may come from the prefix cache: the continuations of one long
  prefix (the questions about one input, each label of a question) compute that prefix once.

Such a request has ``max_tokens=0``: the engine ends it once its prompt is in, after a
``ScoresEvent`` (or a ``PromptLogprobsEvent``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from studiolo.domain.errors import InvalidRequest
from studiolo.engine.llama import LlamaContext, LlamaModel
from studiolo.engine.sampling import log_normalizer, logprobs_of
from studiolo.engine.sequence import EngineEvent, GenerationRequest, PromptLogprobsEvent, ScoresEvent

if TYPE_CHECKING:  # the scheduler imports this module
    from studiolo.engine.scheduler import Chunk


class InvalidScoring(InvalidRequest):
    code = "invalid_scoring"
    param = "prompt"


def reads_prompt(request: GenerationRequest) -> bool:
    """Whether the request reads logits while its prompt is prefilled."""
    return request.prompt_logprobs or request.score_tail > 0 or bool(request.score_next)


def rides_a_lane(request: GenerationRequest) -> bool:
    """Whether a request may run in a read lane (engine/slots.py): it scores its tail or its next
    token and samples nothing, so its cells serve one step; no images (their rows map to positions)."""
    return (request.max_tokens == 0 and (request.score_tail > 0 or bool(request.score_next))
            and not request.prompt_logprobs and not request.images)


def first_read_row(request: GenerationRequest) -> int | None:
    """The first row whose logits score prompt tokens (None: only the last row is read, if any)."""
    if request.prompt_logprobs:
        return 0
    if request.score_tail:
        return len(request.prompt) - request.score_tail - 1
    return None


def least_prefill(request: GenerationRequest) -> int:
    """How many prompt tokens a sequence decodes whatever the cache holds: from its first read row
    to the end (at least the last token, whose logits the next token comes from)."""
    return request.score_tail + 1


def check_scoring(request: GenerationRequest, model: LlamaModel) -> None:
    """A scoring request's own checks (the engine checks the prompt itself)."""
    if not (request.score_tail or request.score_next):
        return
    if request.max_tokens != 0:
        raise InvalidScoring("scoring reads the prompt only: max_tokens must be 0", "max_tokens")
    if not 0 <= request.score_tail < len(request.prompt):
        raise InvalidScoring(f"cannot score the last {request.score_tail} tokens of a prompt of "
                             f"{len(request.prompt)}: at least one token must come before them")
    bad = next((t for t in request.score_next if not model.is_valid_token(t)), None)
    if bad is not None:
        raise InvalidScoring(f"token id {bad} is outside the vocabulary (0..{model.n_vocab - 1})", "score_next")


def score_chunk(context: LlamaContext, chunk: Chunk) -> list[EngineEvent]:
    """Read a prefilled chunk's rows; once the prompt is complete, the events with what was read."""
    seq = chunk.seq
    request = seq.request
    prompt = seq.prompt
    first = 1 if request.prompt_logprobs else len(prompt) - request.score_tail  # first position scored
    for offset in range(len(chunk.tokens)):
        position = chunk.start + offset + 1
        if not first <= position < len(prompt):
            continue
        logits = context.logits(chunk.batch_index + offset)
        if request.prompt_logprobs:
            seq.prompt_scores.append(logprobs_of(logits, prompt[position], request.logprobs or 0))
        else:
            seq.tail_scores.append(logprobs_of(logits, prompt[position], 0).logprob)
    if not chunk.completes_prompt:
        return []
    events: list[EngineEvent] = []
    if request.prompt_logprobs:
        events.append(PromptLogprobsEvent(seq.prompt_scores))
    if request.score_tail or request.score_next:
        last = context.logits(chunk.batch_index + len(chunk.tokens) - 1)
        following = log_softmax_at(last, request.score_next) if request.score_next else ()
        events.append(ScoresEvent(tuple(seq.tail_scores), following))
    return events


def log_softmax_at(logits: np.ndarray, ids: tuple[int, ...]) -> tuple[float, ...]:
    """The log-softmax of a row of logits at ``ids``, its normalizer computed once."""
    log_norm = log_normalizer(logits)
    return tuple(float(logits[i]) - log_norm for i in ids)
