"""Model management end to end: JIT loading, TTL, auto-evict, instances, the memory guard, load
failures, and LM Studio's v0/v1 shapes, against a real server of its own (state changes here)."""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time

import httpx
import openai
import pytest

from tests.conftest import (
    GEMMA,
    GREEDY,
    SMOLLM,
    RunningServer,
    free_port,
    home_with_models,
    unload_all,
)
from tests.conftest import loaded_instances as instances


@pytest.fixture(scope="module")
def managed(tmp_path_factory, default_models, chat_models):
    home = home_with_models(tmp_path_factory.mktemp("managed-home"), chat_models)
    broken = home / "models" / "broken" / "cut-model" / "cut-model-Q4_1.gguf"
    broken.parent.mkdir(parents=True)
    with default_models[SMOLLM].open("rb") as source, broken.open("wb") as target:
        target.write(source.read(4 * 2**20))  # a download cut short: header fine, tensors missing
    running = RunningServer(home, free_port(), ["--context-length", "512", "--parallel", "2"])
    with httpx.Client(base_url=running.base_url, timeout=120) as http:
        yield http
    running.stop()


def complete(http: httpx.Client, model: str, max_tokens: int = 4, **extra) -> httpx.Response:
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": max_tokens, **GREEDY, **extra}
    return http.post("/v1/completions", json=body)


def test_jit_loads_on_first_request_with_the_default_ttl(managed):
    unload_all(managed)
    states = {m["id"]: m["state"] for m in managed.get("/api/v0/models").json()["data"]}
    assert states == {SMOLLM: "not-loaded", GEMMA: "not-loaded"}  # the cut file is left out
    assert complete(managed, SMOLLM).status_code == 200
    loaded = instances(managed)
    assert list(loaded) == [SMOLLM]
    status = loaded[SMOLLM]["status"]
    assert status["jit_loaded"] is True and status["ttl_seconds"] == 3600
    assert 3590 < status["ttl_remaining_seconds"] <= 3600


def test_concurrent_first_requests_load_one_instance(managed):
    unload_all(managed)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: complete(managed, GEMMA).status_code, range(8)))
    assert codes == [200] * 8
    assert list(instances(managed)) == [GEMMA]


def test_a_load_whose_client_left_is_registered_not_lost(managed):
    unload_all(managed)
    body = {"model": SMOLLM, "input": "Hello", "stream": True, "store": False}
    with managed.stream("POST", "/api/v1/chat", json=body) as response:
        for line in response.iter_lines():
            if line == "event: model_load.start":
                break  # hang up while the model loads
    deadline = time.monotonic() + 30
    while SMOLLM not in instances(managed) and time.monotonic() < deadline:
        time.sleep(0.1)
    loaded = instances(managed)
    assert list(loaded) == [SMOLLM]  # the load went on, and its model is in the list (TTL and all)
    assert loaded[SMOLLM]["status"]["jit_loaded"] is True


def test_idle_ttl_unloads_and_the_next_request_reloads(managed):
    unload_all(managed)
    assert complete(managed, GEMMA, ttl=2).status_code == 200
    assert instances(managed)[GEMMA]["status"]["ttl_seconds"] == 2
    deadline = time.monotonic() + 10
    while GEMMA in instances(managed) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert GEMMA not in instances(managed)
    assert complete(managed, GEMMA).status_code == 200
    assert GEMMA in instances(managed)


def test_ttl_does_not_run_while_generating(managed):
    unload_all(managed)
    started = time.monotonic()
    response = complete(managed, SMOLLM, max_tokens=400, ttl=1, ignore_eos=True)
    assert response.status_code == 200 and time.monotonic() - started > 1.5  # longer than the ttl
    assert response.json()["choices"][0]["finish_reason"] == "length"


def test_auto_evict_swaps_jit_models_but_keeps_explicit_ones(managed):
    unload_all(managed)
    assert complete(managed, SMOLLM).status_code == 200
    assert complete(managed, GEMMA).status_code == 200
    assert list(instances(managed)) == [GEMMA]  # SmolLM2 was evicted
    unload_all(managed)
    assert managed.post("/api/v1/models/load", json={"model": SMOLLM}).status_code == 200
    assert complete(managed, GEMMA).status_code == 200
    loaded = instances(managed)
    assert set(loaded) == {SMOLLM, GEMMA}
    assert loaded[SMOLLM]["status"]["jit_loaded"] is False and loaded[SMOLLM]["status"]["ttl_seconds"] is None


def test_two_jit_loads_at_once_keep_one_jit_model(managed):
    unload_all(managed)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        codes = list(pool.map(lambda model: complete(managed, model).status_code, [SMOLLM, GEMMA]))
    assert codes == [200, 200]  # the second load waited for the first model's request, then evicted it
    loaded = instances(managed)
    assert len(loaded) == 1 and set(loaded) <= {SMOLLM, GEMMA}


def test_auto_evict_never_cuts_a_generation_off(managed):
    unload_all(managed)
    assert complete(managed, SMOLLM).status_code == 200
    result = {}

    def long_generation():
        result["response"] = complete(managed, SMOLLM, max_tokens=300, ignore_eos=True)

    runner = threading.Thread(target=long_generation)
    runner.start()
    deadline = time.monotonic() + 10
    while not instances(managed)[SMOLLM]["status"]["running_requests"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert complete(managed, GEMMA).status_code == 200  # waited for SmolLM2 to finish
    runner.join()
    body = result["response"].json()
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 300
    assert list(instances(managed)) == [GEMMA]


def test_explicit_loads_identifiers_and_unload(managed):
    unload_all(managed)
    first = managed.post("/api/v1/models/load", json={"model": GEMMA, "echo_load_config": True}).json()
    assert first["type"] == "llm" and first["instance_id"] == GEMMA and first["status"] == "loaded"
    assert first["load_time_seconds"] > 0
    assert first["load_config"] == {"context_length": 512, "eval_batch_size": 512, "parallel": 2, "ttl": None,
                                    "draft_model": None}
    second = managed.post("/api/v1/models/load", json={"model": "gemma-3-270m", "context_length": 256, "parallel": 1})
    assert second.json()["instance_id"] == f"{GEMMA}:2" and "load_config" not in second.json()
    named = managed.post("/api/v1/models/load", json={"model": GEMMA, "identifier": "tiny", "ttl": 600}).json()
    assert named["instance_id"] == "tiny"
    loaded = instances(managed)
    assert set(loaded) == {GEMMA, f"{GEMMA}:2", "tiny"}
    assert loaded[f"{GEMMA}:2"]["config"] == {"context_length": 256, "eval_batch_size": 512, "parallel": 1,
                                              "draft_model": None}
    assert loaded["tiny"]["status"]["ttl_seconds"] == 600
    # a request may name an instance
    body = complete(managed, "tiny").json()
    assert body["model"] == "tiny"
    taken = managed.post("/api/v1/models/load", json={"model": GEMMA, "identifier": "tiny"})
    assert taken.status_code == 400
    assert taken.json() == {"error": {"type": "invalid_request", "message": taken.json()["error"]["message"],
                                      "code": "identifier_taken", "param": "identifier"}}
    assert managed.post("/api/v1/models/unload", json={"instance_id": "tiny"}).json() == {"instance_id": "tiny"}
    missing = managed.post("/api/v1/models/unload", json={"instance_id": "tiny"})
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "model_not_found"
    unload_all(managed)


def test_an_identifier_cannot_name_another_model(managed):
    unload_all(managed)
    for identifier in (GEMMA, "gemma-3-270m", "Google/Gemma-3-270M", "gemma-3-270m-Q4_K_M.gguf"):
        taken = managed.post("/api/v1/models/load", json={"model": SMOLLM, "identifier": identifier})
        assert taken.status_code == 400, (identifier, taken.text)
        assert taken.json()["error"]["code"] == "identifier_taken" and "google/gemma-3-270m" in taken.text
    assert instances(managed) == {}
    own = managed.post("/api/v1/models/load", json={"model": SMOLLM, "identifier": "smollm2-135m-instruct"})
    assert own.status_code == 200  # its own short name misleads no request
    unload_all(managed)


def test_load_refuses_bad_options_in_the_v1_shape(managed):
    response = managed.post("/api/v1/models/load", json={"model": GEMMA, "context_length": 10})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request" and error["param"] == "context_length"
    response = managed.post("/api/v1/models/load", json={"context_length": 1024})
    assert response.status_code == 400 and response.json()["error"]["param"] == "model"
    response = managed.post("/api/v1/models/load", json={"model": "no-such-model"})
    assert response.status_code == 404 and response.json()["error"]["type"] == "model_not_found"


def test_memory_guard_refuses_a_load_that_cannot_fit(managed):
    response = managed.post("/api/v1/models/load", json={"model": GEMMA, "context_length": 32768, "parallel": 64})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "insufficient_memory" and "GiB" in error["message"]
    assert all(i["config"]["parallel"] != 64 for i in instances(managed).values())


def test_a_corrupt_file_fails_its_load_and_the_server_keeps_serving(managed):
    response = managed.post("/api/v1/models/load", json={"model": "broken/cut-model"})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "model_load_failed" and "cut-model" in error["message"]
    jit = complete(managed, "broken/cut-model")
    assert jit.status_code == 500 and jit.json()["error"]["code"] == "model_load_failed"
    assert complete(managed, SMOLLM).status_code == 200


def test_a_file_that_failed_to_load_is_refused_at_once_until_it_changes(tmp_path, default_models, chat_models):
    """OpenAI's client retries a 5xx twice: a broken file answers with x-should-retry: false, is
    not tried again for later requests, and is tried again once it changes on disk."""
    home = home_with_models(tmp_path, chat_models)
    broken = home / "models" / "broken" / "cut-model" / "cut-model-Q4_1.gguf"
    broken.parent.mkdir(parents=True)
    good = default_models[SMOLLM].read_bytes()
    broken.write_bytes(good[: 4 * 2**20])
    running = RunningServer(home, free_port(), ["--context-length", "512", "--parallel", "1"])
    try:
        client = openai.OpenAI(base_url=f"{running.base_url}/v1", api_key="none", max_retries=2, timeout=120)
        with pytest.raises(openai.InternalServerError) as first:
            client.completions.create(model="broken/cut-model", prompt="Hi", max_tokens=2)
        assert first.value.response.headers["x-should-retry"] == "false"
        assert first.value.body["code"] == "model_load_failed" and "cut-model" in first.value.body["message"]
        with httpx.Client(base_url=running.base_url, timeout=120) as http:
            again = complete(http, "broken/cut-model")
            assert again.status_code == 500 and "has not changed since" in again.json()["error"]["message"]
            loaded = http.post("/api/v1/models/load", json={"model": "broken/cut-model"})
            assert loaded.status_code == 500 and "has not changed since" in loaded.text
            assert running.log().count("POST /v1/completions") == 2  # the client did not retry
            broken.write_bytes(good)  # repaired: loaded this time
            assert complete(http, "broken/cut-model").status_code == 200
    finally:
        running.stop()


def test_v0_models_field_by_field(managed):
    unload_all(managed)
    assert complete(managed, SMOLLM).status_code == 200
    models = {m["id"]: m for m in managed.get("/api/v0/models").json()["data"]}
    assert models[SMOLLM] == {
        "id": SMOLLM, "object": "model", "type": "llm", "publisher": "huggingfacetb", "arch": "llama",
        "compatibility_type": "gguf", "quantization": "Q4_1", "state": "loaded", "max_context_length": 8192,
        "loaded_context_length": 512, "capabilities": ["decisions"],
    }
    assert models[GEMMA] == {
        "id": GEMMA, "object": "model", "type": "llm", "publisher": "google", "arch": "gemma3",
        "compatibility_type": "gguf", "quantization": "Q4_K_M", "state": "not-loaded", "max_context_length": 32768,
        "capabilities": ["decisions"],
    }
    assert managed.get("/api/v0/models/gemma-3-270m").json() == models[GEMMA]
    assert managed.get("/api/v0/models/nothing-like-it").status_code == 404


def test_v1_models_field_by_field(managed):
    unload_all(managed)
    models = {m["key"]: m for m in managed.get("/api/v1/models").json()["models"]}
    assert models[GEMMA] == {
        "type": "llm", "publisher": "google", "key": GEMMA, "display_name": "Gemma 3 270m",
        "architecture": "gemma3", "quantization": {"name": "Q4_K_M", "bits_per_weight": 4},
        "size_bytes": 253113024, "params_string": "270M", "loaded_instances": [], "max_context_length": 32768,
        "format": "gguf", "capabilities": {"vision": False, "trained_for_tool_use": False, "decisions": True},
        "description": None,
    }


@pytest.mark.parametrize("endpoint", ["/api/v0/completions", "/api/v0/chat/completions"])
def test_v0_generation_carries_measured_stats(managed, endpoint):
    if endpoint.endswith("chat/completions"):
        body = {"model": SMOLLM, "messages": [{"role": "user", "content": "Count to ten."}]}
    else:
        body = {"model": SMOLLM, "prompt": "One, two, three,"}
    started = time.perf_counter()
    response = managed.post(endpoint, json={**body, **GREEDY, "max_tokens": 12, "ignore_eos": True})
    wall = time.perf_counter() - started
    result = response.json()
    stats = result["stats"]
    assert stats["stop_reason"] == "maxPredictedTokensReached"
    assert 0 < stats["time_to_first_token"] < wall and 0 < stats["generation_time"] < wall
    assert stats["tokens_per_second"] == pytest.approx(11 / stats["generation_time"], rel=0.05)
    assert result["model_info"] == {"arch": "llama", "quant": "Q4_1", "format": "gguf", "context_length": 512}
    assert result["runtime"]["supported_formats"] == ["gguf"] and result["runtime"]["name"].startswith("llama.cpp-")
    stopped = managed.post(endpoint, json={**body, **GREEDY, "max_tokens": 40, "stop": [","]}).json()
    assert stopped["stats"]["stop_reason"] in {"stopStringFound", "eosFound"}


def test_v0_stream_ends_with_stats(managed):
    body = {"model": SMOLLM, "prompt": "One, two,", "max_tokens": 5, "stream": True, **GREEDY, "ignore_eos": True}
    with managed.stream("POST", "/api/v0/completions", json=body) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"][0]["finish_reason"] == "length"
    assert last["stats"]["stop_reason"] == "maxPredictedTokensReached" and last["model_info"]["quant"] == "Q4_1"


def test_log_stream_shows_the_exact_prompt(managed):
    seen = []

    def listen():
        with httpx.stream("GET", f"{managed.base_url}/studiolo/log/stream", params={"source": "model"}, timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:]))
                    if seen[-1]["type"] == "output":
                        return

    listener = threading.Thread(target=listen)
    listener.start()
    time.sleep(0.5)
    body = {"model": SMOLLM, "messages": [{"role": "user", "content": "Hi [there]"}], "max_tokens": 3, **GREEDY}
    reply = managed.post("/v1/chat/completions", json=body).json()
    listener.join(timeout=30)
    first, last = seen[0], seen[-1]
    assert first["type"] == "input" and "<|im_start|>user\nHi [there]<|im_end|>" in first["prompt"]
    assert first["prompt"].endswith("<|im_start|>assistant\n")
    assert last["type"] == "output" and last["text"] == reply["choices"][0]["message"]["content"]


def test_with_jit_off_only_loaded_models_serve(tmp_path, chat_models):
    server = RunningServer(home_with_models(tmp_path, chat_models), free_port(), ["--no-jit", "--parallel", "1"])
    try:
        with httpx.Client(base_url=server.base_url, timeout=120) as http:
            assert http.get("/v1/models").json()["data"] == []
            refused = complete(http, SMOLLM)
            assert refused.status_code == 404 and "just-in-time loading is off" in refused.json()["error"]["message"]
            assert http.post("/api/v1/models/load", json={"model": SMOLLM}).status_code == 200
            assert [m["id"] for m in http.get("/v1/models").json()["data"]] == [SMOLLM]
            assert complete(http, SMOLLM).status_code == 200
    finally:
        server.stop()
