"""Which sequences run, and what each contributes to the next llama_decode.

Every step decodes one batch: the pending token of every decoding sequence, then chunks
of prompt for sequences still prefilling, oldest first, until ``batch_size`` tokens.
Decoding sequences go first so that a long prompt arriving never stalls running streams
for more than one step.

A llama.cpp context applies one set of LoRA adapters to a whole batch, so a batch only holds
sequences of one adapter (or of none). When sequences of several adapters run, the groups
take turns of ``ADAPTER_TURN_STEPS`` steps: switching the context's adapter costs about as
much as a decode step of SmolLM2 (llama.cpp rebuilds its graph), so switching at every step
would halve the speed.

The last token of a prompt is always decoded in a step after the rest of it, as a row of its
own. Its logits decide the first generated token, and CPU kernels round differently by batch
shape (Gemma 3's Q4_K ones do): a prompt resumed from the prefix cache prefills only that last
token, alone, so a cold prompt must compute it the same way, or a seeded request would give
another answer once its prompt was cached. It costs one decode step per request, so a request that
samples nothing (``max_tokens=0``: echo, scoring) is spared it.

Reads (scoring requests, engine/prompt_scoring.py) still waiting once the slots are taken ride read
lanes (engine/slots.py): after the decoding tokens and the slots' prompt chunks, what is left of the
step's batch goes to waiting reads, oldest first, each whole, in a lane borrowing its prefix from the
slot that holds it. A read so never delays a decoding sequence's token, and the step holds as many
reads as its batch has room for, not ``parallel``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice

from studiolo.engine.llama import LoraAdapter
from studiolo.engine.prompt_scoring import first_read_row, least_prefill, rides_a_lane
from studiolo.engine.sequence import Sequence, SequenceState
from studiolo.engine.slots import SlotPool
from studiolo.engine.vision_steps import image_at, resume_outside_images, text_remaining

SCORED_TOKENS_PER_STEP = 64
LANE_SCAN = 128  # waiting sequences looked at for a lane per step: a long queue costs a step no more
ADAPTER_TURN_STEPS = 4


@dataclass
class Chunk:
    """A run of one sequence's tokens placed in the batch."""

    seq: Sequence
    tokens: list[int]
    start: int  # row of the first token in its sequence (its KV position: seq.position(start))
    logits_from: int  # index within tokens from which logits are wanted (len: none)
    batch_index: int = 0  # where the first token landed in the batch
    drafted: int = 0  # of a decoding sequence: the drafts after its pending token (engine/speculation.py)

    @property
    def completes_prompt(self) -> bool:
        return self.start + len(self.tokens) >= len(self.seq.prompt)


class Scheduler:
    def __init__(self, slots: SlotPool, batch_size: int):
        self.slots = slots
        self.batch_size = batch_size
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.adapter: LoraAdapter | None = None  # the adapter of the last planned batch
        self.image: Sequence | None = None  # a sequence whose next image the planned step decodes
        self._turn_steps = 0  # steps the current adapter has had in its turn
        self.boarded: list[Sequence] = []  # the reads the planned step took into read lanes

    def has_work(self) -> bool:
        return bool(self.running) or (bool(self.waiting) and self.slots.has_free())

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Take a sequence out of the queue or the running set; harmless if already out."""
        if seq in self.waiting:
            self.waiting.remove(seq)
        elif seq in self.running:
            self.running.remove(seq)
            self.slots.release(seq.admitted_slot)
        seq.state = SequenceState.FINISHED

    def admit(self) -> list[Sequence]:
        """Give free slots to waiting sequences, first come first served."""
        admitted = []
        while self.waiting and self.slots.has_free():
            seq = self.waiting.popleft()
            # Scoring the prompt needs logits at every position: nothing can be reused.
            seq.slot, reused = self.slots.acquire(
                seq.prompt, seq.request.adapter, reuse=not seq.request.prompt_logprobs, positions=seq.position,
                prefill_at_least=least_prefill(seq.request),
            )
            if seq.request.images:  # never resume inside an image
                reused = self.slots.keep(seq.slot, resume_outside_images(seq.request.images, reused), seq.position)
            seq.cached_tokens = seq.n_past = reused
            seq.state = SequenceState.PREFILLING
            self.running.append(seq)
            admitted.append(seq)
        return admitted

    def plan(self, drafts_for: Callable[[list[Sequence]], dict[int, list[int]]] | None = None) -> list[Chunk]:
        """The next batch; ``self.adapter`` says which adapter it must be decoded with.
        ``drafts_for`` gives the step's decoding sequences drafts to verify, by sequence id."""
        self.adapter = self._next_adapter()
        group = [seq for seq in self.running if seq.request.adapter is self.adapter]
        decoding = [seq for seq in group if seq.state is SequenceState.DECODING]
        drafts = drafts_for(decoding) if drafts_for is not None and decoding else {}
        chunks = []
        for seq in decoding:
            drafted = drafts.get(seq.id, [])
            chunks.append(Chunk(seq, [seq.pending_token, *drafted], seq.n_past, 0, drafted=len(drafted)))
        budget = self.batch_size - sum(len(chunk.tokens) for chunk in chunks) - self._plan_image(group)
        for seq in group:
            if budget <= 0:
                break
            if seq.state is not SequenceState.PREFILLING:
                continue
            take = min(budget, text_remaining(seq))  # a chunk of prompt stops at an image
            if take == 0:
                continue  # at an image: its rows go in a decode of their own
            if seq.request.prompt_logprobs:
                # scoring costs a full-vocabulary softmax per token on the worker thread:
                # a few per step, so that other sequences keep streaming meanwhile
                take = min(take, SCORED_TOKENS_PER_STEP)
            elif 1 < take == seq.prompt_remaining() and seq.request.max_tokens != 0:
                take -= 1  # the last prompt token goes in a step of its own (module docstring), if sampled from
            chunks.append(_prompt_chunk(seq, take))
            budget -= take
        self.boarded = self._board_lanes(budget)
        chunks += [_prompt_chunk(seq, seq.prompt_remaining()) for seq in self.boarded]
        return chunks

    def _board_lanes(self, budget: int) -> list[Sequence]:
        """Waiting reads of the step's adapter whose own tokens fit ``budget``, each given a read lane
        that borrows its prefix from a slot (module docstring); they run from now on."""
        boarded: list[Sequence] = []
        if not self.waiting or budget <= 0:
            return boarded
        lane = self.slots.free_lane()
        for seq in list(islice(self.waiting, LANE_SCAN)):  # a copy: boarding removes from the queue
            if lane is None or budget <= 0:
                break
            if not rides_a_lane(seq.request) or seq.request.adapter is not self.adapter:
                continue
            lender, shared = self.slots.lender(seq.prompt, seq.request.adapter, least_prefill(seq.request))
            if lender is None or len(seq.prompt) - shared > budget:
                continue
            self.slots.borrow(lane, lender, seq.prompt, shared)
            self.waiting.remove(seq)
            seq.slot, seq.cached_tokens, seq.n_past = lane, shared, shared
            seq.state = SequenceState.PREFILLING
            self.running.append(seq)
            boarded.append(seq)
            budget -= seq.prompt_remaining()
            lane = self.slots.free_lane()
        return boarded

    def _plan_image(self, group: list[Sequence]) -> int:
        """Pick the first prefilling sequence that sits at an image, to have it decoded this step (one
        image per step: an encode holds the compute thread); its rows count against the batch."""
        self.image = next((seq for seq in group
                           if seq.state is SequenceState.PREFILLING and image_at(seq) is not None), None)
        image = image_at(self.image) if self.image is not None else None
        return image.chunk.n_tokens if image is not None else 0

    def _next_adapter(self) -> LoraAdapter | None:
        """The adapter whose sequences get this step: the last step's until its turn is over,
        then the next one that has sequences running."""
        adapters: list[LoraAdapter | None] = []
        for seq in self.running:
            if not any(seq.request.adapter is known for known in adapters):
                adapters.append(seq.request.adapter)
        current = next((i for i, a in enumerate(adapters) if a is self.adapter), None)
        if current is not None and (len(adapters) == 1 or self._turn_steps < ADAPTER_TURN_STEPS):
            self._turn_steps += 1
            return self.adapter
        self._turn_steps = 1
        following = 0 if current is None else current + 1
        return adapters[following % len(adapters)] if adapters else None


def _prompt_chunk(seq: Sequence, take: int) -> Chunk:
    """The next ``take`` prompt tokens of a prefilling sequence, with the rows whose logits are read."""
    chunk = Chunk(seq, seq.prompt[seq.n_past : seq.n_past + take], seq.n_past, take)
    first_read = first_read_row(seq.request)  # scoring reads rows from there (engine/prompt_scoring.py)
    if first_read is not None:
        chunk.logits_from = min(take, max(0, first_read - seq.n_past))
    elif chunk.completes_prompt:
        chunk.logits_from = take - 1
    return chunk
