"""Embeddings end to end: all-MiniLM-L6-v2 converted to GGUF, through the openai client and httpx.

Quality is measured against vectors sentence-transformers made once (tests/fixtures/, with the
script that made them): every server vector must have cosine >= 0.99 with its reference.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from studiolo.engine.llama import LlamaModel
from tests.conftest import MINILM, SMOLLM

EMBEDDINGS = "/v1/embeddings"
REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "minilm_reference.json").read_text())
TEXTS = [item["text"] for item in REFERENCE["items"]]


def vectors(body: dict) -> np.ndarray:
    return np.array([item["embedding"] for item in sorted(body["data"], key=lambda item: item["index"])])


def embed(http: httpx.Client, inputs, **extra) -> dict:
    response = http.post(EMBEDDINGS, json={"model": MINILM, "input": inputs, **extra})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def minilm_tokens(default_models):
    model = LlamaModel(default_models[MINILM])
    try:
        yield lambda text: model.tokenize(text, add_special=True, parse_special=False)
    finally:
        model.close()


def test_the_openai_client_gets_openai_shapes(client):
    result = client.embeddings.create(model=MINILM, input=["A cat sat on the mat.", "Stocks fell sharply."])
    assert result.object == "list" and result.model == MINILM
    assert [item.index for item in result.data] == [0, 1] and all(item.object == "embedding" for item in result.data)
    assert all(len(item.embedding) == 384 for item in result.data)
    assert all(abs(np.linalg.norm(item.embedding) - 1) < 1e-5 for item in result.data)
    assert result.usage.prompt_tokens == result.usage.total_tokens > 0


def test_vectors_match_sentence_transformers(http):
    assert len(TEXTS) >= 50
    ours = vectors(embed(http, TEXTS))
    reference = np.array([item["embedding"] for item in REFERENCE["items"]])
    cosines = (ours * reference).sum(axis=1) / np.linalg.norm(reference, axis=1)
    worst = int(np.argmin(cosines))
    assert cosines.min() >= 0.99, f"{TEXTS[worst]!r}: cosine {cosines[worst]:.4f}"


def test_usage_counts_the_tokens_sentence_transformers_counts(http):
    body = embed(http, TEXTS[:10])
    assert body["usage"]["prompt_tokens"] == sum(item["tokens"] for item in REFERENCE["items"][:10])


def test_a_hundred_inputs_in_one_request_equal_a_hundred_requests(http):
    texts = [f"{TEXTS[i % len(TEXTS)]} (variant {i})" for i in range(100)]
    together = vectors(embed(http, texts))
    alone = np.array([vectors(embed(http, text))[0] for text in texts])
    # the same vectors up to rounding: a batch of 64 runs other matrix shapes (and kernels) than a
    # batch of one (measured: components within 2e-4, cosines above 0.999999)
    cosines = (together * alone).sum(axis=1)
    assert cosines.min() > 0.99999 and np.abs(together - alone).max() < 1e-3


def test_token_id_inputs_equal_their_text(http, minilm_tokens):
    texts = TEXTS[:3]
    ids = [minilm_tokens(text) for text in texts]
    from_text = vectors(embed(http, texts))
    np.testing.assert_allclose(vectors(embed(http, ids)), from_text, atol=1e-6)
    np.testing.assert_allclose(vectors(embed(http, ids[0]))[0], from_text[0], atol=1e-6)


def test_base64_is_the_same_float32_vector(http):
    floats = vectors(embed(http, TEXTS[:2]))
    encoded = embed(http, TEXTS[:2], encoding_format="base64")
    decoded = np.array([np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in encoded["data"]])
    np.testing.assert_array_equal(decoded, floats.astype(np.float32))


def test_dimensions_truncate_and_renormalize(http):
    full = vectors(embed(http, TEXTS[0]))[0]
    short = vectors(embed(http, TEXTS[0], dimensions=64))[0]
    expected = full[:64] / np.linalg.norm(full[:64])
    assert short.shape == (64,)
    np.testing.assert_allclose(short, expected, atol=1e-6)


def test_lm_studios_v0_endpoint_gives_the_same(http):
    ours = vectors(embed(http, TEXTS[:2]))
    response = http.post("/api/v0/embeddings", json={"model": MINILM, "input": TEXTS[:2]})
    np.testing.assert_allclose(vectors(response.json()), ours, atol=1e-6)


def test_a_small_request_is_not_held_up_by_a_large_one(server):
    """Inputs of concurrent requests are taken in turn: the small request ends long before the large.

    500 inputs keep the large request running for seconds (about 10 ms an input on 2 cores), far past
    the 0.3 s head start; were inputs not taken in turn, the small one would end after the large."""
    large = [f"{TEXTS[i % len(TEXTS)]} {i}" for i in range(500)]

    async def both():
        async with httpx.AsyncClient(base_url=server.base_url, timeout=300) as session:
            ended = {}

            async def send(name, inputs):
                await session.post(EMBEDDINGS, json={"model": MINILM, "input": inputs})
                ended[name] = time.monotonic()

            large_task = asyncio.create_task(send("large", large))
            await asyncio.sleep(0.3)
            await send("small", ["Just one."])
            await large_task
            return ended

    ended = asyncio.run(both())
    assert ended["small"] < ended["large"]


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"input": ["fine", "word " * 600]}, "input[1]", "tokens long"),
    ({"input": ""}, "input[0]", "empty"),
    ({"input": ["ok", ""]}, "input[1]", "empty"),
    ({"input": []}, "input", "empty"),
    ({"input": "x", "dimensions": 385}, "dimensions", "384"),
    ({"input": "x", "dimensions": 0}, "dimensions", ""),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format", ""),
    ({"input": [[1, 2], [99999999]]}, "input[1]", "outside the vocabulary"),
    ({"model": SMOLLM, "input": "x"}, "model", "not an embedding model"),
    ({"input": ["ok", "x\udc80y"]}, "input[1]", "surrogate"),
    ({"input": [True, False]}, "input[0]", "boolean"),
    ({"input": "x", "dimensions": True}, "dimensions", "boolean"),
])
def test_bad_input_is_a_400_naming_the_field(http, body, param, words):
    # json.dumps escapes a lone surrogate, as a client's JSON encoder would; httpx's own refuses to send it
    response = http.post(EMBEDDINGS, content=json.dumps({"model": MINILM, **body}),
                         headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"]


def test_chat_and_completions_on_an_embedding_model_are_a_400(http):
    chat = http.post("/v1/chat/completions", json={"model": MINILM, "messages": [{"role": "user", "content": "Hi"}]})
    completion = http.post("/v1/completions", json={"model": MINILM, "prompt": "Hi"})
    for response in (chat, completion):
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["param"] == "model" and "embedding model" in error["message"]
