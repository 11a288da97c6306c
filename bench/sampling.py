"""In-process cost of one sampled token, with LM Studio's default sampling, on real logits.

    PYTHONPATH=src python -m bench.sampling [rounds]

A prompt's logits at every position (real distributions, 262k wide on Gemma 3) are kept; each
step puts fresh rows back into the context's buffer (untimed: penalties adjust it in place),
then times ``adjust`` + ``choose`` for 1 or 8 sequences. The whole-vocabulary C chain and the
top-k-first path take turns round by round, so the noise of a shared machine hits both alike.
The breakdown times the parts of the whole-vocabulary path one by one. Last, in a live engine
(8 slots, 2 threads), Engine._sample is timed call by call while 1 or 8 seeded requests decode
48 tokens each: whole vocabulary, top-k first and greedy (the rest of the step's sampling work:
views, events) take turns.
"""

from __future__ import annotations

import asyncio
import ctypes
import statistics
import sys
import time
from dataclasses import replace

import llama_cpp as llama
import numpy as np

from studiolo.config import EngineSettings
from studiolo.domain.sampling import SamplingParams
from studiolo.engine.candidates import CandidateArray, top_k_ids
from studiolo.engine.engine import Engine
from studiolo.engine.llama import ContextParams, LlamaContext, LlamaModel
from studiolo.engine.sampling import TokenSampler
from studiolo.engine.sequence import GenerationRequest, TokenEvent
from studiolo.models.defaults import GEMMA3, SMOLLM2, target_path

PROMPT = (
    "The museum's small study, the studiolo, was a room for reading and collecting. Its walls were "
    "panelled with inlaid wood showing cupboards, books and instruments, and in the evenings the duke "
    "would sit there alone with his letters. Visitors today ask how the craftsmen made"
)
ROWS = 48  # prompt positions whose logits are kept
STEPS = 40  # timed steps per round and path
DEFAULTS = SamplingParams(seed=1)  # LM Studio's defaults: 0.8, top_p 0.95, top_k 40, min_p 0.05, repeat 1.1


class Rows:
    """Logits of a prompt's positions, and a way to put them back in the context's buffer."""

    def __init__(self, model: LlamaModel):
        self.context = LlamaContext(model, ContextParams(n_ctx=256, n_batch=64, n_seq_max=1, n_threads=2))
        tokens = model.tokenize(PROMPT, add_special=True)[:ROWS]
        assert len(tokens) == ROWS, f"the prompt is {len(tokens)} tokens, fewer than {ROWS}"
        self.tokens = tokens
        self.context.batch.add(tokens, 0, 0, logits_from=0)
        assert self.context.decode() == 0
        self.saved = [self.context.logits(i).copy() for i in range(ROWS)]

    def restore(self, index: int) -> np.ndarray:
        view = self.context.logits(index)
        view[:] = self.saved[index]
        return view


def time_steps(rows: Rows, sequences: int, whole_vocabulary: bool) -> list[float]:
    """Milliseconds per step (all sequences sampled once), for STEPS steps."""
    samplers = [TokenSampler(DEFAULTS, rows.tokens[: 16 + 4 * s]) for s in range(sequences)]
    timings = []
    for step in range(STEPS):
        indices = [(step * sequences + s) % ROWS for s in range(sequences)]
        views = [rows.restore(i) for i in indices]
        started = time.perf_counter()
        for sampler, index, view in zip(samplers, indices, views, strict=True):
            sampler.adjust(view)
            if whole_vocabulary:
                sampler.choose_over_vocabulary(rows.context, index)
            else:
                sampler.choose(rows.context, index, view)
        timings.append((time.perf_counter() - started) * 1e3)
    for sampler in samplers:
        sampler.close()
    return timings


def ab(rows: Rows, sequences: int, rounds: int) -> dict[str, float]:
    """Median ms per step of each path, over interleaved rounds (the order alternates)."""
    results: dict[bool, list[float]] = {True: [], False: []}
    for round_index in range(rounds):
        for whole in (True, False) if round_index % 2 == 0 else (False, True):
            results[whole] += time_steps(rows, sequences, whole)
    return {"whole vocabulary": statistics.median(results[True]), "top-k first": statistics.median(results[False])}


def _chain(*samplers) -> ctypes.c_void_p:
    chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
    for sampler in samplers:
        llama.llama_sampler_chain_add(chain, sampler)
    return chain


def _median_ms(action, rows: Rows, repeats: int = 60) -> float:
    timings = []
    for step in range(repeats):
        view = rows.restore(step % ROWS)
        started = time.perf_counter()
        action(step % ROWS, view)
        timings.append((time.perf_counter() - started) * 1e3)
    return statistics.median(timings)


def breakdown(rows: Rows) -> dict[str, float]:
    """Median ms of each part of one sequence's sampled token."""
    handle = rows.context.handle
    sampler = TokenSampler(DEFAULTS, rows.tokens)
    copy_only = _chain(llama.llama_sampler_init_greedy())
    copy_top_k = _chain(llama.llama_sampler_init_top_k(40), llama.llama_sampler_init_greedy())
    tail = {
        "top-p on 40": llama.llama_sampler_init_top_p(0.95, 1),
        "min-p on 40": llama.llama_sampler_init_min_p(0.05, 1),
        "temperature on 40": llama.llama_sampler_init_temp(0.8),
        "dist on 40": llama.llama_sampler_init_dist(1),
    }
    parts = {
        "penalties (adjust)": _median_ms(lambda i, view: sampler.adjust(view), rows),
        "C: copy into llama_token_data + argmax": _median_ms(
            lambda i, view: llama.llama_sampler_sample(copy_only, handle, i), rows),
        "C: copy + top-k 40 (partial sort)": _median_ms(
            lambda i, view: llama.llama_sampler_sample(copy_top_k, handle, i), rows),
        "whole chain (llama_sampler_sample)": _median_ms(
            lambda i, view: sampler.choose_over_vocabulary(rows.context, i), rows),
        "numpy top_k_ids": _median_ms(lambda i, view: top_k_ids(view, 40), rows),
    }
    candidates = CandidateArray(40)
    for name, part in tail.items():
        def apply_one(i, view, part=part):
            ids = top_k_ids(view, 40)
            candidates.rows["id"][:40] = ids
            candidates.rows["logit"][:40] = view[ids]
            candidates.raw.size, candidates.raw.sorted, candidates.raw.selected = 40, True, -1
            llama.llama_sampler_apply(part, ctypes.pointer(candidates.raw))
        parts[name + " (incl. top_k_ids)"] = _median_ms(apply_one, rows)
    parts["top-k first: top_k_ids + chain on 40"] = _median_ms(
        lambda i, view: sampler.choose(rows.context, i, view), rows)
    for chain in (copy_only, copy_top_k):
        llama.llama_sampler_free(chain)
    for part in tail.values():
        llama.llama_sampler_free(part)
    sampler.close()
    return parts


class TimedSampling:
    """Wraps Engine._sample to time each call on the engine thread; switches the path taken."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self._sample = Engine._sample
        self._choose = TokenSampler.choose
        timed = self

        def sample(engine, seq, batch_index):  # noqa: ANN001 - same signature as Engine._sample
            started = time.perf_counter()
            timed._sample(engine, seq, batch_index)
            timed.calls.append((time.perf_counter() - started) * 1e3)

        Engine._sample = sample  # type: ignore[method-assign]

    def use(self, whole_vocabulary: bool) -> None:
        if whole_vocabulary:
            TokenSampler.choose = lambda sampler, context, index, logits: sampler.choose_over_vocabulary(  # type: ignore[method-assign]
                context, index)
        else:
            TokenSampler.choose = self._choose  # type: ignore[method-assign]

    def take(self) -> list[float]:
        """Milliseconds of each sampled token since the last take."""
        calls, self.calls = self.calls, []
        return calls


GREEDY = SamplingParams(temperature=0)  # the reference: the rest of Engine._sample (argmax, events)
PATHS = {"whole vocabulary": (True, DEFAULTS), "top-k first": (False, DEFAULTS), "greedy": (False, GREEDY)}


async def _generate(engine: Engine, model: LlamaModel, sampling: SamplingParams, sequences: int) -> float:
    """Tokens per second of ``sequences`` requests decoded together (48 tokens each, seeds 0..)."""
    prompt = model.tokenize(PROMPT, add_special=True)
    requests = [GenerationRequest(prompt, replace(sampling, seed=s), max_tokens=48, ignore_eos=True)
                for s in range(sequences)]
    started = time.perf_counter()
    streams = engine.submit_many(requests)
    counts = [sum(isinstance(event, TokenEvent) for event in await stream.drain()) for stream in streams]
    return sum(counts) / (time.perf_counter() - started)


def in_engine(model: LlamaModel, rounds: int) -> None:
    """Engine._sample's median time per token in a live engine, the paths taking turns (order rotating)."""
    timed = TimedSampling()
    engine = Engine(model, EngineSettings(context_length=512, parallel=8, batch_size=512, threads=2))
    names = list(PATHS)
    try:
        for sequences in (1, 8):
            per_call: dict[str, list[float]] = {name: [] for name in names}
            rates: dict[str, list[float]] = {name: [] for name in names}
            for round_index in range(rounds):
                for name in names[round_index % 3:] + names[: round_index % 3]:
                    whole, sampling = PATHS[name]
                    timed.use(whole)
                    rates[name].append(asyncio.run(_generate(engine, model, sampling, sequences)))
                    per_call[name] += timed.take()
            line = []
            for name in names:
                # the median call: a step preempted by the machine's other work moves it little
                per_token = statistics.median(per_call[name])
                rate = statistics.median(rates[name])
                line.append(f"{name} {per_token:.3f} ms/token ({per_token * sequences:.2f} ms/step), {rate:.1f} tok/s")
            print(f"  in the engine, {sequences} sequence(s): " + "; ".join(line))
    finally:
        timed.use(False)
        engine.close()


def main(rounds: int) -> None:
    for model_spec in (GEMMA3, SMOLLM2):
        model = LlamaModel(target_path(model_spec))
        rows = Rows(model)
        print(f"## {model_spec.key} (vocabulary {model.n_vocab})")
        for name, ms in breakdown(rows).items():
            print(f"  {name:48s} {ms:7.3f} ms")
        for sequences in (1, 8):
            medians = ab(rows, sequences, rounds)
            ratio = medians["whole vocabulary"] / medians["top-k first"]
            print(f"  {sequences} sequence(s) per step: "
                  + ", ".join(f"{name} {ms:.3f} ms" for name, ms in medians.items()) + f" ({ratio:.1f}x)")
        rows.context.close()
        in_engine(model, rounds)
        model.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
