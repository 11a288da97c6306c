"""One engine per loaded model: a llama.cpp context driven by the process's compute thread.

The compute thread (engine/compute.py, shared by all engines) is the only thread that calls
into the context. Other threads talk to the engine through an inbox (submit, cancel) and hear
back through ``TokenStream``s. Each step is: admit waiting sequences, decode one batch, sample
one token for every sequence whose logits came out, and hand the step's events to asyncio at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from studiolo.config import EngineSettings
from studiolo.domain.errors import InvalidRequest, Unavailable
from studiolo.engine.admission import QUEUE_TIMEOUT, Admission, expired
from studiolo.engine.compute import COMPUTE
from studiolo.engine.constraints import ConstraintError
from studiolo.engine.draft_model import DraftModel, draft_cost
from studiolo.engine.lifecycle import UNLOADED, EngineLifecycle
from studiolo.engine.llama import ContextParams, LlamaContext, LlamaModel, LoraAdapter
from studiolo.engine.prompt_cache import PromptCache
from studiolo.engine.prompt_scoring import check_scoring, reads_prompt, score_chunk
from studiolo.engine.reasoning_gate import ReasoningGate
from studiolo.engine.sampling import PENALTY_LAST_N, TokenLogprob, TokenSampler, TopLogprob, logprobs_of
from studiolo.engine.scheduler import Chunk, Scheduler
from studiolo.engine.sequence import (
    GenerationRequest,
    PrefillProgressEvent,
    SavedSequence,
    Sequence,
    SequenceState,
    TokenEvent,
)
from studiolo.engine.slots import SlotPool, kv_cells, read_lanes
from studiolo.engine.speculation import SequenceSpeculation, Speculating, propose
from studiolo.engine.stream import Outbox, TokenStream
from studiolo.engine.vision import VisionContext
from studiolo.engine.vision_steps import check_images, decode_next_image, penalty_window, text_tokens

log = logging.getLogger(__name__)


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"
    param = "prompt"  # the request field the prompt came from; the service may say "messages"

    def __init__(self, prompt_tokens: int, context_length: int, image_rows: int = 0):
        images = f" ({image_rows} of them for its images)" if image_rows else ""
        super().__init__(
            f"the prompt is {prompt_tokens} tokens long{images}, more than the model's context of "
            f"{context_length} tokens; shorten the prompt or load the model with a longer context"
        )
        self.prompt_tokens = prompt_tokens
        self.context_length = context_length


class InvalidTokens(InvalidRequest):
    code = "invalid_token"

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


class CannotSpeculate(InvalidRequest):
    code, param = "speculation_unsupported", "draft_model"


class EngineClosed(Unavailable):
    code, param = "model_unloaded", "model"


@dataclass
class _Submit:
    seqs: list[Sequence]  # admitted together, in the same step when slots allow


@dataclass
class _Cancel:
    seq: Sequence


@dataclass
class _Offer:
    saved: SavedSequence
    adapter: LoraAdapter | None


_Command = _Submit | _Cancel | _Offer


class Engine(EngineLifecycle[_Command]):
    def __init__(self, model: LlamaModel, settings: EngineSettings, vision: VisionContext | None = None):
        self.model = model
        self.vision = vision  # the model's projector (engine/vision.py): closed with the engine, before the model
        self.context_length = min(settings.context_length, model.n_ctx_train or settings.context_length)
        self.parallel = settings.parallel
        self.threads = settings.threads  # at most; fewer while other programs keep the cores busy
        lanes = read_lanes(self.parallel, settings.batch_size, model.can_truncate)  # for reads (engine/slots.py)
        self.context = LlamaContext(
            model,
            ContextParams(
                n_ctx=kv_cells(self.context_length, self.parallel, settings.batch_size, lanes),
                n_batch=settings.batch_size,
                n_seq_max=self.parallel + lanes,
                n_threads=settings.threads,
            ),
        )
        cache = PromptCache(settings.prompt_cache_mib * 2**20)
        self.slots = SlotPool(self.context, self.parallel, model.n_swa, cache, lanes)
        self.scheduler = Scheduler(self.slots, settings.batch_size)
        self.admission = Admission(self.parallel)  # sequences live, to bound those waiting (under _wake)
        self._outbox = Outbox()
        self.drafts: dict[str, DraftModel] = {}  # draft models attached, by catalog key
        super().__init__()  # last: the compute thread may step the engine from here on

    # --- called from other threads ----------------------------------------------------

    def attach_draft(self, model: LlamaModel, key: str) -> DraftModel:
        """A context of ``model`` to draft for this engine's sequences (one sequence id per slot, as
        many cells); it is closed with the engine. Call it off the event loop: creating a context
        allocates its cache."""
        draft = DraftModel(model, key, slots=self.parallel, context_length=self.context_length,
                           batch_size=self.context.n_batch, threads=self.threads, cost=draft_cost(self.model, model))
        with self._wake:  # not while close() takes the drafts to free them
            if not self._closing:
                self.drafts[key] = draft
                return draft
        draft.close()
        raise EngineClosed(UNLOADED)

    def close(self) -> None:
        super().close()
        with self._wake:
            drafts, self.drafts = list(self.drafts.values()), {}
        for draft in drafts:
            draft.close()
        if self.vision is not None:
            self.vision.close()

    def submit(self, request: GenerationRequest) -> TokenStream:
        """Queue a generation; must be called from a running event loop's thread."""
        return self.submit_many([request])[0]

    def submit_many(self, requests: list[GenerationRequest], max_queued: int | None = None) -> list[TokenStream]:
        """Queue generations to start in the same step; QueueFull if past ``max_queued`` would wait."""
        for request in requests:
            self._validate(request)
        loop = asyncio.get_running_loop()
        seqs = [Sequence(request, TokenStream(loop)) for request in requests]
        for seq in seqs:
            seq.sink.cancel = lambda seq=seq: self._post_command(_Cancel(seq))
        with self._wake:
            self.admission.enter(len(seqs), max_queued)  # if the post fails, the engine and its count are gone
        self._post_command(_Submit(seqs))
        return [seq.sink for seq in seqs]

    def offer_prefix(self, saved: SavedSequence, adapter: LoraAdapter | None = None) -> None:
        """Make a saved sequence (a stored conversation's cells) available for prefix reuse, as if it
        had just run here; ignored if the cache already holds as much of it. Sequences submitted
        after this call see it."""
        self._post_command(_Offer(saved, adapter))

    def cached_prefix_length(self, tokens: list[int], adapter: LoraAdapter | None = None) -> int:
        """How much of ``tokens`` the slots or the RAM prompt cache hold (a snapshot, from any thread)."""
        return self.slots.cached_prefix_length(tokens, adapter)

    def busy(self) -> bool:
        """Whether any sequence is queued or running (read from other threads: a snapshot)."""
        return bool(self._inbox) or bool(self.scheduler.running) or bool(self.scheduler.waiting)

    def request_counts(self) -> tuple[int, int]:
        """(running, queued) sequences, a snapshot for status displays."""
        queued = sum(len(c.seqs) for c in list(self._inbox) if isinstance(c, _Submit))
        return len(self.scheduler.running), len(self.scheduler.waiting) + queued

    def _validate(self, request: GenerationRequest) -> None:
        if not request.prompt:
            raise InvalidTokens("the prompt is empty", "prompt")
        if len(request.prompt) > self.context_length:
            raise ContextLengthExceeded(len(request.prompt), self.context_length,
                                        sum(image.chunk.n_tokens for image in request.images))
        check_images(request, self.vision, self.context.n_batch)
        check_scoring(request, self.model)
        for param, tokens in (
            ("prompt", text_tokens(request)),
            ("stop_tokens", request.stop_tokens),
            ("logit_bias", request.sampling.logit_bias),
        ):
            bad = next((t for t in tokens if not self.model.is_valid_token(t)), None)
            if bad is not None:
                raise InvalidTokens(f"token id {bad} is outside the vocabulary (0..{self.model.n_vocab - 1})", param)
        if request.speculation and not self.model.can_truncate:
            raise CannotSpeculate("this model keeps a recurrent state instead of per-token cells: drafts it "
                                  "rejected could not be taken back, so it cannot decode speculatively")

    def _post_command(self, command: _Command) -> None:
        if not self._post(command) and isinstance(command, _Submit):  # nobody would ever run it
            raise EngineClosed(UNLOADED)
        # a cancel or an offer to a closing engine has nothing left to act on

    # --- on the compute thread --------------------------------------------------------

    def _has_work(self) -> bool:
        return self.scheduler.has_work()

    def _shut_down(self) -> None:
        # the submits still in the inbox are failed too: dropped, their streams would wait forever
        # (a request submitted just before an unload got its first chunk, then nothing)
        self._fail_all("the model was unloaded while generating; send the request again to load it", "unloaded")
        self._outbox.flush()

    def _work_step(self) -> None:
        with self._wake:
            commands = list(self._inbox)
            self._inbox.clear()
        try:
            self._apply(commands)
            self._step()
        except Exception as exc:  # a bug must not leave clients waiting forever
            log.exception("engine step failed")
            self._fail_all(f"internal engine error: {exc}", "error", commands)
        self._outbox.flush()

    def _apply(self, commands: list[_Command]) -> None:
        for command in commands:
            if isinstance(command, _Submit):
                for seq in command.seqs:
                    self.scheduler.add(seq)
            elif isinstance(command, _Offer):
                self.slots.offer(command.saved.tokens, command.saved.state, command.adapter)
            elif command.seq.state is not SequenceState.FINISHED:
                self._finish(command.seq, "cancelled")
            # a cancel for a finished sequence (it ended, or failed) has nothing left to do

    def _step(self) -> None:
        for seq in expired(self.scheduler.waiting):  # before admitting: past its deadline, a slot comes too late
            self._finish(seq, QUEUE_TIMEOUT, "the request waited past its deadline for a slot")
        for seq in self.scheduler.admit():
            self._start(seq)
        self.context.set_threads(COMPUTE.threads(self.threads))  # before drafting: a draft model's rounds use it
        chunks = self.scheduler.plan(self._drafts)
        for seq in self.scheduler.boarded:  # reads the plan took into read lanes
            self._start(seq)
        if self.scheduler.image is not None:
            self._decode_image(self.scheduler.image)
        if not chunks:
            return
        batch = self.context.batch
        batch.clear()
        for chunk in chunks:
            chunk.batch_index = batch.add(chunk.tokens, chunk.seq.position(chunk.start),
                                          chunk.seq.admitted_slot.seq_id, chunk.logits_from)
            if chunk.drafted:
                chunk.seq.speculation.start(chunk.drafted)  # type: ignore[union-attr]
        self.context.use_adapter(self.scheduler.adapter)
        status = self.context.decode()
        if status != 0:
            self._decode_failed(chunks, status)
            return
        for chunk in chunks:
            self._advance(chunk)

    def _start(self, seq: Sequence) -> None:
        """What an admitted sequence decodes and samples with."""
        seq.prefill_started_at = time.perf_counter()
        if seq.request.max_tokens == 0:  # it reads its prompt only (echo, scoring): nothing to sample
            return
        seq.sampler = TokenSampler(seq.request.sampling, penalty_window(seq.prompt, PENALTY_LAST_N))
        if seq.request.constraint is not None:
            seq.constraint = seq.request.constraint.new_state()
        if seq.request.speculation:
            seq.speculation = SequenceSpeculation(seq.request.speculation, seq.prompt)
        if seq.request.reasoning is not None:
            seq.gate = self._gate(seq)

    def _decode_image(self, seq: Sequence) -> None:
        """The next image of a prefilling sequence into its cells, in a decode of its own (engine/vision_steps.py)."""
        assert self.vision is not None, "only a model with a projector takes requests with images"
        self.context.use_adapter(self.scheduler.adapter)
        error = decode_next_image(self.vision, self.context, seq)
        if error is not None:
            self.slots.forget(seq.admitted_slot)  # what the failed decode left in its cells is unknown
            self._finish(seq, "error", error)
        elif seq.request.report_progress:
            self._outbox.put(seq.sink, PrefillProgressEvent(seq.n_past, len(seq.prompt)))

    def _drafts(self, decoding: list[Sequence]) -> dict[int, list[int]]:
        """Drafts for this step's speculating sequences, by Sequence.id (engine/speculation.py)."""
        speculating = [seq for seq in decoding if seq.speculation is not None]
        if not speculating:
            return {}
        in_batch = (self.context.n_batch - len(decoding)) // len(speculating)
        wanted = []
        for seq in speculating:
            room = min(in_batch, self.context_length - seq.n_past - 1)
            if seq.request.max_tokens is not None:  # the token after the last draft counts too
                room = min(room, seq.request.max_tokens - len(seq.generated) - 1)
            # drafts are checked against the grammar only where it applies (verifying gates them all)
            constraint = seq.constraint if seq.gate is None or not seq.gate.waiting else None
            wanted.append(Speculating(seq.admitted_slot.seq_id, seq.speculation, seq.admitted_slot.tokens,  # type: ignore[arg-type]
                                      seq.pending_token, seq.generated, room,
                                      constraint.valid_prefix if constraint is not None else None))
        proposed = propose(wanted, len(decoding), self.context.n_threads)
        drafts = {}
        for seq in speculating:
            found = proposed.get(seq.admitted_slot.seq_id, [])
            valid = next((i for i, token in enumerate(found) if not self.model.is_valid_token(token)), len(found))
            if valid:
                drafts[seq.id] = found[:valid]
        return drafts

    def _advance(self, chunk: Chunk) -> None:
        if chunk.drafted:
            self._verify(chunk)
            return
        seq = chunk.seq
        seq.n_past += len(chunk.tokens)
        seq.admitted_slot.tokens.extend(chunk.tokens)
        if seq.state is SequenceState.PREFILLING:
            if reads_prompt(seq.request):
                for event in score_chunk(self.context, chunk):
                    self._outbox.put(seq.sink, event)
            if seq.request.report_progress:
                self._outbox.put(seq.sink, PrefillProgressEvent(seq.n_past, len(seq.prompt)))
            if seq.prompt_remaining() > 0:
                return
            seq.state = SequenceState.DECODING
            if seq.request.max_tokens == 0:  # only the prompt was wanted (echo, scoring)
                self._finish(seq, "length")
                return
        self._sample(seq, chunk.batch_index + len(chunk.tokens) - 1)

    def _sample(self, seq: Sequence, batch_index: int) -> None:
        token = self._choose(seq, batch_index)
        if token is not None:
            self._emit(seq, token)

    def _verify(self, chunk: Chunk) -> None:
        """Sample row after row of a speculating sequence while the model agrees with its drafts;
        keep the first token where it does not, and drop the cells of the drafts after it."""
        seq = chunk.seq
        slot = seq.admitted_slot
        speculation = seq.speculation
        assert speculation is not None, "only speculating sequences draft"
        drafts = chunk.tokens[1:]
        seq.n_past += 1
        slot.tokens.append(chunk.tokens[0])
        for place in range(len(chunk.tokens)):
            token = self._choose(seq, chunk.batch_index + place)
            if token is None:  # its constraint failed: it has ended
                return
            matched = place < len(drafts) and token == drafts[place]
            if place < len(drafts):
                speculation.checked(matched)
            self._emit(seq, token)
            if seq.state is SequenceState.FINISHED or not matched:
                break
            seq.n_past += 1  # the draft's cell holds what the model produced: it stays
            slot.tokens.append(token)
        if seq.state is not SequenceState.FINISHED:
            self.context.remove_from(slot.seq_id, seq.position(seq.n_past))
            speculation.settle(ended=False)

    def _gate(self, seq: Sequence) -> ReasoningGate:
        spec = seq.request.reasoning
        assert spec is not None, "only a reasoning request has a gate"
        ends = seq.constraint.eos_tokens if seq.constraint is not None else frozenset()

        def tokenize(text: bytes) -> list[int]:
            return self.model.tokenize(text.decode("utf-8", errors="replace"), add_special=False)

        return ReasoningGate(spec, tokenize, np.fromiter(ends, dtype=np.int64, count=len(ends)))

    def _choose(self, seq: Sequence, batch_index: int) -> int | None:
        """The next token from a row of logits (None if the sequence's constraint failed: it ended)."""
        request = seq.request
        gate = seq.gate
        if gate is not None and (forced := gate.forced_token()) is not None:
            seq.forced = True  # its cell is decoded all the same; the row of logits is not read
            return forced
        logits = self.context.logits(batch_index)
        top_k = request.logprobs
        # logprobs are the model's, before sampling adjusts them
        seq.raw_logits = logits.copy() if top_k is not None else None
        sampler = seq.sampler
        assert sampler is not None, "a sequence gets its sampler when admitted"
        sampler.adjust(logits)
        if gate is not None and gate.waiting:  # reasoning: free text, its constraint waits for the answer
            gate.mask(logits)
        elif seq.constraint is not None:
            try:
                seq.constraint.apply(logits, allow_end=not request.ignore_eos)
            except ConstraintError as exc:  # its grammar hit a limit of llguidance's: it alone ends
                self._finish(seq, "constraint", f"constrained decoding failed: {exc}")
                return None
        token = sampler.choose(self.context, batch_index, logits)
        if gate is not None and gate.waiting:
            return gate.checked(token, self.model.token_bytes(token, special=True))
        return token

    def _emit(self, seq: Sequence, token: int) -> None:
        """Take a chosen token: stop, or send it and make it the pending one."""
        request = seq.request
        sampler = seq.sampler
        assert sampler is not None, "a sequence gets its sampler when admitted"
        sampler.accept(token)
        seq.generated.append(token)
        if not seq.first_token_at:
            seq.first_token_at = time.perf_counter()
        if token in request.stop_tokens or (not request.ignore_eos and self.model.is_eog(token)):
            self._finish(seq, "stop")
            return
        gate, forced, seq.forced = seq.gate, seq.forced, False
        if gate is not None:  # a waiting constraint takes the answer's sampled tokens only
            constrained = not (gate.waiting or forced)
            gate.take(self.model.token_bytes(token, special=True))
        if seq.constraint is not None and (gate is None or constrained):
            try:
                seq.constraint.accept(token)
            except ConstraintError as exc:  # a limit of llguidance's reached while advancing (fast-forward)
                self._finish(seq, "constraint", f"constrained decoding failed: {exc}")
                return
        raw, top_k = seq.raw_logits, request.logprobs
        logprob = logprobs_of(raw, token, top_k) if raw is not None and top_k is not None else None
        if forced and top_k is not None:  # appended by the gate: certain
            logprob = TokenLogprob(0.0, (TopLogprob(token, 0.0),) if top_k else ())
        self._outbox.put(seq.sink, TokenEvent(token, self.model.token_bytes(token), logprob))
        if seq.constraint is not None and seq.constraint.finished:
            self._finish(seq, "stop")  # the grammar cannot go on: only EOS could follow
            return
        out_of_budget = request.max_tokens is not None and len(seq.generated) >= request.max_tokens
        if out_of_budget or seq.n_past >= self.context_length:
            self._finish(seq, "length" if out_of_budget else "context")
            return
        seq.pending = token

    def _finish(self, seq: Sequence, reason: str, error: str | None = None) -> None:
        if seq.speculation is not None:
            seq.speculation.settle(ended=True)
            if seq.slot is not None and seq.state is not SequenceState.FINISHED:
                # drafts past its last token may still hold cells: the slot must hold what it lists
                self.context.remove_from(seq.slot.seq_id, seq.position(len(seq.slot.tokens)))
        saved = None
        if seq.request.save_state and reason in ("stop", "length") and seq.slot is not None:
            # before the slot is released: another sequence may take its cells
            saved = SavedSequence(list(seq.slot.tokens), self.context.save_sequence(seq.slot.seq_id).tobytes())
        if seq.request.keep_cells is not None and seq.slot is not None and seq.state is not SequenceState.FINISHED:
            self.slots.keep(seq.slot, min(seq.request.keep_cells, len(seq.slot.tokens)), seq.position)
        self._left(seq)
        self.scheduler.remove(seq)
        if seq.sampler is not None:
            seq.sampler.close()
            seq.sampler = None
        seq.constraint = None
        self._outbox.put(seq.sink, seq.finish_event(reason, error, saved))

    def _decode_failed(self, chunks: list[Chunk], status: int) -> None:
        """Drop what the failed batch may have left in the cache; fail its sequences."""
        log.error("llama_decode returned %d for a batch of %d tokens", status, self.context.batch.size)
        for chunk in chunks:
            seq = chunk.seq
            self.slots.forget(seq.admitted_slot)  # what the failed batch left in its cells is unknown
            self._finish(seq, "error", f"llama_decode failed with status {status}")

    def _fail_all(self, message: str, reason: str, taken: Iterable[_Command] = ()) -> None:
        """End every sequence the engine knows of with ``reason``: queued, running, and submitted but not
        yet applied (``taken`` from the inbox by this step, or still in it)."""
        for seq in list(self.scheduler.waiting) + list(self.scheduler.running):
            if seq.slot is not None:
                self.slots.forget(seq.slot)
            self._finish(seq, reason, message)
        with self._wake:
            orphans, self._inbox = list(taken) + list(self._inbox), deque()
        for command in orphans:
            for seq in command.seqs if isinstance(command, _Submit) else ():
                if seq.state is not SequenceState.FINISHED:  # not already ended above
                    self._left(seq)
                    seq.state = SequenceState.FINISHED
                    self._outbox.put(seq.sink, seq.finish_event(reason, message))

    def _left(self, seq: Sequence) -> None:
        """A sequence is finishing: one fewer live, once (engine/admission.py)."""
        if seq.state is not SequenceState.FINISHED:
            with self._wake:
                self.admission.leave()
