"""LoRA adapters selected by the request's ``model`` (BladeLLM: "the model name selects the LoRA").

A server of its own, whose SmolLM2 folder holds adapters written by tests/lora.py. The
reference for an adapter's output is a plain llama.cpp decode in this process with the
adapter set on the context: no scheduler, slots or prompt cache.
"""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import openai
import pytest

from studiolo.config import models_dir
from studiolo.engine.llama import ContextParams, LlamaContext, LlamaModel
from tests.batching import assert_same_or_parted_at_a_near_tie
from tests.conftest import GREEDY, MINILM, SMOLLM, RunningServer, free_port, home_with_models
from tests.lora import write_lora_adapter

TINT = f"{SMOLLM}/tint"
BOLD = f"{SMOLLM}/bold"
PROMPT = "The three best things about a quiet morning are"
TOKENS = 24


@pytest.fixture(scope="module")
def adapters_home(tmp_path_factory, default_models, chat_models):
    home = home_with_models(tmp_path_factory.mktemp("lora-home"), chat_models)
    base = default_models[SMOLLM]
    folder = home / "models" / base.relative_to(models_dir()).parent / "adapters"
    folder.mkdir()
    write_lora_adapter(base, folder / "tint.gguf", seed=0)
    write_lora_adapter(base, folder / "bold.gguf", seed=1)
    write_lora_adapter(base, folder / "f64.gguf", dtype=np.float64)
    write_lora_adapter(base, folder / "misshapen.gguf", wrong_shape=True)
    home_with_models(home, {MINILM: default_models[MINILM]})
    embedder = default_models[MINILM]
    embedder_adapters = home / "models" / embedder.relative_to(models_dir()).parent / "adapters"
    embedder_adapters.mkdir()
    write_lora_adapter(embedder, embedder_adapters / "sharpen.gguf")
    return home


@pytest.fixture(scope="module")
def lora_server(adapters_home):
    running = RunningServer(adapters_home, free_port(), [])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def lora_http(lora_server):
    with httpx.Client(base_url=lora_server.base_url, timeout=120) as session:
        yield session


@pytest.fixture(scope="module")
def prompt_tokens(default_models) -> list[int]:
    model = LlamaModel(default_models[SMOLLM])
    try:
        return model.tokenize(PROMPT, add_special=True)
    finally:
        model.close()


def reference_greedy(base, adapter_path, tokens: list[int], count: int) -> list[int]:
    """Argmax decoding of ``tokens`` with llama.cpp alone, with the adapter (or none) applied."""
    model = LlamaModel(base)
    context = LlamaContext(model, ContextParams(n_ctx=512, n_batch=512, n_seq_max=1, n_threads=2))
    try:
        context.use_adapter(model.load_adapter(adapter_path) if adapter_path else None)
        out: list[int] = []
        batch, position, pending = context.batch, 0, list(tokens)
        while len(out) < count:
            batch.clear()
            batch.add(pending, position, 0, len(pending) - 1)
            assert context.decode() == 0
            position += len(pending)
            token = int(np.argmax(context.logits(len(pending) - 1)))
            if model.is_eog(token):
                break
            out.append(token)
            pending = [token]
        return out
    finally:
        context.close()
        model.close()


def complete(http: httpx.Client, model: str, tokens: list[int], **extra) -> dict:
    body = {"model": model, "prompt": tokens, "max_tokens": TOKENS, "logprobs": 2, **GREEDY, **extra}
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def token_ids(body: dict) -> list[int]:
    return [entry["id"] for entry in body["choices"][0]["logprobs"]["content"]]


def steps(body: dict) -> list:
    return [
        (entry["id"], {alt["id"]: alt["logprob"] for alt in entry["top_logprobs"]})
        for entry in body["choices"][0]["logprobs"]["content"]
    ]


def test_adapters_are_listed_with_their_base_model(lora_http):
    listed = {m["id"]: m for m in lora_http.get("/v1/models").json()["data"]}
    assert listed[TINT]["parent"] == SMOLLM and listed[BOLD]["parent"] == SMOLLM
    assert "parent" not in listed[SMOLLM]
    assert lora_http.get("/v1/models/tint").json()["id"] == TINT


def test_the_model_name_selects_the_adapter(lora_http, adapters_home, default_models, prompt_tokens):
    base = default_models[SMOLLM]
    tint_file = next(adapters_home.glob("models/*/*/adapters/tint.gguf"))
    with_adapter = complete(lora_http, "tint", prompt_tokens)
    bare = complete(lora_http, SMOLLM, prompt_tokens)
    assert with_adapter["model"] == TINT and bare["model"] == SMOLLM
    assert token_ids(with_adapter) == reference_greedy(base, tint_file, prompt_tokens, TOKENS)
    assert token_ids(bare) == reference_greedy(base, None, prompt_tokens, TOKENS)
    assert token_ids(with_adapter)[:8] != token_ids(bare)[:8]


def test_base_and_two_adapters_in_one_batch_each_match_their_solo_run(lora_server, lora_http, prompt_tokens):
    models = [SMOLLM, TINT, BOLD]
    solo = {model: complete(lora_http, model, prompt_tokens) for model in models}
    assert len({tuple(token_ids(body)) for body in solo.values()}) == 3

    async def together():
        async with httpx.AsyncClient(base_url=lora_server.base_url, timeout=120) as session:
            body = {"prompt": prompt_tokens, "max_tokens": TOKENS, "logprobs": 2, **GREEDY}
            calls = [session.post("/v1/completions", json={**body, "model": m}) for m in models * 2]
            return [r.json() for r in await asyncio.gather(*calls)]

    for model, body in zip(models * 2, asyncio.run(together())):
        assert body["model"] == model
        assert_same_or_parted_at_a_near_tie(model, steps(solo[model]), steps(body))


def test_a_cached_prefix_serves_only_the_adapter_it_was_computed_with(lora_http, prompt_tokens):
    long_prompt = prompt_tokens[::-1] * 4  # no other test starts this way

    def cached(body: dict) -> int:
        return body["usage"]["prompt_tokens_details"]["cached_tokens"]

    bare = complete(lora_http, SMOLLM, long_prompt)
    first = complete(lora_http, "tint", long_prompt)
    again = complete(lora_http, "tint", long_prompt)
    bare_again = complete(lora_http, SMOLLM, long_prompt)
    assert cached(first) == 0  # the bare model's cells for the same tokens do not count
    assert cached(again) == len(long_prompt) - 1 and token_ids(again) == token_ids(first)
    assert cached(bare_again) == len(long_prompt) - 1 and token_ids(bare_again) == token_ids(bare)


def test_chat_streams_with_an_adapter(lora_server):
    client = openai.OpenAI(base_url=f"{lora_server.base_url}/v1", api_key="none", max_retries=0)
    messages = [{"role": "user", "content": "Name three colors."}]
    whole = client.chat.completions.create(model="tint", messages=messages, temperature=0, max_tokens=20,
                                           extra_body={"repeat_penalty": 1.0})
    chunks = list(client.chat.completions.create(model="tint", messages=messages, temperature=0, max_tokens=20,
                                                 extra_body={"repeat_penalty": 1.0}, stream=True))
    assert whole.model == TINT and {chunk.model for chunk in chunks} == {TINT}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content


@pytest.mark.parametrize(
    ("name", "problem"),
    [("f64", "lora_a is F64, which llama.cpp cannot apply"), ("misshapen", "llama.cpp could not load the LoRA adapter")],
)
def test_an_adapter_llama_cpp_cannot_apply_is_refused_and_the_server_stays_up(lora_http, prompt_tokens, name, problem):
    response = lora_http.post("/v1/completions", json={"model": name, "prompt": "Hi", "max_tokens": 4})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "model_load_failed" and error["param"] == "model"
    assert f"{SMOLLM}/{name}" in error["message"] and problem in error["message"]
    assert complete(lora_http, "tint", prompt_tokens)["model"] == TINT


def test_an_adapter_cannot_be_loaded_as_a_model(lora_http):
    response = lora_http.post("/api/v1/models/load", json={"model": "tint"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "model_is_adapter" and SMOLLM in error["message"]


def test_an_adapter_of_an_embedding_model_is_refused(lora_http):
    # llama.cpp would apply it, but the embedding engine takes no adapters: a 400, not a silent base vector
    response = lora_http.post("/v1/embeddings", json={"model": f"{MINILM}/sharpen", "input": "Hi"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "model" and "adapter" in error["message"]
