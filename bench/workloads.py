"""The measurements, written once against a target (HTTP server or in-process engine).

Each returns the median over ``config.repeats`` runs. Prompts are fresh per run (see
``Prompts``) so no server reuses a cached prompt unless the workload means it to.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from bench.config import SAMPLED, BenchConfig, Prompts
from bench.constrained import SCHEMA_FIELDS, free_and_constrained
from bench.stateful import STATEFUL_SERVERS, conversation
from bench.stateful import summarise as summarise_stateful
from bench.targets import Timing


async def single_stream_decode(target, prompts: Prompts, config: BenchConfig, sampling: dict | None = None) -> float:
    """Tokens per second of one stream, after its first token; greedy unless ``sampling`` is given."""
    return (await target.generate(prompts.story(), config.decode_tokens, sampling)).decode_rate


async def time_to_first_token(target, prompts: Prompts, length: int) -> float:
    """Seconds from sending a fresh prompt of ``length`` tokens to its first token."""
    return (await target.generate(prompts.of_length(length), 1)).ttft


async def aggregate_decode(target, prompts: Prompts, config: BenchConfig, streams: int,
                           sampling: dict | None = None) -> float:
    """Tokens per second over ``streams`` concurrent generations, first request to last token."""
    started = time.perf_counter()
    timings: list[Timing] = await asyncio.gather(
        *(target.generate(prompts.story(), config.aggregate_tokens, sampling) for _ in range(streams))
    )
    return sum(t.tokens for t in timings) / (max(t.last for t in timings) - started)


async def chat_follow_up(target, prompts: Prompts, config: BenchConfig) -> tuple[float, float, int]:
    """Time to first token of a chat's last turn (history resent, as OpenAI clients do), of the
    same prompt sent cold (a fresh opening, nothing cached), and the prompt's length in tokens."""
    opening = "A conversation between a curious user and a patient assistant."
    history = prompts.of_length(24, opening) + "\n"
    for turn in range(config.chat_turns - 1):
        history += f"User: Tell me one more fact about the number {turn + 7}.\nAssistant:"
        reply = await target.generate(history, config.chat_reply_tokens)
        history += reply.text + "\n"
    history += "User: Thank you. Now summarise what you said.\nAssistant:"
    follow_up = await target.generate(history, 1)
    cold = await target.generate(prompts.of_length(24, opening) + history[history.index("\n") :], 1)
    return follow_up.ttft, cold.ttft, prompts.count(history)


def figures(config: BenchConfig, every_figure: bool = True) -> list[tuple[str, callable, int]]:
    """(name, one run against a target with its prompts, how many runs) for every figure, or, unless
    ``every_figure``, for decode, prefill and the concurrency sweep, greedy and sampled, only."""
    runs = [
        ("decode_tps", lambda t, p: single_stream_decode(t, p, config), config.decode_repeats),
        ("ttft_short_s", lambda t, p: time_to_first_token(t, p, config.short_prompt_tokens), config.repeats),
        ("ttft_long_s", lambda t, p: time_to_first_token(t, p, config.long_prompt_tokens), config.repeats),
    ]
    for streams in config.concurrency:
        runs.append((f"aggregate_tps/{streams}", lambda t, p, k=streams: aggregate_decode(t, p, config, k),
                     config.repeats))
    # sampled decoding, LM Studio's default settings (config.SAMPLED), one stream and several
    runs.append(("sampled_decode_tps", lambda t, p: single_stream_decode(t, p, config, SAMPLED),
                 config.decode_repeats))
    runs.append(("sampled_aggregate_tps",
                 lambda t, p: aggregate_decode(t, p, config, config.sampled_streams, SAMPLED), config.repeats))
    if every_figure:
        runs.append(("chat", lambda t, p: chat_follow_up(t, p, config), config.repeats))
        runs.append(("constrained", lambda t, p: free_and_constrained(t, p, config), config.decode_repeats))
        runs.append(("stateful", lambda t, p: conversation(t, p, config), config.repeats))
    return runs


async def measure_all(targets: dict[str, object], prompts: dict[str, Prompts], config: BenchConfig,
                      decode_only: dict[str, object] | None = None, every_figure: bool = True) -> dict:
    """Every figure (see ``figures``) for every target, taking turns run by run so drifts in machine
    speed hit all alike.

    ``decode_only`` targets take their turn in (greedy) single-stream decode alone. Returns
    {target: {figure: median}}; each target draws the same prompts in the same order.
    """
    decode_only = decode_only or {}
    everyone = {**targets, **decode_only}
    for name, target in everyone.items():
        await target.generate(prompts[name].story(), 8)  # warm-up: lazy loads, graph allocation
    samples: dict[str, dict[str, list]] = {name: {} for name in everyone}
    for figure, run, repeats in figures(config, every_figure):
        turn = everyone if figure == "decode_tps" else targets
        if figure == "constrained":  # only the servers that take a JSON schema
            turn = {name: target for name, target in targets.items() if name in SCHEMA_FIELDS}
        if figure == "stateful":  # only the servers that keep a chat (bench/stateful.py)
            turn = {name: target for name, target in targets.items() if name in STATEFUL_SERVERS}
        for _ in range(repeats):
            for name, target in turn.items():
                samples[name].setdefault(figure, []).append(await run(target, prompts[name]))
    results = {name: _summarise(per_figure, config) for name, per_figure in samples.items() if name in targets}
    results.update({name: statistics.median(samples[name]["decode_tps"]) for name in decode_only})
    return results


def _summarise(samples: dict[str, list], config: BenchConfig) -> dict:
    median = statistics.median
    chats = samples.pop("chat", [])
    pairs = samples.pop("constrained", [])
    conversations = samples.pop("stateful", [])
    results = {figure: median(values) for figure, values in samples.items() if "/" not in figure}
    results["prefill_tps"] = config.long_prompt_tokens / results["ttft_long_s"]
    results["aggregate_tps"] = {k: median(samples[f"aggregate_tps/{k}"]) for k in config.concurrency}
    results["sampled_aggregate_streams"] = config.sampled_streams
    if chats:
        results["followup_ttft_s"] = median(c[0] for c in chats)
        results["cold_ttft_s"] = median(c[1] for c in chats)
        results["chat_prompt_tokens"] = int(median(c[2] for c in chats))
    if pairs:
        results["json_free_tps"] = median(free for free, _ in pairs)
        results["json_constrained_tps"] = median(constrained for _, constrained in pairs)
    if conversations:
        results.update(summarise_stateful(conversations))
    return results
