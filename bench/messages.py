"""Streamed decode over Anthropic's ``/v1/messages`` next to ``/v1/chat/completions`` on the same server,
model and prompt: what the Messages API's translation and its named events cost per token.

One studiolo server with SmolLM2 (its short step shows a per-token cost most), greedy, 512 tokens per
stream with end-of-generation ignored (``ignore_eos``) so both streams are equally long, the two
routes asked in turns, the order swapped each round. Decode rate: tokens after the first over the time
after the first, as everywhere in bench/.

    python -m bench.messages [--repeats N] [--print-only]

`make bench` runs it after the other figures; run alone, it merges into bench/results/latest.json
(or, without one, replaces its own section of docs/BENCHMARKS.md) and rewrites the report.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path

from bench.config import BenchConfig
from bench.targets import HTTPTarget, _SSEReader

TOKENS = 512
PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."
TARGET = 0.97  # issue 22: /v1/messages at least this share of /v1/chat/completions' rate


class _Events(_SSEReader):
    """Both routes' stream events: the text of each, and the completion tokens from the usage."""

    tokens = 0

    def _text(self, event: bytes) -> str | None:
        data = next((line[6:] for line in event.split(b"\n") if line.startswith(b"data: {")), None)
        if data is None:
            return None
        payload = json.loads(data)
        kind = payload.get("type")
        if kind is not None:  # an Anthropic event
            if kind == "message_delta":
                self.tokens = payload["usage"]["output_tokens"]
            return payload["delta"].get("text") if kind == "content_block_delta" else None
        if payload.get("usage"):
            self.tokens = payload["usage"]["completion_tokens"]
        choices = payload.get("choices") or []
        return (choices[0].get("delta") or {}).get("content") if choices else None


ROUTES = {
    "/v1/chat/completions": lambda model: {"model": model, "stream": True, "stream_options": {"include_usage": True},
                                           "messages": [{"role": "user", "content": PROMPT}], "max_tokens": TOKENS,
                                           "temperature": 0, "ignore_eos": True},
    "/v1/messages": lambda model: {"model": model, "stream": True, "messages": [{"role": "user", "content": PROMPT}],
                                   "max_tokens": TOKENS, "temperature": 0, "ignore_eos": True},
}


async def _rate(target: HTTPTarget, path: str) -> float:
    timing, events = await target.stream(path, ROUTES[path](target.model), _Events)
    if events.tokens != TOKENS or timing.last <= timing.first:
        raise RuntimeError(f"{path}: {events.tokens} tokens streamed, expected {TOKENS}")
    return (events.tokens - 1) / (timing.last - timing.first)


async def _measure(target: HTTPTarget, repeats: int) -> dict:
    paths = list(ROUTES)
    for path in paths:
        await _rate(target, path)  # loads the model, warms both routes
    rates: dict[str, list[float]] = {path: [] for path in paths}
    for round_ in range(repeats):
        for path in paths if round_ % 2 == 0 else paths[::-1]:
            rates[path].append(await _rate(target, path))
    return {path: statistics.median(values) for path, values in rates.items()}


def measure(config: BenchConfig, logs: Path, repeats: int) -> dict:
    from bench.servers import studiolo
    from studiolo.models.defaults import SMOLLM2, target_path

    with studiolo(SMOLLM2.key, target_path(SMOLLM2), config, logs) as (url, model):
        rates = asyncio.run(_measure(HTTPTarget("studiolo", url, model, []), repeats))
    for path, rate in rates.items():
        print(f"    {path:22} {rate:6.1f} tok/s", flush=True)
    return {"model": SMOLLM2.key, "tokens": TOKENS, "repeats": repeats, "decode_tps": rates,
            "date": time.strftime("%Y-%m-%d %H:%M")}


def _ratio(results: dict) -> float:
    rates = results["decode_tps"]
    return rates["/v1/messages"] / rates["/v1/chat/completions"]


def lines(results: dict | None) -> list[str]:
    """The report's section (bench/report.py)."""
    if not results:
        return ["## Anthropic Messages", "", "Not measured yet (`python -m bench.messages`).", ""]
    rates = results["decode_tps"]
    return ["## Anthropic Messages", "",
            f"{results['model']} on studiolo (bench/messages.py, measured {results['date']}, median of "
            f"{results['repeats']}): single-stream decode of {results['tokens']} greedy tokens, the same prompt "
            "streamed over each route in turns.", "",
            "| route | tok/s |", "| --- | --- |",
            *(f"| `{path}` | {rate:.1f} |" for path, rate in rates.items()),
            "", f"`/v1/messages` decodes at {_ratio(results):.2f}x `/v1/chat/completions`.", ""]


def targets(results: dict | None) -> list[tuple[str, str, bool | None]]:
    if not results:
        return []
    ratio = _ratio(results)
    return [(f"anthropic: /v1/messages streamed decode >= {TARGET}x /v1/chat/completions", f"{ratio:.2f}x",
             ratio >= TARGET)]


def main() -> None:
    from bench import report

    report.run_section_alone(__doc__, "messages", measure, lines, targets)


if __name__ == "__main__":
    main()
