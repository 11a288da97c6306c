"""LM Studio's SDK protocol, the ``embedding`` namespace's own calls (api/lmstudio_sdk/handlers/
embedding.py), with the real ``lmstudio`` SDK against a real server: ``embed`` gives the vectors
/v1/embeddings gives for the same text, ``tokenize`` and ``count_tokens`` the tokens it embeds; and
raw frames for what the SDK would not send."""

from __future__ import annotations

import json

import httpx
import lmstudio
import pytest
from websockets.sync.client import connect

from tests.conftest import MINILM, SMOLLM, RunningServer, free_port, home_with_models

FOX = "The quick brown fox jumps over the lazy dog."
DOG = "A lazy dog sleeps in the sun."


@pytest.fixture(scope="module")
def server(tmp_path_factory, default_models):
    models = {key: default_models[key] for key in (MINILM, SMOLLM)}
    running = RunningServer(home_with_models(tmp_path_factory.mktemp("sdk-embedding"), models), free_port(), [])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=120) as session:
        yield session


@pytest.fixture(scope="module")
def sdk(server):
    with lmstudio.Client(f"127.0.0.1:{server.port}") as client:
        yield client


def rest_embeddings(http: httpx.Client, inputs: str | list[str]) -> dict:
    answer = http.post("/v1/embeddings", json={"model": MINILM, "input": inputs})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_embed_gives_the_vector_of_v1_embeddings(sdk, http):
    model = sdk.embedding.model(MINILM)
    vector = model.embed(FOX)
    assert len(vector) == 384
    assert list(vector) == rest_embeddings(http, FOX)["data"][0]["embedding"]  # the same float32 numbers


def test_embed_of_a_list_is_one_vector_per_text(sdk, http):
    vectors = sdk.embedding.model(MINILM).embed([FOX, DOG])
    assert [list(v) for v in vectors] == [rest_embeddings(http, text)["data"][0]["embedding"] for text in (FOX, DOG)]
    together = rest_embeddings(http, [FOX, DOG])["data"]  # one batch over REST: equal to float tolerance
    for mine, theirs in zip(vectors, together, strict=True):
        assert mine == pytest.approx(theirs["embedding"], abs=1e-5)


def test_tokenize_and_count_tokens_are_the_tokens_embedded(sdk, http):
    model = sdk.embedding.model(MINILM)
    tokens = model.tokenize(FOX)
    rest = http.post("/tokenize", json={"model": MINILM, "content": FOX, "add_special": True, "parse_special": False})
    assert list(tokens) == rest.json()["tokens"]
    assert tokens[0] == 101 and tokens[-1] == 102  # BERT's [CLS] ... [SEP]
    assert model.count_tokens(FOX) == len(tokens) == rest_embeddings(http, FOX)["usage"]["prompt_tokens"]
    assert [list(t) for t in model.tokenize([FOX, DOG])] == [list(tokens), list(model.tokenize(DOG))]


def test_a_handle_whose_model_was_unloaded_loads_it_again_just_in_time(sdk, http):
    model = sdk.embedding.model(MINILM)
    expected = model.embed(DOG)
    model.unload()
    assert all(m["id"] != MINILM for m in http.get("/api/v0/models").json()["data"] if m["state"] == "loaded")
    assert model.embed(DOG) == expected  # by key, as /v1/embeddings would load it


# -- raw frames: what the SDK itself would not send


class Raw:
    def __init__(self, server: RunningServer):
        self.socket = connect(f"ws://127.0.0.1:{server.port}/embedding")
        self.socket.send(json.dumps({"authVersion": 1, "clientIdentifier": "guest:raw", "clientPasskey": "x"}))
        assert json.loads(self.socket.recv(timeout=10)) == {"success": True}
        self.calls = 0

    def call(self, endpoint: str, parameter) -> dict:
        self.calls += 1
        self.socket.send(json.dumps({"type": "rpcCall", "endpoint": endpoint, "callId": self.calls,
                                     "parameter": parameter}))
        answer = json.loads(self.socket.recv(timeout=120))
        assert answer["callId"] == self.calls
        return answer


@pytest.fixture
def raw(server):
    socket = Raw(server)
    yield socket
    socket.socket.close()


def query(identifier: str) -> dict:
    return {"type": "query", "query": {"identifier": identifier}}


def test_a_chat_model_is_not_an_embedding_model(raw):
    answer = raw.call("embedString", {"modelSpecifier": query(SMOLLM), "inputString": FOX})
    assert answer["type"] == "rpcError"
    assert answer["error"]["displayData"]["code"] == "generic.domainMismatch"
    assert "an LLM, not an embedding model" in answer["error"]["title"]


def test_no_model_matching_and_bad_fields_name_themselves(raw):
    answer = raw.call("embedString", {"modelSpecifier": query("nobody/nothing"), "inputString": FOX})
    assert answer["error"]["displayData"]["code"] == "generic.noModelMatchingQuery"
    answer = raw.call("embedString", {"modelSpecifier": query(MINILM), "inputString": ""})
    assert "'inputString' is empty" in answer["error"]["title"] and "inputString" in answer["error"]["cause"]
    answer = raw.call("countTokens", {"specifier": query(MINILM), "inputString": 7})
    assert "'inputString' must be a string" in answer["error"]["title"]
    answer = raw.call("tokenize", {"inputString": FOX})
    assert answer["type"] == "rpcError" and "specifier" in answer["error"]["title"]
    # the socket still serves
    assert raw.call("countTokens", {"specifier": query(MINILM), "inputString": ""})["result"] == {"tokenCount": 2}
