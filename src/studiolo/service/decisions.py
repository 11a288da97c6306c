"""Decisions on any chat model: questions about one input, answered from the model's probabilities
over each question's labels, nothing generated (``/v1/decisions``, ``/v1/systemone``).

The input is rendered once (service/decision_prompt.py) and every (question, label) is scored as a
continuation of it with the engine's prefill-only scoring (engine/prompt_scoring.py):

- the labels of a question that are one token each are read together from one sequence, prefix +
  question, as candidates for its next token;
- a label of several tokens is a sequence of its own, prefix + question + label, whose last tokens
  are scored: the label's probability is the product of its tokens' (a whole sequence, not its first
  token).

A label's probability is normalised over the question's labels. With more than one read, what they
all start with (the prefix, and the start their questions share) is prefilled first, alone; the reads
then start from its cells (cached tokens in the usage) and run together in the engine's batches, as
many a step as its batch holds (read lanes, engine/slots.py).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from studiolo.chat.reasoning import ReasoningFormat, reasoning_format_for
from studiolo.config import RequestLimits
from studiolo.domain.chat import ChatMessage
from studiolo.domain.errors import InvalidRequest
from studiolo.engine.admission import queue_deadline
from studiolo.engine.engine import ContextLengthExceeded, Engine
from studiolo.engine.llama import LlamaModel
from studiolo.engine.prompt_cache import common_prefix_length
from studiolo.engine.sequence import FinishEvent, GenerationRequest, ScoresEvent
from studiolo.engine.stream import TokenStream
from studiolo.models.gguf_info import ModelInfo
from studiolo.models.manager import ModelManager, Target
from studiolo.service.bounds import check_chat_bounds, off_loop
from studiolo.service.chat_prompt import ChatPrompts
from studiolo.service.decision_prompt import Question, label_text, question_text
from studiolo.service.generation import raise_if_failed
from studiolo.service.types import ChatRequest, GenerationOptions

MAX_QUESTIONS = 400  # OpenAI's limit per request
MAX_CHOICES = 255  # OpenAI's limit per choice question
MAX_LEVELS = 10  # vLLM's (and System One's) limit per score question
MAX_LABELS = 4096  # (question, label) pairs per request: bounds the engine work one request asks for


@dataclass(frozen=True)
class DecisionRequest:
    model: str
    messages: list[ChatMessage]
    questions: list[Question]
    input_field: str = "input"  # the request field the input came from, for errors ("state" in System One)
    ttl: float | None = None


@dataclass(frozen=True)
class Answer:
    """A question's answer: its labels' probabilities, normalised, and how much of the model's
    probability mass the labels held together (1: it would write nothing else there)."""

    probabilities: tuple[float, ...]
    label_mass: float

    @property
    def top(self) -> int:
        return max(range(len(self.probabilities)), key=self.probabilities.__getitem__)

    @property
    def expected_index(self) -> float:
        """Σ i·p_i over zero-based labels: a score question's score."""
        return sum(i * p for i, p in enumerate(self.probabilities))

    @property
    def top_mass(self) -> float:
        """The winner's probability among everything the model could write (vLLM's confidence)."""
        return self.probabilities[self.top] * self.label_mass

    @property
    def margin_over_uniform(self) -> float:
        """(p_max − 1/n)/(1 − 1/n): 0 when the labels are equally likely, 1 when one is certain."""
        n = len(self.probabilities)
        return (self.probabilities[self.top] - 1 / n) / (1 - 1 / n)


@dataclass(frozen=True)
class Decisions:
    model: str
    answers: list[Answer]
    input_tokens: int  # over every sequence run (the prefix's, each read's): the prefix counts once per read
    cached_tokens: int  # of those, the ones that came from the prefix cache


@dataclass
class _Read:
    """One scoring sequence: a question's one-token labels (``next_labels``), or one longer label."""

    question: int
    tokens: list[int]
    next_labels: list[int] = field(default_factory=list)  # label indexes scored as next tokens
    next_ids: list[int] = field(default_factory=list)
    tail_label: int | None = None  # a label scored as the prompt's tail
    tail_length: int = 0


def check_questions(questions: list[Question], field_name: str = "questions") -> None:
    """Every client error in the questions, as a 400 naming the field."""
    if not questions:
        raise InvalidRequest("there are no questions: ask at least one", field_name)
    if len(questions) > MAX_QUESTIONS:
        raise InvalidRequest(f"{len(questions)} questions, more than {MAX_QUESTIONS} per request", field_name)
    for question in questions:
        if not question.instructions.strip():
            raise InvalidRequest("the question's instructions are empty", f"{question.param}.instructions")
        _check_labels(question)
    total = sum(len(q.labels) for q in questions)
    if total > MAX_LABELS:
        raise InvalidRequest(f"the questions have {total} labels in all, more than {MAX_LABELS} per request",
                             field_name)


def _check_labels(question: Question) -> None:
    labels, params = question.labels, question.label_params or (question.labels_param,) * len(question.labels)
    if question.kind == "choice" and not 2 <= len(labels) <= MAX_CHOICES:
        raise InvalidRequest(f"a choice question takes 2 to {MAX_CHOICES} choices, not {len(labels)}",
                             question.labels_param)
    if question.kind == "score" and not 2 <= len(labels) <= MAX_LEVELS:
        raise InvalidRequest(f"a score question takes 2 to {MAX_LEVELS} levels, not {len(labels)}: a score "
                             "needs a range", question.labels_param)
    seen: dict[str, int] = {}
    for index, label in enumerate(labels):
        if not label.strip():
            raise InvalidRequest("a label is empty: the model could not answer with it", params[index])
        if "\n" in label:
            raise InvalidRequest("a label spans lines: the model answers on one line", params[index])
        if label in seen:
            raise InvalidRequest(f"'{label}' is listed twice (as labels {seen[label]} and {index}): labels must be "
                                 "unique as the model reads them", params[index])
        seen[label] = index


class DecisionService:
    def __init__(self, manager: ModelManager, prompts: ChatPrompts, limits: RequestLimits):
        self.manager = manager
        self.prompts = prompts  # the generation service's: templates read once per instance
        self.limits = limits

    async def decide(self, request: DecisionRequest) -> Decisions:
        check_questions(request.questions)
        chat = ChatRequest(request.model, request.messages, GenerationOptions(), ttl=request.ttl,
                           prompt_field=request.input_field)
        check_chat_bounds(chat, self.limits)
        info = self.manager.model_info(request.model)  # raises for unknown names
        if info is not None and info.pooled:  # refused before loading it for nothing
            kind = "a reranker" if info.is_reranker else "an embedding model"
            raise InvalidRequest(f"'{request.model}' is {kind}: decisions need a chat model", "model")
        target = await self.manager.get(request.model, ttl=request.ttl)
        loaded = target.instance
        chat = replace(chat, reasoning_option=_reasoning_off(self.prompts.reasoning_format(loaded), request.model))
        template = self.prompts.template(loaded)
        prefix = await off_loop(lambda stop: self.prompts.chat_prompt(loaded, template, chat, stop).tokens)
        reads = await off_loop(lambda stop: _plan_reads(loaded.model, prefix, request.questions, stop))
        engine = loaded.engine
        assert isinstance(engine, Engine), "an embedding model was refused above"
        if len(prefix) >= engine.context_length:  # no room left for a question
            raise _too_long(len(prefix), engine.context_length, request.input_field)
        for read in reads:
            if len(read.tokens) > engine.context_length:
                raise _too_long(len(read.tokens), engine.context_length, request.questions[read.question].param)
        return await self._run(target, engine, prefix, reads, request.questions)

    async def _run(self, target: Target, engine: Engine, prefix: list[int], reads: list[_Read],
                   questions: list[Question]) -> Decisions:
        deadline = queue_deadline(self.limits.queue_timeout_seconds)
        finished: list[FinishEvent] = []
        shared = _shared_start(prefix, reads)
        if len(reads) > 1:  # what they share once, so that every read starts from its cells
            warm = GenerationRequest(prompt=shared, max_tokens=0, adapter=target.adapter, queue_deadline=deadline)
            prefilled = await _collect(engine.submit_many([warm], self.limits.max_queued_per_model))
            finished += [finish for _, finish in prefilled]
        requests = [GenerationRequest(prompt=read.tokens, max_tokens=0, adapter=target.adapter,
                                      score_tail=read.tail_length, score_next=tuple(read.next_ids),
                                      keep_cells=len(shared), queue_deadline=deadline) for read in reads]
        results = await _collect(engine.submit_many(requests, self.limits.max_queued_per_model))
        logprobs: list[list[float]] = [[0.0] * len(q.labels) for q in questions]
        for read, (scores, _) in zip(reads, results, strict=True):
            assert scores is not None, "a scoring sequence that ended well sent its scores"
            for label, value in zip(read.next_labels, scores.next, strict=True):
                logprobs[read.question][label] = value
            if read.tail_label is not None:
                logprobs[read.question][read.tail_label] = math.fsum(scores.tail)
        answers = [_answer(values) for values in logprobs]
        finished += [finish for _, finish in results]
        return Decisions(target.name, answers, sum(f.prompt_tokens for f in finished),
                         sum(f.cached_tokens for f in finished))


def answers_decisions(info: ModelInfo) -> bool:
    """Whether a model can answer decisions: a chat model whose template can leave thinking off (read
    from its header, loaded or not; model lists show it)."""
    if info.pooled:  # an embedding model or a reranker
        return False
    fmt = reasoning_format_for(info.chat_template or "")
    return not fmt.reasons or fmt.switchable


def _too_long(tokens: int, context_length: int, param: str) -> ContextLengthExceeded:
    error = ContextLengthExceeded(tokens, context_length)
    error.param = param
    return error


def _reasoning_off(fmt: ReasoningFormat, model: str) -> str | None:
    """The reasoning option to render with: off, where the template can switch it off."""
    if not fmt.reasons:
        return None
    if not fmt.switchable:
        raise InvalidRequest(f"'{model}' always reasons before it answers (its chat template cannot switch "
                             "thinking off): its answers to decisions would be read inside its reasoning",
                             "model")
    return "off"


def _plan_reads(model: LlamaModel, prefix: list[int], questions: list[Question],
                stop: Callable[[], bool]) -> list[_Read]:
    """The scoring sequences for every question (module docstring)."""
    reads = []
    for index, question in enumerate(questions):
        if stop():
            break
        asked = prefix + _tokens(model, question_text(question))
        single = _Read(index, asked)
        for label_index, label in enumerate(question.labels):
            tokens = _tokens(model, label_text(label))
            if len(tokens) == 1:
                single.next_labels.append(label_index)
                single.next_ids.append(tokens[0])
            else:
                reads.append(_Read(index, asked + tokens, tail_label=label_index, tail_length=len(tokens)))
        if single.next_labels:
            reads.append(single)
    return reads


def _shared_start(prefix: list[int], reads: list[_Read]) -> list[int]:
    """The tokens every read starts with: the input's prefix, and whatever start their questions share
    (all predicates begin alike: decision_prompt.py), short of the rows each read must decode itself."""
    tokens = reads[0].tokens
    length = len(tokens)
    for read in reads:
        length = min(length, common_prefix_length(tokens, read.tokens), len(read.tokens) - read.tail_length - 1)
    return tokens[:max(length, len(prefix))]


def _tokens(model: LlamaModel, text: str) -> list[int]:
    """A question's or a label's tokens: plain text, a special token's spelling included."""
    with model.vocabulary_lock:  # an unload waits for it
        model.require_open()
        return model.tokenize(text, add_special=False, parse_special=False)


def _answer(logprobs: list[float]) -> Answer:
    """Normalise the labels' log-probabilities (in log space: long labels may underflow exp)."""
    peak = max(logprobs)
    log_mass = peak + math.log(math.fsum(math.exp(v - peak) for v in logprobs))
    return Answer(tuple(math.exp(v - log_mass) for v in logprobs), math.exp(log_mass))


async def _collect(streams: list[TokenStream]) -> list[tuple[ScoresEvent | None, FinishEvent]]:
    """Each stream's scores and its end; a failed sequence fails the request (the others are cancelled)."""

    async def one(stream: TokenStream) -> tuple[ScoresEvent | None, FinishEvent]:
        scores = None
        async for event in stream:
            if isinstance(event, ScoresEvent):
                scores = event
            elif isinstance(event, FinishEvent):
                raise_if_failed(event, None)
                return scores, event
        raise AssertionError("a stream ends with its FinishEvent")

    try:
        return list(await asyncio.gather(*(one(stream) for stream in streams)))
    finally:
        for stream in streams:
            if not stream.finished:
                stream.cancel()


__all__ = ["Answer", "DecisionRequest", "DecisionService", "Decisions", "MAX_CHOICES", "MAX_LEVELS", "MAX_QUESTIONS",
           "Question", "answers_decisions", "check_questions"]
