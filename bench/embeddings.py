"""Embeddings throughput: requests of 1, 16 and 64 inputs to ``POST /v1/embeddings`` (OpenAI's shape,
``encoding_format`` float), one request at a time, on the default embedding model (all-MiniLM-L6-v2).

The inputs are sentences of 30-60 words drawn deterministically from a fixed list of clauses, the
same for every server and batch size (neither server caches embeddings: a BERT model keeps no KV
cells, every request is a full forward pass). Each run sends ``embedding_inputs`` of them at each
batch size to each server, in turns; the figure is inputs per second (inputs over the summed time of
the requests, each from sending to the last byte of its body), the median over runs.

- studiolo: ``studiolo server start`` with the model in its catalog; its EmbeddingEngine packs up to
  64 inputs and 2,048 tokens into one forward pass.
- llama-server: the same GGUF with ``--embedding --pooling mean``, 64 slots and a batch and ubatch of
  2,048 tokens, so that it too can put a 64-input request into one pass (bench/servers.py).

Every response is checked: as many vectors as inputs, each of the model's 384 dimensions and unit
length; and the two servers' vectors for every input must agree (cosine > 0.99), as must each
server's own vectors for one input at different batch sizes. A mismatch stops the run.

    python -m bench.embeddings [--repeats N] [--inputs N] [--print-only]

starts both servers, measures, prints the figures and, unless ``--print-only``, puts them into
bench/results/latest.json and rewrites docs/BENCHMARKS.md from it (the rest of the report
unchanged). ``make bench`` measures it once, after the chat models (bench/run.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from bench.config import BenchConfig
from bench.targets import HTTPTarget, _SSEReader

EMBEDDING_SERVERS = ("studiolo", "llama-server")
DIMENSIONS = 384  # all-MiniLM-L6-v2
MIN_COSINE = 0.99

_CLAUSES = (
    "the morning train was late again because of leaves on the line",
    "a small bakery on the corner sells bread that is still warm at seven",
    "my neighbour has been teaching her parrot to whistle an old folk song",
    "the river rose overnight and covered the footpath near the mill",
    "students in the library kept their voices low as the exam drew near",
    "the new bridge was painted a bright shade of green last summer",
    "a committee met to discuss the price of water for local farms",
    "the museum opened a room of maps drawn by sailors long ago",
    "our team fixed a bug that made the server crash on long inputs",
    "the recipe asks for two eggs, a cup of flour and a pinch of salt",
    "clouds gathered over the hills while the children flew their kites",
    "the old lighthouse keeper wrote a letter every week to his sister",
    "a quiet street market sells spices, fabric and secondhand books",
    "the orchestra rehearsed the slow movement until it sounded right",
    "engineers measured how much the tower swayed in a strong wind",
    "the cat slept in a patch of sunlight on the kitchen floor",
    "a volunteer group planted three hundred trees along the motorway",
    "the doctor advised more sleep, less coffee and a daily walk",
    "astronomers found a faint comet moving slowly past the moon",
    "the football match was postponed after heavy snow fell at noon",
    "a startup built an app that helps people share unused garden tools",
    "the village hall needs a new roof before the winter storms arrive",
    "my grandfather still repairs radios with a soldering iron and patience",
    "the ferry to the island runs twice a day when the sea is calm",
    "researchers compared three ways to store energy from solar panels",
    "the poet read her new work to a crowded room above the pub",
    "a lost dog was found sleeping under a bench at the station",
    "prices at the petrol station rose for the fourth week running",
)
_JOINS = (", and ", "; ", ", while ", ", but ", ". Meanwhile ", ", because ")


def sentences(count: int, words: tuple[int, int], seed: int = 30) -> list[str]:
    """``count`` distinct sentences of ``words`` (low, high) words, the same every time."""
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < count:
        length = rng.randint(*words)
        text = rng.choice(_CLAUSES)
        while len(text.split()) < length:
            text += rng.choice(_JOINS) + rng.choice(_CLAUSES)
        text = " ".join(text.split()[:length]).rstrip(",;.") + "."
        text = text[0].upper() + text[1:]
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


class _Body(_SSEReader):
    """The whole response body (chunked framing undone); no events."""

    def feed(self, data: bytes) -> list[str]:
        if self._chunked:
            self._raw += data
            data = self._dechunk()
        self._body += data
        return []

    def json(self) -> dict:
        return json.loads(self._body)


async def embed(target: HTTPTarget, texts: list[str]) -> tuple[float, list[np.ndarray], int]:
    """One request: (seconds from sending to the body's last byte, the vectors in input order, the
    prompt tokens the server reports). Raises unless it is one unit vector of DIMENSIONS per input."""
    payload = {"model": target.model, "input": texts, "encoding_format": "float"}
    started = time.perf_counter()
    _, body = await target.stream("/v1/embeddings", payload, _Body)
    seconds = time.perf_counter() - started
    response = body.json()
    data = sorted(response["data"], key=lambda item: item["index"])
    if [item["index"] for item in data] != list(range(len(texts))):
        raise RuntimeError(f"{target.name}: {len(data)} embeddings for {len(texts)} inputs")
    vectors = [np.asarray(item["embedding"], dtype=np.float64) for item in data]
    for index, vector in enumerate(vectors):
        if vector.shape != (DIMENSIONS,):
            raise RuntimeError(f"{target.name}: input {index}: {vector.shape[0]} dimensions, not {DIMENSIONS}")
        norm = float(np.linalg.norm(vector))
        if abs(norm - 1) > 1e-3:
            raise RuntimeError(f"{target.name}: input {index}: a vector of norm {norm:.4f}, not 1")
    return seconds, vectors, (response.get("usage") or {}).get("prompt_tokens", 0)


async def throughput(target: HTTPTarget, texts: list[str], batch: int) -> tuple[float, list[np.ndarray], int]:
    """Inputs per second over ``texts`` sent ``batch`` at a time, one request after another;
    also every vector, and the prompt tokens reported."""
    seconds, vectors, tokens = 0.0, [], 0
    for start in range(0, len(texts), batch):
        spent, got, counted = await embed(target, texts[start : start + batch])
        seconds += spent
        vectors += got
        tokens += counted
    return len(texts) / seconds, vectors, tokens


def _agreement(vectors: dict[tuple[str, int], np.ndarray], texts: list[str]) -> float:
    """The least cosine between any two vectors of one input (servers and batch sizes); raises if
    any is below MIN_COSINE, naming the pair."""
    keys = sorted(vectors)
    stacked = {key: np.stack(vectors[key]) for key in keys}
    least = 1.0
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            cosines = np.sum(stacked[a] * stacked[b], axis=1)  # unit vectors
            worst = int(np.argmin(cosines))
            if cosines[worst] <= MIN_COSINE:
                raise RuntimeError(f"embeddings disagree: {a[0]} at batch {a[1]} against {b[0]} at batch {b[1]}, "
                                   f"cosine {cosines[worst]:.4f} for input {worst}: {texts[worst]!r}")
            least = min(least, float(cosines[worst]))
    return least


async def measure(targets: dict[str, HTTPTarget], config: BenchConfig, repeats: int) -> dict:
    """{"servers": {name: {"embedding_inputs_per_s": {batch: median}}}, "min_cosine", "inputs",
    "mean_tokens"}: every batch size, every server in turns, ``repeats`` runs."""
    texts = sentences(config.embedding_inputs, config.embedding_words)
    for target in targets.values():  # warm-up: a load on first use (studiolo), graph allocation
        for batch in config.embedding_batches:
            await embed(target, texts[:batch])
    rates: dict[str, dict[int, list[float]]] = {name: {b: [] for b in config.embedding_batches} for name in targets}
    vectors: dict[tuple[str, int], list[np.ndarray]] = {}
    tokens: dict[str, int] = {}
    for run in range(repeats):
        for batch in config.embedding_batches:
            for name, target in targets.items():
                rate, got, counted = await throughput(target, texts, batch)
                rates[name][batch].append(rate)
                vectors.setdefault((name, batch), got)
                tokens[name] = counted
                print(f"    run {run + 1}, batch {batch:>2}: {name} {rate:,.1f} inputs/s", flush=True)
        if run == 0:
            least = _agreement(vectors, texts)
            print(f"    vectors agree across servers and batch sizes: least cosine {least:.5f}", flush=True)
    return {
        "servers": {name: {"embedding_inputs_per_s": {str(b): statistics.median(r) for b, r in per.items()}}
                    for name, per in rates.items()},
        "min_cosine": least,
        "inputs": len(texts),
        "mean_words": statistics.mean(len(text.split()) for text in texts),
        "mean_tokens": {name: counted / len(texts) for name, counted in tokens.items()},
        "repeats": repeats,
    }


def bench_embeddings(config: BenchConfig, logs: Path, repeats: int | None = None) -> dict:
    """studiolo and llama-server on the embedding model, both up at once (the idle one sleeps), measured in turns."""
    from bench.config import embedding_model
    from bench.servers import llama_server_embeddings, studiolo

    key, path = embedding_model()
    starters = {"studiolo": studiolo, "llama-server": llama_server_embeddings}
    with ExitStack() as stack:
        targets = {}
        for name in EMBEDDING_SERVERS:
            print(f"  starting {name} ...", flush=True)
            url, model_name = stack.enter_context(starters[name](key, path, config, logs))
            targets[name] = HTTPTarget(name, url, model_name, [])
        measured = asyncio.run(measure(targets, config, repeats or config.repeats))
    return {"model": key, "file_bytes": path.stat().st_size, "words": list(config.embedding_words),
            "llama_server_slots": config.embedding_slots, "batch_tokens": config.embedding_batch_tokens, **measured}


def main() -> None:
    from bench import report
    from bench.run import RESULTS, ROOT

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=BenchConfig().repeats)
    parser.add_argument("--inputs", type=int, default=BenchConfig().embedding_inputs, help="per batch size and run")
    parser.add_argument("--print-only", action="store_true", help="leave latest.json and the report alone")
    parser.add_argument("--report", type=Path, default=ROOT / "docs" / "BENCHMARKS.md")
    args = parser.parse_args()
    config = BenchConfig(embedding_inputs=args.inputs)
    logs = RESULTS / "embeddings"
    logs.mkdir(parents=True, exist_ok=True)
    print("embeddings:", flush=True)
    embeddings = bench_embeddings(config, logs, args.repeats)
    embeddings["run"] = {"date": time.strftime("%Y-%m-%d %H:%M"), "by": "python -m bench.embeddings"}
    for name, figures in embeddings["servers"].items():
        rates = ", ".join(f"batch {b} {r:,.1f}" for b, r in figures["embedding_inputs_per_s"].items())
        print(f"  {name} (inputs/s, median of {args.repeats}): {rates}", flush=True)
    ratios = report.embedding_ratios(embeddings)
    print("  studiolo / llama-server: " + ", ".join(f"batch {b} {r:.2f}x" for b, r in ratios.items()), flush=True)

    if not args.print_only:  # measured apart from the rest of the report
        report.merge_into_latest(RESULTS, args.report, lambda results: results.update(embeddings=embeddings))


if __name__ == "__main__":
    main()
