"""One engine per loaded embedding model: inputs in, pooled vectors out, many inputs per batch.

An embedding needs one forward pass over its input and the model's pooling (mean, CLS or last,
set by the GGUF), so there is no decoding loop: each step packs waiting inputs into one batch,
each input its own sequence, and reads every sequence's pooled vector when it is done. A pass
holds up to 1024 tokens: llama.cpp's cost per token was 0.19-0.20 ms at 8-16 inputs per pass and
0.31 ms at ~1,900 tokens (attention spans the whole pass, masked or not). Inputs of
several requests are taken in turn, one from each request per round, so a request of a thousand
inputs does not hold up a request of one. Steps run on the process's compute thread
(engine/compute.py), between the chat engines' steps.

Vectors are L2-normalized, as OpenAI's are and as sentence-transformers' are when asked.

A reranker (a GGUF with rank pooling) runs here the same way: each input is one (query,
document) pair (engine/rank_input.py) and its pooled output is the classification head's
score, taken as it is (``score``), not normalized.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from studiolo.config import EngineSettings
from studiolo.domain.errors import InvalidRequest
from studiolo.engine.compute import COMPUTE
from studiolo.engine.engine import EngineClosed, InvalidTokens
from studiolo.engine.lifecycle import UNLOADED, EngineLifecycle
from studiolo.engine.llama import ContextParams, LlamaContext, LlamaModel

BATCH_TOKENS = 2048  # the context: an input must fit whole in one pass (non-causal attention)
PASS_TOKENS = 1024  # inputs packed per pass: past this, attention across the pass costs more per token
MAX_SEQUENCES = 64  # inputs per forward pass


class InputTooLong(InvalidRequest):
    code = "context_length_exceeded"

    def __init__(self, index: int, tokens: int, limit: int, field: str = "input"):
        # a reranker's input is the query and document together: the document's field is named
        what = f"input {index}" if field == "input" else f"{field}[{index}] with the query"
        super().__init__(f"{what} is {tokens} tokens long, more than the model's context of {limit} tokens")
        self.index = index
        self.param = f"{field}[{index}]"


@dataclass(eq=False)
class _Job:
    inputs: list[list[int]]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    results: list[np.ndarray | None] = field(default_factory=list)
    scheduled: int = 0  # inputs handed to a batch so far
    done: int = 0
    cancelled: bool = False


class EmbeddingEngine(EngineLifecycle[_Job]):
    """Its inbox holds the requests (``_Job``) being embedded: each stays there until settled."""

    def __init__(self, model: LlamaModel, settings: EngineSettings, *, rank_pooling: bool = False):
        """``rank_pooling``: a reranker whose GGUF names no pooling type (otherwise the GGUF's own applies)."""
        self.model = model
        self.context_length = min(settings.context_length, model.n_ctx_train or settings.context_length,
                                  BATCH_TOKENS)
        self.context = LlamaContext(model, ContextParams(
            n_ctx=BATCH_TOKENS, n_batch=BATCH_TOKENS, n_seq_max=MAX_SEQUENCES, n_threads=settings.threads,
            embeddings=True, rank_pooling=rank_pooling))
        self.threads = settings.threads  # at most; fewer while other programs keep the cores busy
        self.ranks = self.context.ranks  # a reranker: one score per input, not a vector
        super().__init__()  # last: the compute thread may step the engine from here on

    # --- called from the event loop ---------------------------------------------------

    async def embed(self, inputs: list[list[int]]) -> list[np.ndarray]:
        """The normalized vectors of ``inputs`` (token lists), in order (a reranker's raw scores)."""
        self._check(inputs)
        return await self._run(inputs)

    async def score(self, inputs: list[list[int]], field: str = "input") -> list[float]:
        """A reranker's score of each input (a formatted query/document pair), in order; ``field`` names
        the inputs in errors."""
        assert self.ranks, "score() needs a model with rank pooling"
        for index, tokens in enumerate(inputs):
            self.check_input(index, tokens, field)
        return [float(output[0]) for output in await self._run(inputs)]

    async def _run(self, inputs: list[list[int]]) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        job = _Job(inputs, loop, loop.create_future(), [None] * len(inputs))
        if not self._post(job):
            raise EngineClosed(UNLOADED)
        try:
            return await job.future
        except asyncio.CancelledError:
            job.cancelled = True  # the client left: its inputs not yet embedded are skipped
            raise

    def _check(self, inputs: list[list[int]]) -> None:
        for index, tokens in enumerate(inputs):
            self.check_input(index, tokens)

    def check_input(self, index: int, tokens: list[int], field: str = "input") -> None:
        """Refuse input ``index`` if it is empty, longer than the context or holds a foreign token id;
        errors name ``field[index]``."""
        if not tokens:
            raise InvalidTokens(f"{field} {index} is empty", f"{field}[{index}]")
        if len(tokens) > self.context_length:
            raise InputTooLong(index, len(tokens), self.context_length, field)
        bad = next((t for t in tokens if not self.model.is_valid_token(t)), None)
        if bad is not None:
            raise InvalidTokens(f"token id {bad} is outside the vocabulary (0..{self.model.n_vocab - 1})",
                                f"{field}[{index}]")

    def busy(self) -> bool:
        return bool(self._inbox)

    def request_counts(self) -> tuple[int, int]:
        jobs = list(self._inbox)
        return (1 if jobs else 0), max(0, len(jobs) - 1)

    # --- on the compute thread --------------------------------------------------------

    def _shut_down(self) -> None:
        self._fail_all(EngineClosed(UNLOADED))

    def _work_step(self) -> None:
        picked = self._pick()
        if not picked:
            return
        try:
            vectors = self._forward([job.inputs[index] for job, index in picked])
        except Exception as exc:  # a failed pass fails the requests it carried, not the server
            for job in {job for job, _ in picked}:
                self._settle(job, exc)
            return
        for (job, index), vector in zip(picked, vectors, strict=True):
            job.results[index] = vector
            job.done += 1
            if job.done == len(job.inputs):
                self._settle(job, None)

    def _pick(self) -> list[tuple[_Job, int]]:
        """Inputs for one pass, one per request in turn, until the batch is full."""
        with self._wake:
            for job in [job for job in self._inbox if job.cancelled]:
                self._inbox.remove(job)
            jobs = [job for job in self._inbox if job.scheduled < len(job.inputs)]
        picked: list[tuple[_Job, int]] = []
        tokens = 0
        while jobs and len(picked) < MAX_SEQUENCES:
            for job in list(jobs):
                size = len(job.inputs[job.scheduled])
                if (picked and tokens + size > PASS_TOKENS) or len(picked) == MAX_SEQUENCES:
                    return picked
                picked.append((job, job.scheduled))
                tokens += size
                job.scheduled += 1
                if job.scheduled == len(job.inputs):
                    jobs.remove(job)
        return picked

    def _forward(self, inputs: list[list[int]]) -> list[np.ndarray]:
        batch = self.context.batch
        batch.clear()
        for seq_id, tokens in enumerate(inputs):
            batch.add(tokens, 0, seq_id, 0)  # every token's output feeds the pooling
        self.context.set_threads(COMPUTE.threads(self.threads))
        status = self.context.encode() if self.model.has_encoder else self.context.decode()
        if status != 0:
            raise RuntimeError(f"llama.cpp failed to embed a batch (status {status})")
        vectors = [self.context.sequence_embedding(seq_id) for seq_id in range(len(inputs))]
        self.context.clear()  # decoder-based embedding models keep cells: drop them
        return vectors if self.ranks else [_normalized(vector) for vector in vectors]

    def _settle(self, job: _Job, error: BaseException | None) -> None:
        with self._wake:
            if job in self._inbox:
                self._inbox.remove(job)
        _hand_over(job, error)

    def _fail_all(self, error: BaseException) -> None:
        with self._wake:
            jobs, self._inbox = list(self._inbox), deque()
        for job in jobs:
            _hand_over(job, error)


def _hand_over(job: _Job, error: BaseException | None) -> None:
    """Settle ``job``'s future on its event loop, if that loop still runs."""
    try:
        job.loop.call_soon_threadsafe(_resolve, job.future, job.results, error)
    except RuntimeError:  # the loop closed (the process is exiting): nobody is waiting any more
        pass


def _resolve(future: asyncio.Future, results: list, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(results)


def _normalized(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector
