"""`make soak`: a real server under a bounded soak, its resident memory sampled all along.

Starts ``studiolo server start --foreground`` on a loopback port and loads the three default
models explicitly (a just-in-time load of another model would wait for the streams of this one to
stop, as auto-evict does, and hostile cases may name any of them), then:

1. ``streams``: 64 concurrent streamed chat completions, each with its own prompt (so each leaves
   its own entry in the RAM prompt cache);
2. ``aborted``: 500 streams hung up after their first chunk, 16 at a time;
3. ``hostile``: every ``CASES`` of every ``tests/test_hostile_*.py`` module, sent with
   ``tests.hostile.check`` while 8 streams keep the model busy;
4. ``idle``: the server left alone until no sequence runs, then ``--idle`` seconds more.

It fails (exit status 1) unless: no request failed, none got a 5xx, no sequence is left running or
queued, every cache is within its budget, and after the idle wait resident memory less what the
caches hold has grown by at most ``--slack-mib`` since the server was warm (models loaded, each
used once, idle), and is under what the bare server, the models (weights, KV cache, compute
buffers at their largest) and the caches may hold. Prints a table of the phases and the figures.

    python -m tests.soak [--streams 64] [--aborted 500] [--idle 8] [--slack-mib 64]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from studiolo.models.defaults import GEMMA3, MINILM, SMOLLM2, target_path
from tests.conftest import SMOLLM, RunningServer, free_port, home_with_models
from tests.hostile import HostileCase, check

MIB = 2**20
TESTS = Path(__file__).parent
CHAT = "/v1/chat/completions"
ABORT_AFTER = 3  # tokens an aborted stream reads before it hangs up
TOPICS = ["lighthouses", "bread", "volcanoes", "chess", "rivers", "bees", "clocks", "glaciers"]


@dataclass
class Phase:
    name: str
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    server_errors: int = 0  # 5xx answers
    seconds: float = 0.0
    peak_rss: int = 0
    end_rss: int = 0


class RssSampler:
    """Reads the server's VmRSS from /proc every ``interval`` seconds, in a thread."""

    def __init__(self, pid: int, interval: float = 0.2):
        self._path = Path(f"/proc/{pid}/status")
        self._interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def rss(self) -> int:
        for line in self._path.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.samples.append(self.rss())
            except OSError:
                return  # the server is gone

    def mark(self) -> int:
        return len(self.samples)

    def peak_since(self, mark: int) -> int:
        return max(self.samples[mark:], default=0)

    def stop(self) -> None:
        self._stop.set()


def prompt(index: int, phase: str) -> str:
    """A prompt of its own (a few dozen tokens), so that every stream caches a distinct prefix."""
    topic = TOPICS[index % len(TOPICS)]
    return f"[{phase} #{index}] Tell me three short facts about {topic}, numbered, one line each, no preamble."


def chat_body(index: int, phase: str, max_tokens: int) -> dict:
    return {"model": SMOLLM, "messages": [{"role": "user", "content": prompt(index, phase)}],
            "max_tokens": max_tokens, "temperature": 0.7, "seed": index, "stream": True}


async def refused(response: httpx.Response, phase: Phase) -> bool:
    """Whether the stream was refused (then counted as an error, and as a 5xx if it was one)."""
    if response.status_code == 200:
        return False
    phase.server_errors += response.status_code >= 500
    phase.errors.append(f"{response.status_code} {(await response.aread())[:200]!r}")
    return True


async def full_stream(http: httpx.AsyncClient, body: dict, phase: Phase) -> None:
    """One stream read to its end; anything but a 200 ending in a finish reason and [DONE] is an error."""
    phase.requests += 1
    try:
        async with http.stream("POST", CHAT, json=body) as response:
            if await refused(response, phase):
                return
            lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    except httpx.HTTPError as error:
        phase.errors.append(f"{type(error).__name__}: {error}")
        return
    if not lines or lines[-1] != "data: [DONE]" or '"finish_reason":"' not in "".join(lines[-3:]).replace(" ", ""):
        phase.errors.append(f"stream ended without a finish reason and [DONE]: {lines[-2:]}")


async def aborted_stream(http: httpx.AsyncClient, body: dict, phase: Phase) -> None:
    """A stream hung up on mid-way: after its first ``ABORT_AFTER`` tokens."""
    phase.requests += 1
    tokens = 0
    try:
        async with http.stream("POST", CHAT, json=body) as response:
            if await refused(response, phase):
                return
            async for line in response.aiter_lines():
                tokens += line.startswith("data: ") and '"content":"' in line.replace(" ", "")
                if tokens >= ABORT_AFTER:
                    break
            else:
                phase.errors.append(f"stream ended after {tokens} tokens, before it could be aborted")
    except httpx.HTTPError as error:
        phase.errors.append(f"{type(error).__name__}: {error}")


async def run_streams(base_url: str, phase: Phase, count: int) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as http:
        await asyncio.gather(*(full_stream(http, chat_body(i, phase.name, 48), phase) for i in range(count)))


async def run_aborted(base_url: str, phase: Phase, count: int, concurrency: int = 16) -> None:
    indexes = iter(range(count))

    async def worker(http: httpx.AsyncClient) -> None:
        for i in indexes:
            await aborted_stream(http, {**chat_body(i, phase.name, 512), "ignore_eos": True}, phase)

    async with httpx.AsyncClient(base_url=base_url, timeout=120) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))


def hostile_cases() -> list[tuple[str, HostileCase]]:
    """Every hostile case of every tests/test_hostile_*.py module, with its module's name."""
    cases = []
    for path in sorted(TESTS.glob("test_hostile_*.py")):
        module = importlib.import_module(f"tests.{path.stem}")
        cases += [(path.stem, case) for case in getattr(module, "CASES", [])]
    return cases


def run_hostile(base_url: str, phase: Phase, background: Phase) -> None:
    """Each case through ``check`` (its status, its field, the server's health after it), beside
    8 streams looping until the cases are done."""
    done = threading.Event()

    async def load() -> None:
        async with httpx.AsyncClient(base_url=base_url, timeout=600) as http:
            async def loop(worker: int) -> None:
                index = 0
                while not done.is_set():
                    await full_stream(http, chat_body(worker * 10_000 + index, "load", 32), background)
                    index += 1
            await asyncio.gather(*(loop(worker) for worker in range(8)))

    loader = threading.Thread(target=lambda: asyncio.run(load()), daemon=True)
    loader.start()

    def count_5xx(response: httpx.Response) -> None:
        phase.server_errors += response.status_code >= 500

    try:
        with httpx.Client(base_url=base_url, timeout=120, event_hooks={"response": [count_5xx]}) as http:
            for module, case in hostile_cases():
                phase.requests += 1
                try:
                    check(http, case)
                except (AssertionError, httpx.HTTPError) as error:
                    phase.errors.append(f"{module}::{case.name}: {type(error).__name__}: {str(error)[:300]}")
    finally:
        done.set()
        loader.join(timeout=600)


def figures(base_url: str) -> dict:
    response = httpx.get(f"{base_url}/studiolo/memory", timeout=10)
    response.raise_for_status()
    return response.json()


def live_sequences(report: dict) -> int:
    return sum(i["running_sequences"] + i["queued_sequences"] for i in report["instances"])


def wait_for_idle(base_url: str, seconds: float) -> dict:
    """Wait until no sequence runs or waits (at most a minute), then ``seconds`` more."""
    deadline = time.monotonic() + 60
    while live_sequences(figures(base_url)) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(seconds)
    return figures(base_url)


def caches_bytes(report: dict) -> int:
    return sum(cache["used_bytes"] for cache in report["caches"].values())


def warm_up(base_url: str, models: list[str]) -> None:
    """Bring every loaded model's buffers into use, as traffic would: a generation on each chat
    model, one scoring every token of a long prompt (the logits buffer at its largest), an embedding."""
    with httpx.Client(base_url=base_url, timeout=300) as http:
        for key in models:
            if "minilm" in key:
                answer = http.post("/v1/embeddings", json={"model": key, "input": ["warm " * 200] * 8})
            else:
                long_prompt = " ".join(f"word{n}" for n in range(400))
                answer = http.post("/v1/completions", json={"model": key, "prompt": long_prompt, "max_tokens": 8,
                                                            "echo": True, "logprobs": 1, "temperature": 0})
            answer.raise_for_status()


def mib(value: int) -> str:
    return f"{value / MIB:,.0f} MiB"


def print_summary(phases: list[Phase], start_rss: int, warm: dict, end: dict, growth: int) -> None:
    print()
    print(f"{'phase':<10} {'requests':>8} {'errors':>6} {'5xx':>4} {'seconds':>8} {'peak RSS':>10} {'end RSS':>10}")
    for p in phases:
        print(f"{p.name:<10} {p.requests:>8} {len(p.errors):>6} {p.server_errors:>4} {p.seconds:>8.1f} "
              f"{mib(p.peak_rss):>10} {mib(p.end_rss):>10}")
    print()
    print(f"resident before any model: {mib(start_rss)}; models loaded and warm: {mib(warm['resident_bytes'])} "
          f"(caches {mib(caches_bytes(warm))}); after the soak and idle: {mib(end['resident_bytes'])} "
          f"(caches {mib(caches_bytes(end))}, peak {mib(end['peak_resident_bytes'])}, "
          f"allocator free {mib(end['allocator_free_bytes'] or 0)})")
    for instance in end["instances"]:
        print(f"  {instance['id']}: weights {mib(instance['weights_bytes'])}, "
              f"KV cache {mib(instance['kv_cache_bytes'])}, compute {mib(instance['compute_bytes'])}, {instance['running_sequences']} running, "
              f"{instance['queued_sequences']} queued")
    for name, cache in end["caches"].items():
        budget = cache["budget_bytes"]
        print(f"  {name}: {mib(cache['used_bytes'])} of {mib(budget) if budget is not None else 'no budget'}")
    print(f"upper bound of what loaded models hold: {mib(end['accounted_bytes'] - caches_bytes(end))}")
    trim = end["last_trim"]
    print(f"last trim gave back {mib(trim['released_bytes'])}" if trim else "no trim yet")
    print(f"growth outside what models and caches account for, warm to end: {mib(growth)}")


def soak(options: argparse.Namespace) -> list[str]:
    """Run the phases against a fresh server; the failures found (empty: passed)."""
    models = {key: target_path(model) for key, model in
              ((SMOLLM2.key, SMOLLM2), (GEMMA3.key, GEMMA3), (MINILM.key, MINILM))}
    home = home_with_models(Path(tempfile.mkdtemp(prefix="studiolo-soak-")), models)
    server = RunningServer(home, free_port(), [])
    sampler = RssSampler(server.process.pid)
    phases: list[Phase] = []
    try:
        start_rss = figures(server.base_url)["resident_bytes"]
        for key in models:
            loaded = httpx.post(f"{server.base_url}/api/v1/models/load", json={"model": key}, timeout=300)
            loaded.raise_for_status()
        warm_up(server.base_url, list(models))
        warm = wait_for_idle(server.base_url, options.idle)
        runs = [
            ("streams", lambda p: asyncio.run(run_streams(server.base_url, p, options.streams))),
            ("aborted", lambda p: asyncio.run(run_aborted(server.base_url, p, options.aborted))),
        ]
        background = Phase("load")
        runs.append(("hostile", lambda p: run_hostile(server.base_url, p, background)))
        for name, run in runs:
            phase, mark, started = Phase(name), sampler.mark(), time.monotonic()
            run(phase)
            phase.seconds = time.monotonic() - started
            phase.peak_rss, phase.end_rss = sampler.peak_since(mark), sampler.rss()
            phases.append(phase)
        if background.requests:  # it ran beside the hostile round
            background.seconds, background.peak_rss, background.end_rss = (
                phases[-1].seconds, phases[-1].peak_rss, phases[-1].end_rss)
            phases.append(background)
        mark, started = sampler.mark(), time.monotonic()
        end = wait_for_idle(server.base_url, options.idle)
        idle = Phase("idle", seconds=time.monotonic() - started, peak_rss=sampler.peak_since(mark),
                     end_rss=end["resident_bytes"])
        phases.append(idle)
    finally:
        sampler.stop()
        server.stop()
    # KV caches are resident from the load on (llama.cpp clears them), compute buffers from the
    # warm-up: what grows past that must be what the caches hold
    # what loaded models build on first use (llguidance's view of a vocabulary) and the caches are
    # accounted for; anything else that stays is growth
    growth = (end["resident_bytes"] - end["accounted_bytes"]) - (warm["resident_bytes"] - warm["accounted_bytes"])
    print_summary(phases, start_rss, warm, end, growth)
    failures = [f"{p.name}: {error}" for p in phases for error in p.errors[:5]]
    failures += [f"{p.name}: {p.server_errors} answers with a 5xx status" for p in phases if p.server_errors]
    if live_sequences(end):
        failures.append(f"{live_sequences(end)} sequences still running or queued after the idle wait")
    failures += [f"cache {name} holds {mib(c['used_bytes'])}, over its budget of {mib(c['budget_bytes'])}"
                 for name, c in end["caches"].items()
                 if c["budget_bytes"] is not None and c["used_bytes"] > c["budget_bytes"]]
    if growth > options.slack_mib * MIB:
        failures.append(f"resident memory outside what models and caches account for grew by {mib(growth)} from the warm server to the "
                        f"idle one after the soak, more than {options.slack_mib} MiB")
    if end["resident_bytes"] > start_rss + end["accounted_bytes"] + options.slack_mib * MIB:
        failures.append(f"resident memory {mib(end['resident_bytes'])} is over what models and caches may hold "
                        f"({mib(end['accounted_bytes'])}) and the bare server ({mib(start_rss)})")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--aborted", type=int, default=500)
    parser.add_argument("--idle", type=float, default=8.0, help="seconds left idle before the last figures")
    parser.add_argument("--slack-mib", type=int, default=64)
    failures = soak(parser.parse_args())
    for failure in failures:
        print(f"FAIL {failure}")
    print("soak passed" if not failures else f"soak failed ({len(failures)} findings)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
