"""Stateful chat: a 10-turn conversation of fixed ~60-token user messages, answers of at most 64
tokens, greedy; the time to first streamed text of turns 1, 5 and 10.

- studiolo keeps the conversation: each turn sends only its new message and the previous turn's
  ``response_id`` as ``previous_response_id`` to LM Studio's ``POST /api/v1/chat``, streamed
  (named SSE events: the first ``message.delta`` is the first text, ``chat.end`` the response id).
- llama-server is stateless: each turn sends the whole history (every earlier user message and the
  server's own earlier answers) to ``/v1/chat/completions``, streamed, with its prompt cache on
  (``cache_prompt``, its default: the slot keeps the conversation's KV cells, so it too prefills only
  what it has not seen). That is the fair comparison: the best either server does with a chat.

No end-of-generation token is banned (``/api/v1/chat`` takes no logit bias), so an answer may end
before 64 tokens; both servers decode greedily with no repeat penalty. Each conversation draws
fresh messages (``Prompts``: deterministic, a new opening each), so no run reuses another's cache.

    python -m bench.stateful [--models KEY ...] [--repeats N] [--print-only]

starts studiolo and llama-server on each default model (bench/servers.py), measures them in turns,
prints the figures and, unless ``--print-only``, puts them into bench/results/latest.json and
rewrites docs/BENCHMARKS.md from it (the rest of the report unchanged). ``make bench`` measures it
with everything else (bench/workloads.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from contextlib import ExitStack
from pathlib import Path

from bench.config import BenchConfig, Prompts
from bench.targets import HTTPTarget, Timing, _SSEReader

# The servers with a way to keep a chat: studiolo's stateful endpoint, llama-server's prompt cache.
STATEFUL_SERVERS = ("studiolo", "llama-server")

_MESSAGE = (
    "Please answer in a few sentences. I keep a notebook of small things I notice at home: the kettle "
    "boils sooner with its lid on, bread rises slowly in winter, and the cat sleeps wherever the sun "
    "falls in the afternoon. What could explain one of these? "
)


class _ChatEvents(_SSEReader):
    """LM Studio's named events: the text of ``message.delta``; ``chat.end`` gives the response id."""

    response_id: str | None = None
    prompt_tokens: int = 0

    def _text(self, event: bytes) -> str | None:
        data = next((line[6:] for line in event.split(b"\n") if line.startswith(b"data: ")), None)
        if data is None:
            return None
        payload = json.loads(data)
        kind = payload.get("type")
        if kind == "message.delta":
            return payload.get("content")
        if kind == "chat.end":
            result = payload["result"]
            self.response_id = result.get("response_id")
            self.prompt_tokens = result.get("stats", {}).get("input_tokens", 0)
        elif kind == "error":
            raise RuntimeError(f"studiolo: error event: {payload.get('error')}")
        return None


class _CompletionChunks(_SSEReader):
    """OpenAI chat completion chunks: the ``delta.content``; llama-server's ``timings`` on the last."""

    prompt_tokens: int = 0
    cached_tokens: int = 0

    def _text(self, event: bytes) -> str | None:
        if not event.startswith(b"data: {"):
            return None
        payload = json.loads(event[6:])
        timings = payload.get("timings")
        if timings:  # llama-server: prompt_n tokens prefilled, cache_n taken from the slot's cache
            self.prompt_tokens = timings.get("prompt_n", 0) + timings.get("cache_n", 0)
            self.cached_tokens = timings.get("cache_n", 0)
        choices = payload.get("choices") or []
        return (choices[0].get("delta") or {}).get("content") if choices else None


def messages(prompts: Prompts, config: BenchConfig) -> list[str]:
    """One conversation's user messages: ``stateful_message_tokens`` each, a fresh opening each."""
    return [prompts.of_length(config.stateful_message_tokens, _MESSAGE) for _ in range(config.stateful_turns)]


async def _stateful_turns(target: HTTPTarget, texts: list[str], max_tokens: int) -> list[tuple[Timing, _SSEReader]]:
    """studiolo: each turn only its message, continuing the previous turn's response."""
    turns, previous = [], None
    for text in texts:
        payload = {"model": target.model, "input": text, "stream": True, "max_output_tokens": max_tokens,
                   "temperature": 0, "repeat_penalty": 1.0}
        if previous is not None:
            payload["previous_response_id"] = previous
        timing, events = await target.stream("/api/v1/chat", payload, _ChatEvents)
        if events.response_id is None:
            raise RuntimeError(f"{target.name}: no response_id in chat.end")
        previous = events.response_id
        turns.append((timing, events))
    return turns


async def _history_turns(target: HTTPTarget, texts: list[str], max_tokens: int) -> list[tuple[Timing, _SSEReader]]:
    """llama-server: each turn the whole history, its own answers included; its prompt cache left on."""
    turns, history = [], []
    for text in texts:
        history.append({"role": "user", "content": text})
        payload = {"model": target.model, "messages": history, "stream": True, "max_tokens": max_tokens,
                   "temperature": 0, "repeat_penalty": 1.0}
        timing, events = await target.stream("/v1/chat/completions", payload, _CompletionChunks)
        history.append({"role": "assistant", "content": timing.text})
        turns.append((timing, events))
    return turns


_CONVERSE = {"studiolo": _stateful_turns, "llama-server": _history_turns}
_warmed: set[int] = set()


async def conversation(target: HTTPTarget, prompts: Prompts, config: BenchConfig) -> dict:
    """One conversation: {"ttft_s": {turn: seconds}, "prompt_tokens": the last turn's prompt,
    "cached_tokens": of it, taken from the server's cache (llama-server only), "reply_tokens": [...]}."""
    converse = _CONVERSE[target.name]
    if id(target) not in _warmed:  # the endpoint's one-off costs (a response store, a template) first
        await converse(target, ["Hello.", "And again."], 4)
        _warmed.add(id(target))
    turns = await converse(target, messages(prompts, config), config.stateful_reply_tokens)
    for number, (timing, _) in enumerate(turns, 1):
        if not timing.first:
            raise RuntimeError(f"{target.name}: turn {number} streamed no text")
    last = turns[-1][1]
    return {
        "ttft_s": {str(turn): turns[turn - 1][0].ttft for turn in config.stateful_measured},
        "prompt_tokens": last.prompt_tokens,
        "cached_tokens": getattr(last, "cached_tokens", None),
        "reply_pieces": [timing.tokens for timing, _ in turns],  # text events: about a token each
    }


def summarise(runs: list[dict]) -> dict:
    """Medians over conversations, as the rest of the figures are."""
    median = statistics.median
    figures = {
        "stateful_ttft_s": {turn: median(run["ttft_s"][turn] for run in runs) for turn in runs[0]["ttft_s"]},
        "stateful_prompt_tokens": int(median(run["prompt_tokens"] for run in runs)),
    }
    if runs[0]["cached_tokens"] is not None:
        figures["stateful_cached_tokens"] = int(median(run["cached_tokens"] for run in runs))
    return figures


async def _measure(targets: dict[str, HTTPTarget], prompts: dict[str, Prompts], config: BenchConfig,
                   repeats: int) -> dict[str, dict]:
    runs: dict[str, list[dict]] = {name: [] for name in targets}
    for _ in range(repeats):
        for name, target in targets.items():  # in turns, as bench/workloads.py measures
            run = await conversation(target, prompts[name], config)
            runs[name].append(run)
            cached = f" ({run['cached_tokens']} cached)" if run["cached_tokens"] is not None else ""
            print(f"    {name}: " + ", ".join(f"turn {t} {s * 1000:.0f} ms" for t, s in run["ttft_s"].items())
                  + f"; last prompt {run['prompt_tokens']} tokens{cached}; answers {run['reply_pieces']}", flush=True)
    return {name: summarise(samples) for name, samples in runs.items()}


def main() -> None:
    from bench import report
    from bench.config import end_of_generation_tokens, model_paths
    from bench.run import RESULTS, ROOT
    from bench.servers import SERVERS
    from studiolo.engine.llama import LlamaModel

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--repeats", type=int, default=BenchConfig().repeats)
    parser.add_argument("--print-only", action="store_true", help="leave latest.json and the report alone")
    parser.add_argument("--report", type=Path, default=ROOT / "docs" / "BENCHMARKS.md")
    args = parser.parse_args()
    config = BenchConfig()
    paths = model_paths()
    logs = RESULTS / "stateful"
    logs.mkdir(parents=True, exist_ok=True)
    measured: dict[str, dict] = {}
    for key in args.models or list(paths):
        print(f"{key}:", flush=True)
        model = LlamaModel(paths[key])
        banned = end_of_generation_tokens(model)
        with ExitStack() as stack:
            targets = {}
            for name in STATEFUL_SERVERS:
                print(f"  starting {name} ...", flush=True)
                url, model_name = stack.enter_context(SERVERS[name](key, paths[key], config, logs))
                targets[name] = HTTPTarget(name, url, model_name, banned)
            prompts = {name: Prompts(model) for name in targets}
            measured[key] = asyncio.run(_measure(targets, prompts, config, args.repeats))
        for name, figures in measured[key].items():
            ttft = ", ".join(f"turn {t} {s * 1000:.0f} ms" for t, s in figures["stateful_ttft_s"].items())
            print(f"  {name} (median of {args.repeats}): {ttft}", flush=True)

    run = {"date": time.strftime("%Y-%m-%d %H:%M"), "repeats": args.repeats}

    def merge(results: dict) -> None:
        for key, servers in measured.items():
            if key not in results["models"]:
                continue
            for name, figures in servers.items():
                results["models"][key]["servers"].setdefault(name, {}).update(figures)
            results["models"][key]["stateful_run"] = run  # measured apart from the rest of the report

    if not args.print_only:
        report.merge_into_latest(RESULTS, args.report, merge)


if __name__ == "__main__":
    main()
