"""Decisions throughput: questions per second for 1, 16 and 64 yes/no questions about one ~500-token
input, asked in one ``POST /v1/decisions`` request, next to asking each question in a
``/v1/chat/completions`` request of its own with BladeLLM's ``guided_choice`` (``["yes", "no"]``, greedy,
the requests sent together).

One studiolo server with SmolLM2. ``/v1/decisions`` prefills the input once and scores every question's
labels from its cells (service/decisions.py); the chat requests each carry input and question in their
user message, so they share the input only through the prefix cache. Each size is asked in turns on
the two routes, the order swapped each round; a fresh input per round keeps the first question of a
round from finding its input cached. The figure is questions over the request's (or the batch of
requests') wall time, the median over rounds.

    python -m bench.decisions [--repeats N] [--print-only]

`make bench` runs it after the other figures; run alone, it merges into bench/results/latest.json
(or, without one, replaces its own section of docs/BENCHMARKS.md) and rewrites the report.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import httpx

from bench.config import BenchConfig
from bench.embeddings import sentences

SIZES = (1, 16, 64)
INPUT_WORDS = 380  # about 500 SmolLM2 tokens once rendered
TOPICS = ("a train", "bread", "a parrot", "a river", "a library", "a bridge", "water prices", "maps", "a bug",
          "eggs", "kites", "a lighthouse", "spices", "an orchestra", "a tower", "a cat")


def questions(count: int) -> list[str]:
    return [f"Does the text mention {TOPICS[i % len(TOPICS)]} (question {i + 1})?" for i in range(count)]


def make_input(round_: int) -> str:
    text = " ".join(sentences(40, (20, 40), seed=round_))
    return " ".join(text.split()[:INPUT_WORDS])


async def _decisions(http: httpx.AsyncClient, model: str, text: str, asked: list[str]) -> float:
    body = {"model": model, "input": text,
            "questions": [{"type": "predicate", "instructions": q} for q in asked]}
    started = time.perf_counter()
    response = await http.post("/v1/decisions", json=body)
    seconds = time.perf_counter() - started
    answers = response.json().get("answers") if response.status_code == 200 else None
    if answers is None or len(answers) != len(asked):
        raise RuntimeError(f"/v1/decisions: HTTP {response.status_code}: {response.text[:300]}")
    return len(asked) / seconds


async def _guided(http: httpx.AsyncClient, model: str, text: str, asked: list[str]) -> float:
    async def one(question: str) -> None:
        body = {"model": model, "messages": [{"role": "user", "content": f"{text}\n\n{question}"}],
                "guided_choice": ["yes", "no"], "max_tokens": 4, "temperature": 0}
        response = await http.post("/v1/chat/completions", json=body)
        content = response.json()["choices"][0]["message"]["content"] if response.status_code == 200 else None
        if content not in ("yes", "no"):
            raise RuntimeError(f"/v1/chat/completions: HTTP {response.status_code}: {response.text[:300]}")

    started = time.perf_counter()
    await asyncio.gather(*(one(question) for question in asked))
    return len(asked) / (time.perf_counter() - started)


ROUTES = {"/v1/decisions": _decisions, "/v1/chat/completions guided_choice": _guided}


async def _measure(url: str, model: str, repeats: int) -> dict[str, dict[str, float]]:
    rates: dict[str, dict[int, list[float]]] = {route: {size: [] for size in SIZES} for route in ROUTES}
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        for ask in ROUTES.values():  # loads the model, warms both routes
            await ask(http, model, make_input(10_000), questions(2))
        for round_ in range(repeats):
            order = list(ROUTES) if round_ % 2 == 0 else list(ROUTES)[::-1]
            for size in SIZES:
                for index, route in enumerate(order):
                    text = make_input(round_ * 100 + size * 2 + index)
                    rates[route][size].append(await ROUTES[route](http, model, text, questions(size)))
    return {route: {str(size): statistics.median(values) for size, values in per.items()}
            for route, per in rates.items()}


def measure(config: BenchConfig, logs: Path, repeats: int) -> dict:
    from bench.servers import studiolo
    from studiolo.models.defaults import SMOLLM2, target_path

    logs.mkdir(parents=True, exist_ok=True)
    with studiolo(SMOLLM2.key, target_path(SMOLLM2), config, logs) as (url, model):
        rates = asyncio.run(_measure(url, model, repeats))
    for route, per in rates.items():
        print(f"    {route:36} " + ", ".join(f"{size}: {rate:6.1f} q/s" for size, rate in per.items()), flush=True)
    return {"model": SMOLLM2.key, "input_words": INPUT_WORDS, "repeats": repeats, "questions_per_s": rates,
            "date": time.strftime("%Y-%m-%d %H:%M")}


def lines(results: dict | None) -> list[str]:
    """The report's section (bench/report.py)."""
    heading = "## Decisions"
    if not results:
        return [heading, "", "Not measured yet (`python -m bench.decisions`).", ""]
    rates = results["questions_per_s"]
    sizes = list(next(iter(rates.values())))
    return [heading, "",
            f"{results['model']} on studiolo (bench/decisions.py, measured {results['date']}, median of "
            f"{results['repeats']}): yes/no questions about one input of about 500 tokens, in one "
            "`/v1/decisions` request, or one `/v1/chat/completions` request with `guided_choice` per question "
            "(sent together).", "",
            "| route | " + " | ".join(f"{size} questions" for size in sizes) + " |",
            "| --- |" + " --- |" * len(sizes),
            *(f"| `{route}` | " + " | ".join(f"{per[size]:.1f} q/s" for size in sizes) + " |"
              for route, per in rates.items()), ""]


def targets(results: dict | None) -> list[tuple[str, str, bool | None]]:
    if not results:
        return []
    rates = results["questions_per_s"]
    ours, theirs = rates["/v1/decisions"], rates["/v1/chat/completions guided_choice"]
    ratios = {size: ours[size] / theirs[size] for size in ours}
    return [("decisions: questions/s >= 1.0x one guided_choice chat request per question",
             ", ".join(f"{size}: {ratio:.2f}x" for size, ratio in ratios.items()), min(ratios.values()) >= 1.0)]


def main() -> None:
    from bench import report

    report.run_section_alone(__doc__, "decisions", measure, lines, targets)


if __name__ == "__main__":
    main()
