"""Speculative decoding on Qwen2.5-Coder-1.5B-Instruct, next to llama-server on the same GGUFs.

Three workloads, sent as streamed chat completions, greedy, each ending where the model ends it:

- a code edit: a ~300-token module in the prompt, asked back with one function renamed (the
  case Predicted Outputs is for: most of the answer is in the prompt);
- free prose: a short story;
- JSON: a list of records.

Single-stream decode speed (tokens after the first over the time after the first) for each way of
drafting: none, the 0.5B model drafting (`draft_model`), n-gram lookup (`draft_model: "ngram"`),
and, on the code edit, the original module as the prediction. llama-server runs three times, with
no drafting, with the 0.5B as its draft model (`-md`, its own default draft settings), and with its
n-gram drafting (`--spec-type ngram-simple`); it has no Predicted Outputs. Then eight prose streams
at once, with drafting and without, on studiolo: the aggregate must not fall, since speculation
steps back when many sequences decode together.

    python -m bench.speculative [--repeats N] [--print-only]

`make bench` runs it after the other figures; run alone, it merges into bench/results/latest.json
and rewrites docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from bench.config import BenchConfig
from bench.targets import HTTPTarget, _SSEReader

STREAMS = 8  # the aggregate figure's concurrency
AGGREGATE_TOKENS = 96  # per stream
MAX_TOKENS = 400
SYSTEM = "You are a careful coding assistant."

CODE = '''import csv
from dataclasses import dataclass


@dataclass
class Item:
    name: str
    price: float
    quantity: int


def load_items(path):
    items = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            items.append(Item(row["name"], float(row["price"]), int(row["quantity"])))
    return items


def compute_total(items, tax_rate=0.2, discount=0.0):
    subtotal = sum(item.price * item.quantity for item in items)
    discounted = subtotal * (1 - discount)
    return round(discounted * (1 + tax_rate), 2)


def cheapest(items):
    return min(items, key=lambda item: item.price) if items else None


def report(path, tax_rate=0.2):
    items = load_items(path)
    total = compute_total(items, tax_rate)
    lowest = cheapest(items)
    lines = [f"{len(items)} items, total {total:.2f}"]
    if lowest is not None:
        lines.append(f"cheapest: {lowest.name} at {lowest.price:.2f}")
    return "\\n".join(lines)
'''

WORKLOADS = {
    "code edit": (f"Here is a Python module:\n\n```python\n{CODE}```\n\nRename the function `compute_total` to "
                  "`calculate_total` everywhere in it. Reply with the whole module in one code block, nothing else."),
    "prose": "Write a short story, about four paragraphs, about a lighthouse keeper who finds a message in a bottle.",
    "JSON": ("Reply with a JSON array of 8 fictional employees, each an object with the keys name, age, department, "
             "email and start_date. Only the JSON, no other text."),
}
PREDICTION = f"```python\n{CODE}```"


@dataclass
class Run:
    decode_tps: float
    tokens: int
    drafted: int | None = None
    accepted: int | None = None


class _Chunks(_SSEReader):
    """Chat completion chunks: the content; the usage, and the draft counts where a server gives them
    (studiolo's /api/v0 stats, llama-server's timings)."""

    tokens = 0
    drafted: int | None = None
    accepted: int | None = None

    def _text(self, event: bytes) -> str | None:
        if not event.startswith(b"data: {"):
            return None
        payload = json.loads(event[6:])
        if payload.get("usage"):
            self.tokens = payload["usage"].get("completion_tokens", 0)
        stats, timings = payload.get("stats") or {}, payload.get("timings") or {}
        if "total_draft_tokens_count" in stats:
            self.drafted, self.accepted = stats["total_draft_tokens_count"], stats["accepted_draft_tokens_count"]
        if "draft_n" in timings:
            self.drafted, self.accepted = timings["draft_n"], timings.get("draft_n_accepted", 0)
        choices = payload.get("choices") or []
        return (choices[0].get("delta") or {}).get("content") if choices else None


async def _chat(target: HTTPTarget, path: str, prompt: str, extra: dict, max_tokens: int = MAX_TOKENS) -> Run:
    payload = {"model": target.model, "stream": True, "stream_options": {"include_usage": True},
               "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
               "max_tokens": max_tokens, "temperature": 0, "top_k": 1, "repeat_penalty": 1.0, "seed": 7, **extra}
    timing, chunks = await target.stream(path, payload, _Chunks)
    tokens = chunks.tokens or timing.tokens
    rate = (tokens - 1) / (timing.last - timing.first) if tokens > 1 and timing.last > timing.first else 0.0
    return Run(rate, tokens, chunks.drafted, chunks.accepted)


async def _aggregate(target: HTTPTarget, path: str, extra: dict) -> float:
    prompt = WORKLOADS["prose"]
    started = time.perf_counter()
    runs = await asyncio.gather(*(_chat(target, path, f"{prompt} Story {i + 1}.", extra, AGGREGATE_TOKENS)
                                  for i in range(STREAMS)))
    return sum(run.tokens for run in runs) / (time.perf_counter() - started)


def _median_run(runs: list[Run]) -> dict:
    middle = sorted(runs, key=lambda run: run.decode_tps)[len(runs) // 2]
    figures = {"decode_tps": statistics.median(run.decode_tps for run in runs), "tokens": middle.tokens}
    if middle.drafted is not None:
        figures["drafted"], figures["accepted"] = middle.drafted, middle.accepted
    return figures


async def _measure(target: HTTPTarget, path: str, modes: dict[str, dict], repeats: int,
                   aggregate_modes: tuple[str, ...]) -> dict:
    results: dict = {}
    for mode, extra in modes.items():
        await _chat(target, path, "Say hello.", extra, 8)  # loads a draft model, warms the caches
        for workload, prompt in WORKLOADS.items():
            if mode == "prediction" and workload != "code edit":
                continue
            runs = [await _chat(target, path, prompt, extra) for _ in range(repeats)]
            results.setdefault(workload, {})[mode] = figures = _median_run(runs)
            print(f"    {mode:10} {workload:9} {figures['decode_tps']:6.1f} tok/s, {figures['tokens']} tokens"
                  + (f", {figures['accepted']}/{figures['drafted']} drafts accepted" if "drafted" in figures else ""),
                  flush=True)
        if mode in aggregate_modes:
            rates = [await _aggregate(target, path, extra) for _ in range(repeats)]
            results.setdefault(f"aggregate {STREAMS} streams", {})[mode] = {"aggregate_tps": statistics.median(rates)}
            print(f"    {mode:10} {STREAMS} streams {statistics.median(rates):6.1f} tok/s", flush=True)
    return results


def measure(config: BenchConfig, logs: Path, repeats: int) -> dict:
    from bench.servers import llama_server, studiolo
    from studiolo.models.defaults import QWEN05, QWEN15, target_path

    target_key, target_file = QWEN15.key, target_path(QWEN15)
    draft_key, draft_file = QWEN05.key, target_path(QWEN05)
    results: dict = {"target": target_key, "draft": draft_key, "repeats": repeats, "servers": {}}
    print("  studiolo ...", flush=True)
    with studiolo(target_key, target_file, config, logs, {draft_key: draft_file}) as (url, model):
        modes = {"off": {"draft_model": "none"}, "draft model": {"draft_model": draft_key},
                 "ngram": {"draft_model": "ngram"},
                 "prediction": {"draft_model": "none", "prediction": {"type": "content", "content": PREDICTION}}}
        target = HTTPTarget("studiolo", url, model, [])
        results["servers"]["studiolo"] = asyncio.run(
            _measure(target, "/api/v0/chat/completions", modes, repeats, ("off", "draft model", "ngram")))
    server: dict = {}
    for mode, flags in {"off": [], "draft model": ["--draft-model", str(draft_file)], "ngram": ["--ngram"]}.items():
        print(f"  llama-server ({mode}) ...", flush=True)
        with llama_server(target_key, target_file, config, logs, flags) as (url, model):
            measured = asyncio.run(_measure(HTTPTarget("llama-server", url, model, []), "/v1/chat/completions",
                                            {mode: {}}, repeats, ()))
        for workload, by_mode in measured.items():
            server.setdefault(workload, {}).update(by_mode)
    results["servers"]["llama-server"] = server
    results["date"] = time.strftime("%Y-%m-%d %H:%M")
    return results


def lines(results: dict | None) -> list[str]:
    """The report's section (bench/report.py)."""
    if not results:
        return ["## Speculative decoding", "", "Not measured yet (`python -m bench.speculative`).", ""]
    ours, theirs = results["servers"]["studiolo"], results["servers"].get("llama-server", {})
    out = ["## Speculative decoding", "",
           f"{results['target']} with {results['draft']} as the draft model (bench/speculative.py, measured "
           f"{results['date']}, median of {results['repeats']}): single-stream decode, tok/s, greedy chat "
           "completions that end where the model ends them. Speed-up: over the same server without drafting. "
           "Drafts: accepted of drafted, in the median run.", "",
           "| workload | drafting | studiolo | speed-up | drafts | llama-server | speed-up | drafts "
           "| vs llama-server |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for workload in WORKLOADS:
        base = ours[workload]["off"]["decode_tps"]
        peer_base = theirs.get(workload, {}).get("off", {}).get("decode_tps")
        for mode, figures in ours[workload].items():
            peer = theirs.get(workload, {}).get(mode)
            rate, peer_rate = figures["decode_tps"], peer["decode_tps"] if peer else None
            out.append(f"| {workload} | {mode} | {rate:.1f} | {rate / base:.2f}x | {_drafts(figures)} | "
                       + (f"{peer_rate:.1f} | {peer_rate / peer_base:.2f}x | {_drafts(peer)} | {rate / peer_rate:.2f} |"
                          if peer_rate and peer_base else "n/a | | | |"))
    aggregate = ours.get(f"aggregate {STREAMS} streams", {})
    if aggregate:
        off = aggregate["off"]["aggregate_tps"]
        out += ["", f"{STREAMS} prose streams at once on studiolo, aggregate tok/s: without drafting {off:.1f}; "
                + "; ".join(f"{mode} {f['aggregate_tps']:.1f} ({f['aggregate_tps'] / off:.2f}x)"
                            for mode, f in aggregate.items() if mode != "off") + "."]
    return out + [""]


# issue 18's targets: (workload, drafting, least speed-up over no drafting)
SPEED_UPS = (("code edit", "draft model", 1.5), ("code edit", "ngram", 1.5), ("code edit", "prediction", 3.0))


def targets(results: dict | None) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for the report's Targets table."""
    if not results:
        return []
    ours, theirs = results["servers"]["studiolo"], results["servers"].get("llama-server", {})
    checks: list[tuple[str, str, bool | None]] = []
    for workload, mode, least in SPEED_UPS:
        ratio = ours[workload][mode]["decode_tps"] / ours[workload]["off"]["decode_tps"]
        checks.append((f"speculative: {mode} on the {workload} >= {least}x without drafting", f"{ratio:.2f}x",
                       ratio >= least))
    ratios = {f"{workload}, {mode}": figures["decode_tps"] / theirs[workload][mode]["decode_tps"]
              for workload, by_mode in ours.items() if workload in WORKLOADS
              for mode, figures in by_mode.items() if mode != "off" and mode in theirs.get(workload, {})}
    if ratios:
        checks.append(("speculative: every drafting figure >= 1.0x llama-server's",
                       ", ".join(f"{k}: {v:.2f}x" for k, v in ratios.items()), min(ratios.values()) >= 1.0))
    aggregate = ours.get(f"aggregate {STREAMS} streams", {})
    for mode, figures in aggregate.items():
        if mode != "off":
            ratio = figures["aggregate_tps"] / aggregate["off"]["aggregate_tps"]
            checks.append((f"speculative: {STREAMS} streams with {mode} >= 0.95x without", f"{ratio:.2f}x",
                           ratio >= 0.95))
    return checks


def _drafts(figures: dict | None) -> str:
    return f"{figures['accepted']}/{figures['drafted']}" if figures and figures.get("drafted") else ""


def main() -> None:
    from bench import report
    from bench.run import RESULTS, ROOT

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=BenchConfig().repeats)
    parser.add_argument("--print-only", action="store_true", help="leave latest.json and the report alone")
    parser.add_argument("--report", type=Path, default=ROOT / "docs" / "BENCHMARKS.md")
    args = parser.parse_args()
    logs = RESULTS / "speculative"
    logs.mkdir(parents=True, exist_ok=True)
    results = measure(BenchConfig(), logs, args.repeats)
    print("\n".join(lines(results)), flush=True)
    if not args.print_only:
        report.merge_into_latest(RESULTS, args.report, lambda latest: latest.update(speculative=results))


if __name__ == "__main__":
    main()
