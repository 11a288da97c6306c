"""Memory accounted for: budgets in bytes for the caches that grow with traffic, and the figures.

In-process: the RAM prompt caches of several engines held to one budget together, the log
queues' byte budget, reading resident memory, and ``ps``'s helpers. End to end, against a server of
this module's own started with small budgets in its ``settings.json``: ``GET /studiolo/memory``,
the prompt cache staying within its budget while it keeps serving the newest prefixes, freed
memory given back once idle, and ``studiolo ps`` printing the figures.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from rich.console import Console

from studiolo.cli.models_cmd import (
    caches_table,
    human_memory,
    instance_memory_table,
    with_memory,
)
from studiolo.engine import process_memory
from studiolo.engine.llama import ContextParams, LlamaContext, LlamaModel
from studiolo.engine.prompt_cache import PromptCache, PromptCachePool
from studiolo.service.model_log import LogHub, event_bytes, model_input_event
from tests.conftest import SMOLLM, RunningServer, free_port, home_with_models

MIB = 2**20
PROMPT_CACHE_MIB = 4  # SmolLM2 keeps about 23 kB per token: one entry of ~130 tokens fits, two do not
LOG_QUEUE_MIB = 1


# ---- in-process ----


def entry_of(size: int) -> np.ndarray:
    return np.zeros(size, dtype=np.uint8)


def test_every_engines_prompt_cache_is_held_to_one_budget_together():
    pool = PromptCachePool(budget_bytes=10 * MIB)
    first, second = PromptCache(9 * MIB, pool), PromptCache(9 * MIB, pool)
    first.put(list(range(100)), entry_of(4 * MIB))
    second.put(list(range(200, 300)), entry_of(4 * MIB))
    assert pool.used_bytes == first.used_bytes + second.used_bytes > 8 * MIB
    # a third entry goes past the pool's 10 MiB though each cache is within its own 9: the oldest
    # entry of either goes, here the first engine's
    second.put(list(range(400, 500)), entry_of(4 * MIB))
    assert first.entries == [] and first.used_bytes == 0
    assert [len(e.tokens) for e in second.entries] == [100, 100]
    assert pool.used_bytes == second.used_bytes <= 10 * MIB
    # an entry larger than what a cache may hold is not kept at all
    first.put(list(range(50)), entry_of(11 * MIB))
    assert first.entries == []


def test_a_cache_counts_its_entries_bytes_exactly_as_they_come_and_go():
    cache = PromptCache(3 * MIB, PromptCachePool())
    tokens = list(range(40))
    cache.put(tokens[:20], entry_of(MIB))
    cache.put(tokens, entry_of(MIB))  # supersedes its prefix
    assert len(cache.entries) == 1 and cache.used_bytes == cache.entries[0].nbytes >= MIB
    for start in range(3):
        cache.put(list(range(1000 * (start + 1), 1000 * (start + 1) + 20)), entry_of(MIB))
    assert cache.used_bytes == sum(e.nbytes for e in cache.entries) <= 3 * MIB
    cache.clear()
    assert cache.used_bytes == 0 and cache.pool.used_bytes == 0


def test_a_budget_of_zero_keeps_nothing():
    cache = PromptCache(MIB, PromptCachePool(budget_bytes=0))
    assert not cache.wants(list(range(100)))
    cache.put(list(range(100)), entry_of(10))
    assert cache.entries == []


def test_a_slow_log_reader_holds_at_most_the_hub_budget_in_bytes():
    big_prompt = "word " * 50_000  # a long prompt: about 250 kB in each input event
    size = event_bytes(LogHub.stamp("model", model_input_event("r", "m", big_prompt, 50_000)))

    async def scenario():
        hub = LogHub(budget_bytes=MIB)
        async with hub.subscribe("model") as slow, hub.subscribe("model") as other:
            for number in range(20):
                hub.publish("model", model_input_event(f"r{number}", "m", big_prompt, 50_000))
            held = hub.pending_bytes()
            first = await slow.get()
            newest = [await slow.get() for _ in range(held // 2 // size)]
            left = slow.pending_bytes
            assert other.pending_bytes == held // 2
        return held, first, newest, left

    held, first, newest, left = asyncio.run(scenario())
    assert held <= MIB  # two readers: half a MiB each
    assert held >= 2 * size  # each keeps what fits of the newest
    assert first["type"] == "dropped" and first["count"] == 20 - len(newest)
    assert newest[-1]["request_id"] == "r19"
    assert left == 0


def test_resident_memory_is_read_from_the_kernel(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmHWM:\t  900 kB\nVmRSS:\t  800 kB\nRssAnon:\t  500 kB\n"
                      "RssFile:\t  280 kB\nRssShmem:\t  20 kB\n")
    assert process_memory.resident(status) == process_memory.ResidentMemory(800 * 1024, 500 * 1024, 300 * 1024,
                                                                            900 * 1024)
    mine = process_memory.resident()
    assert 0 < mine.anonymous < mine.rss <= mine.peak
    assert isinstance(process_memory.allocator_free_bytes(), int)  # glibc here
    assert isinstance(process_memory.trim(), bool)


SMOLLM_KV_BYTES_PER_CELL = 30 * 3 * (64 + 64) * 2  # layers x KV heads x (key + value dims) x f16
KV_CELLS = 2 * 1024 + 512  # the server's 2 sequences of 1024 cells, and a batch for its read lanes (engine/slots.py)


def test_a_context_knows_the_buffers_llama_cpp_allocated_for_it(default_models):
    model = LlamaModel(default_models[SMOLLM])
    context = LlamaContext(model, ContextParams(n_ctx=512, n_batch=64, n_seq_max=1, n_threads=1))
    try:
        sizes = context.buffer_bytes
        assert sizes["kv"] == 512 * SMOLLM_KV_BYTES_PER_CELL
        assert sizes["compute"] > 0 and sizes["output"] >= model.n_vocab * 4  # a row of logits at least
    finally:
        context.close()
        model.close()


def test_ps_memory_tables_read_like_the_figures():
    assert [human_memory(n) for n in (0, 1023, 4 * MIB, 3 * 2**30 // 2, None, True, -1)] == [
        "0 B", "1023 B", "4.0 MiB", "1.5 GiB", "—", "—", "—"]
    instances = [{"identifier": "a", "model_key": "x/a"}, {"identifier": "b", "model_key": "x/b"}]
    figures = {"instances": [{"id": "a", "weights_bytes": 100 * MIB, "kv_cache_bytes": MIB, "compute_bytes": 2 * MIB,
                              "running_sequences": 1, "queued_sequences": 2}]}
    joined = with_memory(instances, figures)
    assert joined[0]["memory"]["weights_bytes"] == 100 * MIB and "memory" not in joined[1]
    assert with_memory(instances, None) == instances
    console = Console(width=200, record=True)
    console.print(instance_memory_table(joined))
    console.print(caches_table({"prompt_cache": {"used_bytes": MIB, "budget_bytes": 4 * MIB}}))
    text = console.export_text()
    assert "100.0 MiB" in text and "1 running, 2 queued" in text
    assert "prompt_cache" in text and "4.0 MiB" in text


# ---- end to end: a server with small budgets ----


@pytest.fixture(scope="module")
def budget_server(tmp_path_factory, chat_models):
    home = home_with_models(tmp_path_factory.mktemp("memory-home"), chat_models)
    (home / "settings.json").write_text(json.dumps(
        {"budgets": {"prompt_cache_mib": PROMPT_CACHE_MIB, "log_queue_mib": LOG_QUEUE_MIB}}))
    running = RunningServer(home, free_port(), ["--parallel", "2", "--context-length", "1024"])
    yield running
    running.stop()


def figures(http) -> dict:
    response = http.get("/studiolo/memory")
    assert response.status_code == 200, response.text
    return response.json()


def long_prompt(index: int) -> str:
    """About 130 tokens with the chat template, its own from the first words on (so no entry is a prefix of another)."""
    return f"Note {index}: " + " ".join(f"item {index}-{n} is filed under shelf {n % 7}." for n in range(8))


def chat(http, index: int) -> dict:
    body = {"model": SMOLLM, "messages": [{"role": "user", "content": long_prompt(index)}], "max_tokens": 4,
            "temperature": 0}
    response = http.post("/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def budget_http(budget_server):
    with httpx.Client(base_url=budget_server.base_url, timeout=60) as session:
        yield session


def test_the_figures_show_resident_memory_and_every_budget_before_any_load(budget_http):
    report = figures(budget_http)
    assert report["instances"] == []
    assert report["resident_bytes"] >= report["resident_anonymous_bytes"] > 0
    assert report["resident_bytes"] <= report["peak_resident_bytes"]
    assert report["caches"]["prompt_cache"] == {"used_bytes": 0, "budget_bytes": PROMPT_CACHE_MIB * MIB}
    assert report["caches"]["log_queues"] == {"used_bytes": 0, "budget_bytes": LOG_QUEUE_MIB * MIB}


def test_the_prompt_cache_stays_within_its_budget_and_keeps_the_newest(budget_http, default_models):
    for index in range(6):  # each admission moves the previous prompt's cells to the RAM cache
        chat(budget_http, index)
    report = figures(budget_http)
    cache = report["caches"]["prompt_cache"]
    assert MIB < cache["used_bytes"] <= PROMPT_CACHE_MIB * MIB  # one entry (~3 MB) of the five offered
    [instance] = report["instances"]
    assert instance["id"] == SMOLLM and instance["weights_bytes"] == default_models[SMOLLM].stat().st_size
    assert instance["kv_cache_bytes"] == KV_CELLS * SMOLLM_KV_BYTES_PER_CELL
    assert instance["compute_bytes"] > 0 and instance["running_sequences"] == instance["queued_sequences"] == 0
    assert report["accounted_bytes"] >= (instance["weights_bytes"] + instance["kv_cache_bytes"]
                                         + instance["compute_bytes"] + cache["used_bytes"])
    # the entry kept is the newest one offloaded: prompt 4's (prompt 5's cells are still in a slot)
    again = chat(budget_http, 4)
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] >= 100


def test_freed_memory_is_given_back_once_the_models_are_idle(budget_http):
    chat(budget_http, 99)
    finished = time.time()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        trim = figures(budget_http)["last_trim"]
        if trim is not None and trim["at"] > finished:
            break
        time.sleep(0.5)
    else:
        pytest.fail("no trim after the models went idle")
    assert trim["released_bytes"] >= 0


def studiolo(server: RunningServer, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "STUDIOLO_HOME": str(server.home)}
    return subprocess.run([sys.executable, "-m", "studiolo", *args, "--port", str(server.port)], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_ps_prints_each_instances_memory_and_the_caches(budget_server, budget_http):
    chat(budget_http, 0)  # loaded (if an earlier test has not)
    table = studiolo(budget_server, "ps")
    assert table.returncode == 0, table.stderr
    lines = [line.rstrip() for line in table.stdout.splitlines()]
    memory_row = next(line for line in lines[lines.index("Memory"):] if SMOLLM in line)
    assert "MiB" in memory_row and "0 running, 0 queued" in memory_row
    cache_row = next(line for line in lines if "prompt_cache" in line)
    assert cache_row.rstrip(" │").endswith(f"{PROMPT_CACHE_MIB}.0 MiB")
    assert any(line.startswith("Resident memory: ") and "(peak " in line for line in lines)

    [instance] = json.loads(studiolo(budget_server, "ps", "--json").stdout)
    assert instance["memory"]["kv_cache_bytes"] == KV_CELLS * SMOLLM_KV_BYTES_PER_CELL
