"""The fastest single-stream decode llama.cpp itself gives on this machine: a bare loop of
llama_decode calls, one token each, greedy by argmax, with no engine, server or sampler chain.

It shows how far each server is from what its library can do at all, and how far that is from
the memory-bandwidth bound (bench/bandwidth.py): on a small model the loop is compute-bound.
It takes its turn with the servers (workloads.measure_all) so machine drift hits it alike.
"""

from __future__ import annotations

import asyncio
import time

from bench.config import BenchConfig
from bench.targets import Timing
from studiolo.engine.compute import COMPUTE
from studiolo.engine.llama import ContextParams, LlamaContext, LlamaModel


class BareLoopTarget:
    """Single-stream generation straight on a llama.cpp context shaped like every server's."""

    name = "llama.cpp bare loop"

    def __init__(self, model: LlamaModel, config: BenchConfig, banned_tokens: list[int]):
        self.model = model
        self._banned = banned_tokens
        params = ContextParams(n_ctx=config.context * config.slots, n_batch=config.batch,
                               n_seq_max=config.slots, n_threads=config.threads)
        self._context = LlamaContext(model, params)

    async def generate(self, prompt: str, max_tokens: int, extra: dict | None = None) -> Timing:
        if extra:  # an argmax loop: it takes its turn in greedy single-stream decode only
            raise ValueError("the bare loop decodes greedily only")
        tokens = self.model.tokenize(prompt, add_special=True)
        # on the compute thread, as every engine in this process: one OpenMP team (engine/compute.py)
        return await asyncio.to_thread(COMPUTE.call, lambda: self._generate(tokens, max_tokens))

    def _generate(self, prompt: list[int], max_tokens: int) -> Timing:
        context, batch = self._context, self._context.batch
        sent = time.perf_counter()
        context.clear()
        batch.clear()
        batch.add(prompt, 0, 0, len(prompt) - 1)
        self._decode()
        token = self._argmax(len(prompt) - 1)
        first = time.perf_counter()
        for position in range(len(prompt), len(prompt) + max_tokens - 1):
            batch.clear()
            batch.add([token], position, 0, 0)
            self._decode()
            token = self._argmax(0)
        return Timing(sent, first, time.perf_counter(), max_tokens, "")

    def _decode(self) -> None:
        if self._context.decode() != 0:
            raise RuntimeError("llama_decode failed")

    def _argmax(self, index: int) -> int:
        logits = self._context.logits(index)
        logits[self._banned] = float("-inf")  # as every server is asked to: no end of generation
        return int(logits.argmax())

    async def close(self) -> None:
        self._context.close()
