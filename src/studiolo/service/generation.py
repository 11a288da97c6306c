"""The one path from a domain request to engine work and back.

``chat`` and ``complete`` resolve the model (loading it just in time), build the prompt
tokens, and submit one engine sequence per choice. Every problem a client can cause is
raised here, before anything is returned, so HTTP layers can answer 4xx before they start
streaming. The returned ``Generation`` then yields text deltas and finish events per
choice, and cancels its sequences if it is closed early (client gone).

``chat`` is ``prepare_chat`` then ``start_chat``: a stateful chat (service/conversations.py) takes
a step of its own in between, giving the engine the conversation's saved KV state when it lacks it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

from studiolo.chat.templates import ChatTemplate
from studiolo.chat.tool_formats import format_for, output_syntax, tool_grammar
from studiolo.chat.tool_parser import CallSyntax
from studiolo.config import RequestLimits
from studiolo.domain.errors import InternalError, InvalidRequest
from studiolo.engine.admission import QUEUE_TIMEOUT, RETRY_AFTER_SECONDS, queue_deadline
from studiolo.engine.constraints import CompiledConstraint, ConstraintSpec
from studiolo.engine.engine import ContextLengthExceeded, Engine
from studiolo.engine.llama import LoraAdapter
from studiolo.engine.reasoning_gate import ReasoningSpec
from studiolo.engine.sequence import (
    FinishEvent,
    GenerationRequest,
    PrefillProgressEvent,
    PromptLogprobsEvent,
    SavedSequence,
    TokenEvent,
)
from studiolo.engine.speculation import DraftStats
from studiolo.engine.stream import TokenStream
from studiolo.models.instance import Instance
from studiolo.models.manager import ModelManager, Target
from studiolo.service.bounds import check_chat_bounds, check_completion_bounds, off_loop
from studiolo.service.chat_prompt import ChatPrompts, Prompt
from studiolo.service.choice_stream import (
    ChoiceOutput,
    DeltaWriter,
    OutputLog,
    StopStrings,
    TokenReader,
    token_info,
    token_text,
)
from studiolo.service.constraints import check_constraint, compiled_constraint
from studiolo.service.embeddings import check_generation_model
from studiolo.service.image_fetch import ImageFetch
from studiolo.service.metrics import ServerMetrics
from studiolo.service.model_log import LogHub, model_input_event, model_output_event
from studiolo.service.presets import (
    apply_settings,
    chat_with_settings,
    effective_settings,
    load_context_length,
    request_preset,
)
from studiolo.service.reasoning_gate import chat_reasoning_spec
from studiolo.service.saved_state import SavedState
from studiolo.service.speculation import Drafting, drafting_for
from studiolo.service.tool_calls import marker_tokens
from studiolo.service.types import (
    ChatRequest,
    CompletionRequest,
    Finished,
    GenerationEvent,
    GenerationOptions,
    PromptProgress,
    TextDelta,
    TokenInfo,
    Usage,
)
from studiolo.service.vision_prompt import check_image_options


@dataclass
class Timing:
    """When a request's tokens came, for LM Studio's stats (perf_counter seconds).

    Taken from the engine's own stamps at each choice's end (``FinishEvent.decode_seconds`` runs
    from its first token), so nothing is timed per token here.
    """

    started: float = field(default_factory=time.perf_counter)  # the request reached the service
    first_token: float = 0.0
    ended: float = 0.0

    def finished(self, event: FinishEvent) -> None:
        self.ended = time.perf_counter()
        first = self.ended - event.decode_seconds
        self.first_token = min(self.first_token, first) if self.first_token else first

    @property
    def time_to_first_token(self) -> float:
        return (self.first_token or self.ended) - self.started

    @property
    def generation_time(self) -> float:
        """From the first token to the end."""
        return self.ended - (self.first_token or self.ended)

    def decode_rate(self, tokens: int) -> float:
        """Tokens after the first over the time after the first (0 when there is none)."""
        seconds = self.generation_time
        return (tokens - 1) / seconds if tokens > 1 and seconds > 0 else 0.0


class GenerationFailed(InternalError):
    """The engine could not finish a sequence (not the client's fault)."""
    code = "generation_failed"


class ConstraintFailed(GenerationFailed):
    """The output's grammar reached one of llguidance's limits mid-generation: the client's
    definition is too complex to follow; ``param`` names the field it came from."""
    kind = "invalid"  # the client's grammar, too complex to follow to the end
    code = "constraint_too_complex"

    def __init__(self, message: str, param: str | None):
        super().__init__(message)
        self.param = param


class UnloadedWhileGenerating(GenerationFailed):
    """The model was unloaded under a running sequence: a 503, as an unload before it started."""
    kind = "unavailable"
    code, param = "model_unloaded", "model"


class QueueTimeout(GenerationFailed):
    """A sequence waited past limits.queue_timeout_seconds for a slot (engine/admission.py): 503, retry later."""
    kind = "unavailable"
    code, param = "queue_timeout", "model"
    retry_after = RETRY_AFTER_SECONDS


@dataclass(frozen=True)
class PreparedChat:
    """A chat checked, its model loaded and its prompt built, not yet submitted (GenerationService.chat
    is prepare then start; the conversation service restores a saved KV state in between)."""

    target: Target
    prompt: Prompt
    options: GenerationOptions
    prompt_field: str
    constraint: CompiledConstraint | None
    tool_syntax: CallSyntax | None
    drafting: Drafting = Drafting()
    reasoning: ReasoningSpec | None = None  # the engine's reasoning gate (service/reasoning_gate.py)

    def lacks_prefix(self) -> bool:
        """Whether the engine holds less than half of the prompt (a conversation's cells were evicted,
        or the server restarted): only then is a saved state worth reading from disk."""
        tokens, target = self.prompt.tokens, self.target
        return _generation_engine(target.instance).cached_prefix_length(tokens, target.adapter) * 2 < len(tokens)

    def offer_state(self, state: SavedState) -> None:
        """Give the engine a saved KV state to reuse as the prompt's prefix, if this model and adapter
        computed it (a state of another model would be garbage here): the prefill is then the new turn."""
        target = self.target
        if state.model_key == target.instance.key and state.adapter_key == target.adapter_key:
            _generation_engine(target.instance).offer_prefix(state.sequence, target.adapter)


@dataclass
class _Choice:
    index: int
    prompt: Prompt
    stream: TokenStream


@dataclass
class Generation:
    """A running request: its identity and the events of all its choices."""

    id: str
    model: str
    created: int
    _loaded: Instance
    _options: GenerationOptions
    _choices: list[_Choice]
    usage: Usage = field(default_factory=Usage)
    timing: Timing = field(default_factory=Timing)
    _log: LogHub | None = None
    causes: dict[int, str] = field(default_factory=dict)  # why each choice ended (Finished.cause)
    _tool_syntax: CallSyntax | None = None  # how tool calls look in the output, when tools are offered
    load_seconds: float | None = None  # this request loaded the model, in so many seconds
    adapter_key: str | None = None  # the LoRA adapter applied, if any
    saved: dict[int, SavedSequence] = field(default_factory=dict)  # per choice, with options.save_state
    draft_model: str | None = None  # what drafted for it ("ngram": no model), if anything did
    drafts: DraftStats | None = None  # what was drafted for all its choices, when anything could be
    _metrics: ServerMetrics | None = None  # /metrics' counters of tokens, timings and drafts

    @property
    def instance(self) -> Instance:
        return self._loaded

    @property
    def prompt_tokens(self) -> int:
        """The prompt tokens of its first prompt, known before any output (usage counts them at the end)."""
        return len(self._choices[0].prompt.tokens)

    async def events(self) -> AsyncIterator[GenerationEvent]:
        if len(self._choices) == 1:  # the common case: no fan-in task and queue on the token path
            try:
                async for event in self._choice_events(self._choices[0]):
                    yield event
            finally:
                self.cancel()
            return
        queue: asyncio.Queue = asyncio.Queue()
        tasks = [asyncio.create_task(self._pump(choice, queue)) for choice in self._choices]
        finished = 0
        try:
            while finished < len(tasks):
                event = await queue.get()
                if isinstance(event, BaseException):
                    raise event
                finished += isinstance(event, Finished)
                yield event
        finally:
            for task in tasks:
                task.cancel()
            self.cancel()

    def cancel(self) -> None:
        for choice in self._choices:
            if not choice.stream.finished:
                choice.stream.cancel()

    async def _pump(self, choice: _Choice, queue: asyncio.Queue) -> None:
        try:
            async for event in self._choice_events(choice):
                queue.put_nowait(event)
        except BaseException as exc:  # hand failures to the consumer
            if not isinstance(exc, asyncio.CancelledError):
                queue.put_nowait(exc)
            raise

    async def _choice_events(self, choice: _Choice) -> AsyncIterator[GenerationEvent]:
        options = self._options
        if options.echo and options.logprobs is None:  # with logprobs, the prompt comes scored
            yield TextDelta(choice.index, choice.prompt.text)
        output = self._output(choice)
        async for event in choice.stream:
            if isinstance(event, TokenEvent):
                for delta in output.token(event):
                    yield delta
            elif isinstance(event, FinishEvent):
                raise_if_failed(event, options.constraint_param)
                if event.saved is not None:
                    self.saved[choice.index] = event.saved
                for delta in output.finish():
                    yield delta
                yield self._finished(choice, output, event)
                return
            else:
                yield self._prompt_event(choice, event)

    def _output(self, choice: _Choice) -> ChoiceOutput:
        """The stages a choice's tokens go through (service/choice_stream.py)."""
        syntax, split = self._tool_syntax, choice.prompt.reasoning
        control_text = syntax is not None or (split is not None and split.control_text)
        return ChoiceOutput(
            TokenReader(self._loaded.model, self._options.logprobs is not None, control_text=control_text),
            StopStrings(self._options.stop, choice.stream),
            DeltaWriter(choice.index, syntax, split),
            OutputLog(self._log),
        )

    def _prompt_event(self, choice: _Choice, event: PrefillProgressEvent | PromptLogprobsEvent) -> GenerationEvent:
        if isinstance(event, PrefillProgressEvent):
            return PromptProgress(choice.index, event.done / event.total)
        return TextDelta(choice.index, choice.prompt.text, self._echo_tokens(choice.prompt, event))

    def _finished(self, choice: _Choice, output: ChoiceOutput, event: FinishEvent) -> Finished:
        """Account for a choice that ended (usage, timing, cause, the model log); its last event."""
        self._count(choice, event, output.completion_tokens(event), output.reasoning_tokens)
        self.timing.finished(event)
        if self._metrics is not None:
            self._observe(choice, event, output.completion_tokens(event))
        cause = output.cause(event)
        self.causes[choice.index] = cause
        if output.log.wanted:
            self._log_output(choice.index, output, cause, event.draft)
        return Finished(choice.index, output.finish_reason(cause), cause, output.stop_string)

    def _observe(self, choice: _Choice, event: FinishEvent, completion_tokens: int) -> None:
        assert self._metrics is not None
        prompt_tokens = event.prompt_tokens if choice.index % self._options.n == 0 else 0  # once per prompt
        first_token = self.timing.ended - event.decode_seconds - self.timing.started
        self._metrics.choice_finished(self._loaded.key, prompt_tokens, completion_tokens, first_token,
                                      event.decode_seconds, event.draft)

    def _log_output(self, index: int, output: ChoiceOutput, cause: str, drafts: DraftStats | None) -> None:
        timing = self.timing
        tokens = output.consumed
        rate = timing.decode_rate(tokens)
        text, reasoning = output.log.text, output.log.reasoning
        if reasoning is not None:  # the answer apart: the output from where the reasoning ended
            offset = output.answer_offset
            text = text[offset:] if offset is not None else ""
        assert self._log is not None, "an output is logged only to a hub with readers"
        self._log.publish("model", model_output_event(self.id, self.model, index, text, tokens, cause, rate,
                                                      timing.time_to_first_token, self.draft_model, drafts,
                                                      reasoning))

    def _echo_tokens(self, prompt: Prompt, event: PromptLogprobsEvent) -> tuple[TokenInfo, ...]:
        """The prompt's tokens as they spell its text, each scored given the tokens before it.

        A BOS the tokenizer added is not part of the text the client sent: it is left out, and the
        first text token is scored given it. Otherwise the first token is unscored (nothing predicts it).
        """
        model = self._loaded.model
        tokens = prompt.tokens
        scored = (token_info(model, t, model.token_bytes(t, special=True), lp)  # a typed <|im_end|> shows
                  for t, lp in zip(tokens[1:], event.logprobs, strict=False))
        if prompt.added_bos:
            return tuple(scored)
        piece = model.token_bytes(tokens[0], special=True)
        first = TokenInfo(tokens[0], token_text(piece), piece, None, special=model.is_special(tokens[0]))
        return (first, *scored)

    def _count(self, choice: _Choice, event: FinishEvent, completion_tokens: int, reasoning_tokens: int) -> None:
        # Choices of one prompt share it: count its tokens once per prompt, as OpenAI does.
        first_of_prompt = choice.index % self._options.n == 0
        self.usage = Usage(
            prompt_tokens=self.usage.prompt_tokens + (event.prompt_tokens if first_of_prompt else 0),
            completion_tokens=self.usage.completion_tokens + completion_tokens,
            cached_tokens=self.usage.cached_tokens + (event.cached_tokens if first_of_prompt else 0),
            # a stop string may end the output inside the reasoning: never more than were counted
            reasoning_tokens=self.usage.reasoning_tokens + min(reasoning_tokens, completion_tokens),
        )
        if event.draft is not None:
            total = self.drafts or DraftStats()
            self.drafts = DraftStats(total.drafted + event.draft.drafted, total.accepted + event.draft.accepted,
                                     total.rejected + event.draft.rejected, total.ignored + event.draft.ignored)


def _generation_engine(loaded: Instance) -> Engine:
    """The instance's engine: a generation engine, as check_generation_model refused embedding models."""
    engine = loaded.engine
    assert isinstance(engine, Engine), "an embedding model got past check_generation_model"
    return engine


def raise_if_failed(event: FinishEvent, constraint_param: str | None) -> None:
    """A sequence the engine could not finish is the request's failure, not an end of its output."""
    if event.reason == "unloaded":
        raise UnloadedWhileGenerating(event.error or "the model was unloaded")
    if event.reason == QUEUE_TIMEOUT:
        raise QueueTimeout("the request waited for one of the model's parallel slots past the server's deadline "
                           "(setting limits.queue_timeout_seconds); retry later")
    if event.reason == "constraint":
        raise ConstraintFailed(event.error or "constrained decoding failed", constraint_param)
    if event.reason == "error":
        raise GenerationFailed(event.error or "generation failed")


class GenerationService:
    def __init__(self, manager: ModelManager, log_hub: LogHub | None = None, limits: RequestLimits | None = None,
                 image_url_hosts: tuple[str, ...] = (), metrics: ServerMetrics | None = None):
        self.manager = manager
        self.metrics = metrics
        self.log_hub = log_hub  # `studiolo log stream` readers see prompts and outputs
        self.limits = limits or RequestLimits()
        self.images = ImageFetch(image_url_hosts, self.limits.max_image_mib * 2**20)  # remote image URLs
        self.prompts = ChatPrompts(self.limits)

    async def chat(self, request: ChatRequest) -> Generation:
        return self.start_chat(await self.prepare_chat(request))

    async def prepare_chat(self, request: ChatRequest) -> PreparedChat:
        """Everything a chat needs before its sequences are submitted: the checks, the model (loaded
        if need be), the prompt and its constraint. Every client error is raised here."""
        await check_constraint(request.options)  # a bad schema is refused before any model loads
        target, request, prompt = await self._chat_prompt_of(request)
        loaded = target.instance
        options, syntax = request.options, None
        if request.tools is not None and request.tools.active:  # calls must follow the format's grammar
            fmt = format_for(self._template(loaded).source)
            markers = await asyncio.to_thread(marker_tokens, loaded.model, fmt.markers)
            grammar = ConstraintSpec.lark(tool_grammar(fmt, request.tools, markers), end_outside=True)
            options = replace(options, constraint=grammar, constraint_param="tools")
            syntax = output_syntax(fmt, request.tools)
        constraint = await compiled_constraint(loaded.model, options)
        if prompt.images:  # no drafting: a draft model has no projector, n-grams would propose placeholders
            drafting, options = Drafting(), check_image_options(options)
        else:
            drafting = await drafting_for(self.manager, target, options.draft_model, options.prediction)
        reasoning = await asyncio.to_thread(chat_reasoning_spec, loaded.model, self.prompts.reasoning_format(loaded),
                                            prompt.text, options.reasoning_budget, constraint is not None,
                                            syntax is not None, syntax is not None and syntax.forced)
        return PreparedChat(target, prompt, options, request.prompt_field, constraint, syntax, drafting, reasoning)

    async def chat_prompt_of(self, request: ChatRequest) -> Prompt:
        """The prompt ``chat`` would build for ``request`` (template, tools, images), loading the model if
        need be; nothing is generated (service/token_tools.py)."""
        return (await self._chat_prompt_of(request))[2]

    async def _chat_prompt_of(self, request: ChatRequest) -> tuple[Target, ChatRequest, Prompt]:
        """A chat's checks, its model (loaded if need be), its settings and its prompt."""
        check_chat_bounds(request, self.limits)
        check_generation_model(self.manager, request.model)
        request = replace(request, messages=await self.images.fetch(request.messages))
        preset = request_preset(request.options)  # an unknown preset is a 400 before any model loads
        context_length = load_context_length(request.context_length, preset)
        target = await self.manager.get(request.model, ttl=request.ttl, context_length=context_length)
        loaded = target.instance
        request = chat_with_settings(request, effective_settings(preset, loaded.key))
        template = self._template(loaded)  # reads the model's metadata: here, where nothing unloads it meanwhile
        # rendering and tokenizing grow with the conversation: off the event loop, stopped if the client goes
        prompt = await off_loop(lambda stop: self._chat_prompt(loaded, template, request, stop))
        return target, request, prompt

    def start_chat(self, prepared: PreparedChat) -> Generation:
        """Submit a prepared chat: its output starts from here."""
        return self._start(prepared.target, "chatcmpl", [prepared.prompt], prepared.options, prepared.prompt_field,
                           prepared.constraint, prepared.tool_syntax, prepared.drafting, prepared.reasoning)

    async def complete(self, request: CompletionRequest) -> Generation:
        await check_constraint(request.options)
        check_completion_bounds(request, self.limits)
        check_generation_model(self.manager, request.model)
        preset = request_preset(request.options)
        target = await self.manager.get(request.model, ttl=request.ttl,
                                        context_length=load_context_length(None, preset))
        options = apply_settings(request.options, effective_settings(preset, target.instance.key))
        request = replace(request, options=options)
        model = target.instance.model
        prompts = await off_loop(lambda stop: [self._completion_prompt(model, p, stop) for p in request.prompts])
        constraint = await compiled_constraint(target.instance.model, request.options)
        drafting = await drafting_for(self.manager, target, options.draft_model, options.prediction)
        return self._start(target, "cmpl", prompts, request.options, "prompt", constraint, drafting=drafting)

    def _chat_prompt(self, loaded: Instance, template: ChatTemplate, request: ChatRequest,
                     stop: Callable[[], bool]) -> Prompt:
        return self.prompts.chat_prompt(loaded, template, request, stop)  # service/chat_prompt.py

    def _template(self, loaded: Instance) -> ChatTemplate:
        return self.prompts.template(loaded)

    _completion_prompt = staticmethod(ChatPrompts.completion_prompt)

    def _start(
        self,
        target: Target,
        id_prefix: str,
        prompts: list[Prompt],
        options: GenerationOptions,
        prompt_field: str,
        constraint: CompiledConstraint | None,
        tool_syntax: CallSyntax | None = None,
        drafting: Drafting = Drafting(),
        reasoning: ReasoningSpec | None = None,
    ) -> Generation:
        loaded = target.instance
        requests, per_choice = [], []
        deadline = queue_deadline(self.limits.queue_timeout_seconds)
        for prompt in prompts:
            if not prompt.tokens:
                raise InvalidRequest("the prompt is empty", prompt_field)
            for copy in range(options.n):
                requests.append(replace(self._engine_request(prompt.tokens, options, copy, constraint,
                                                             target.adapter, drafting), reasoning=reasoning,
                                        images=prompt.images, queue_deadline=deadline))
                per_choice.append(prompt)
        try:
            # all choices start in the same step; QueueFull (429) if too many would wait for the model
            streams = _generation_engine(loaded).submit_many(requests, self.limits.max_queued_per_model)
        except ContextLengthExceeded as exc:
            exc.param = prompt_field
            raise
        choices = [_Choice(index, prompt, stream)
                   for index, (prompt, stream) in enumerate(zip(per_choice, streams, strict=True))]
        generation = Generation(f"{id_prefix}-{uuid.uuid4().hex[:24]}", target.name, int(time.time()), loaded, options,
                                choices, _log=self.log_hub, _tool_syntax=tool_syntax,
                                load_seconds=target.load_seconds, adapter_key=target.adapter_key,
                                draft_model=drafting.draft_model, _metrics=self.metrics)
        if self.log_hub is not None and self.log_hub.has_subscribers("model"):
            for prompt in prompts:
                event = model_input_event(generation.id, target.name, prompt.text, len(prompt.tokens))
                self.log_hub.publish("model", event)
        return generation

    @staticmethod
    def _engine_request(
        tokens: list[int],
        options: GenerationOptions,
        copy: int,
        constraint: CompiledConstraint | None,
        adapter: LoraAdapter | None,
        drafting: Drafting,
    ) -> GenerationRequest:
        sampling = options.sampling
        if copy and sampling.seed is not None:  # n > 1 with a seed: distinct but reproducible draws
            sampling = replace(sampling, seed=sampling.seed + copy)
        return GenerationRequest(
            prompt=tokens,
            sampling=sampling,
            max_tokens=options.max_tokens,
            stop_tokens=options.stop_tokens,
            ignore_eos=options.ignore_eos,
            logprobs=options.logprobs,
            prompt_logprobs=options.echo and options.logprobs is not None,
            constraint=constraint,
            adapter=adapter,
            report_progress=options.report_progress,
            save_state=options.save_state,
            speculation=drafting.speculation,
        )
