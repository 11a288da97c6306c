"""Streamed decode over LM Studio's SDK protocol (a ``predict`` channel on the ``/llm`` WebSocket) next
to the same request over ``/v1/chat/completions`` on the same server, model and prompt: what the
protocol's frames and packets cost per token.

One studiolo server with SmolLM2 (its short step shows a per-token cost most), greedy, at most 512
tokens per stream; the SDK's KV config has no ``ignore_eos``, so both requests are the same greedy
request and stream the same tokens (checked). The two are asked in turns, the order swapped each
round. Decode rate: tokens after the first over the time after the first, as everywhere in bench/.
The WebSocket client is as lean as the HTTP one (bench/targets.py): it stamps each fragment's frame
and reads nothing else of it.

    python -m bench.sdk [--repeats N] [--print-only]

`make bench` runs it after the other figures; run alone, it merges into bench/results/latest.json
(or, without one, replaces its own section of docs/BENCHMARKS.md) and rewrites the report.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

from bench.config import BenchConfig
from bench.messages import _Events
from bench.targets import HTTPTarget

TOKENS = 512
PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."
TARGET = 0.97  # issue 23: the SDK protocol at least this share of /v1/chat/completions' rate
REST = "/v1/chat/completions"
SDK = "SDK predict"
GUEST = {"authVersion": 1, "clientIdentifier": "guest:bench", "clientPasskey": "bench"}


def _chat_body(model: str) -> dict:
    return {"model": model, "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": PROMPT}], "max_tokens": TOKENS, "temperature": 0}


def _predict_frame(model: str) -> dict:
    fields = [{"key": "llm.prediction.temperature", "value": 0},
              {"key": "llm.prediction.maxPredictedTokens", "value": {"checked": True, "value": TOKENS}}]
    return {"type": "channelCreate", "endpoint": "predict", "channelId": 1, "creationParameter": {
        "modelSpecifier": {"type": "query", "query": {"identifier": model}},
        "history": {"messages": [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}]},
        "predictionConfigStack": {"layers": [{"layerName": "apiOverride", "config": {"fields": fields}}]}}}


async def _rest(target: HTTPTarget) -> tuple[float, int]:
    timing, events = await target.stream(REST, _chat_body(target.model), _Events)
    return _rate(events.tokens, timing.first, timing.last), events.tokens


async def _sdk(url: str, model: str) -> tuple[float, int]:
    async with connect(url.replace("http://", "ws://") + "/llm", max_size=None, compression=None) as socket:
        await socket.send(json.dumps(GUEST))
        await socket.recv()
        await socket.send(json.dumps(_predict_frame(model)))
        first = last = 0.0
        tokens = 0
        async for frame in socket:
            if '"fragment"' in frame:  # the text of a fragment packet: stamp it, read nothing more
                last = time.perf_counter()
                first = first or last
                continue
            message = json.loads(frame)
            if message["type"] != "channelSend":
                raise RuntimeError(f"{SDK}: the channel ended without success: {frame[:300]}")
            if message["message"]["type"] == "success":
                tokens = message["message"]["stats"]["predictedTokensCount"]
                break
    return _rate(tokens, first, last), tokens


def _rate(tokens: int, first: float, last: float) -> float:
    if tokens < 2 or last <= first:
        raise RuntimeError(f"{tokens} tokens streamed: too few to time")
    return (tokens - 1) / (last - first)


async def _measure(url: str, model: str, repeats: int) -> dict:
    target = HTTPTarget("studiolo", url, model, [])
    runs = {REST: lambda: _rest(target), SDK: lambda: _sdk(url, model)}
    counts = {name: (await run())[1] for name, run in runs.items()}  # loads the model, warms both
    if counts[REST] != counts[SDK]:
        raise RuntimeError(f"the same greedy request streamed {counts} tokens")
    rates: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            rates[name].append((await runs[name]())[0])
    return {"rates": {name: statistics.median(values) for name, values in rates.items()}, "tokens": counts[REST]}


def measure(config: BenchConfig, logs: Path, repeats: int) -> dict:
    from bench.servers import studiolo
    from studiolo.models.defaults import SMOLLM2, target_path

    with studiolo(SMOLLM2.key, target_path(SMOLLM2), config, logs) as (url, model):
        httpx.get(f"{url}/lmstudio-greeting", timeout=10).raise_for_status()
        measured = asyncio.run(_measure(url, model, repeats))
    for name, rate in measured["rates"].items():
        print(f"    {name:22} {rate:6.1f} tok/s", flush=True)
    return {"model": SMOLLM2.key, "tokens": measured["tokens"], "repeats": repeats, "decode_tps": measured["rates"],
            "date": time.strftime("%Y-%m-%d %H:%M")}


def _ratio(results: dict) -> float:
    rates = results["decode_tps"]
    return rates[SDK] / rates[REST]


def lines(results: dict | None) -> list[str]:
    """The report's section (bench/report.py)."""
    if not results:
        return ["## LM Studio SDK protocol", "", "Not measured yet (`python -m bench.sdk`).", ""]
    rates = results["decode_tps"]
    return ["## LM Studio SDK protocol", "",
            f"{results['model']} on studiolo (bench/sdk.py, measured {results['date']}, median of "
            f"{results['repeats']}): single-stream decode of {results['tokens']} greedy tokens, the same chat "
            "streamed as a `predict` channel on the `/llm` WebSocket and over REST, in turns.", "",
            "| route | tok/s |", "| --- | --- |",
            *(f"| {name if name == SDK else f'`{name}`'} | {rate:.1f} |" for name, rate in rates.items()),
            "", f"The SDK protocol decodes at {_ratio(results):.2f}x `{REST}`.", ""]


def targets(results: dict | None) -> list[tuple[str, str, bool | None]]:
    if not results:
        return []
    ratio = _ratio(results)
    return [(f"LM Studio SDK: streamed predict decode >= {TARGET}x {REST}", f"{ratio:.2f}x", ratio >= TARGET)]


def main() -> None:
    from bench import report

    report.run_section_alone(__doc__, "sdk", measure, lines, targets)


if __name__ == "__main__":
    main()
