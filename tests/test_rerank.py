"""``/v1/rerank`` end to end on a real server, with the test reranker (tests/reranker_model.py: MiniLM
with rank pooling and a random scoring head, JIT-loaded like any model).

The head was never trained, so these tests check the plumbing, not relevance: one score per
document, sorted highest first, ``top_n``, ``return_documents``, a batch scoring like the
documents one by one, the pair's tokens, every 400, and the model's type in the lists.
"""

from __future__ import annotations

import httpx
import pytest

from studiolo.engine.llama import LlamaModel
from studiolo.engine.rank_input import rank_pair_tokens
from tests.conftest import MINILM, SMOLLM, RunningServer, free_port, home_with_models
from tests.reranker_model import (
    RERANKER_KEY,
    UNKEYED_KEY,
    link_reranker,
    reranker_file,
    templated_reranker_file,
)

QUERY = "Where is the Eiffel tower?"
DOCUMENTS = [
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "Bananas are rich in potassium.",
    "Paris is the capital of France.",
    "The Great Wall of China is visible from space, some say.",
    "Gustave Eiffel's company designed and built the tower for the 1889 World's Fair.",
]


@pytest.fixture(scope="module")
def rerank_server(tmp_path_factory, default_models):
    models = {key: path for key, path in default_models.items() if key in (SMOLLM, MINILM)}
    home = link_reranker(home_with_models(tmp_path_factory.mktemp("rerank-home"), models))
    running = RunningServer(home, free_port(), [])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def http(rerank_server):
    with httpx.Client(base_url=rerank_server.base_url, timeout=120) as session:
        yield session


@pytest.fixture(scope="module")
def vocabulary():
    model = LlamaModel(reranker_file())
    yield model
    model.close()


def rerank(http: httpx.Client, path: str = "/v1/rerank", **fields) -> httpx.Response:
    return http.post(path, json={"model": RERANKER_KEY, "query": QUERY, "documents": DOCUMENTS, **fields})


def scores_by_index(body: dict) -> dict[int, float]:
    return {result["index"]: result["relevance_score"] for result in body["results"]}


def test_one_score_per_document_highest_first(http, vocabulary):
    response = rerank(http)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == RERANKER_KEY and body["object"] == "list" and body["id"].startswith("rerank-")
    results = body["results"]
    assert sorted(result["index"] for result in results) == list(range(len(DOCUMENTS)))
    scores = [result["relevance_score"] for result in results]
    assert scores == sorted(scores, reverse=True)
    assert len(set(scores)) == len(scores)  # a random head still tells these five apart
    assert all(set(result) == {"index", "relevance_score"} for result in results)  # no documents unless asked
    pair_tokens = sum(len(rank_pair_tokens(vocabulary, QUERY, document)) for document in DOCUMENTS)
    assert body["usage"] == {"prompt_tokens": pair_tokens, "total_tokens": pair_tokens}


def test_a_pair_is_cls_query_sep_document_sep(vocabulary):
    cls, sep = vocabulary.bos_id, vocabulary.sep_id
    query = vocabulary.tokenize("where is it?", add_special=False, parse_special=False)
    document = vocabulary.tokenize("In Paris [SEP] of course.", add_special=False, parse_special=False)
    assert rank_pair_tokens(vocabulary, "where is it?", "In Paris [SEP] of course.") == [
        cls, *query, sep, *document, sep]
    assert document.count(sep) == 0  # a document's "[SEP]" is text, not a separator


def test_a_rerank_prompt_in_the_gguf_is_filled_in_and_its_markup_parsed(vocabulary):
    model = LlamaModel(templated_reranker_file("[CLS] query: {query} [SEP] passage: {document} [SEP]"))
    try:
        def plain(text: str) -> list[int]:
            return vocabulary.tokenize(text, add_special=False, parse_special=False)

        cls, sep = vocabulary.bos_id, vocabulary.sep_id
        assert rank_pair_tokens(model, "Où est-il?", "In Paris.") == [
            cls, *plain("query: où est-il?"), sep, *plain("passage: in paris."), sep]
        # one pass: a query that says "{document}" keeps it as text
        assert rank_pair_tokens(model, "{document}", "x") == [
            cls, *plain("query: {document}"), sep, *plain("passage: x"), sep]
    finally:
        model.close()


def test_top_n_and_return_documents(http):
    full = rerank(http).json()["results"]
    top = rerank(http, top_n=2, return_documents=True).json()["results"]
    assert [(r["index"], r["relevance_score"]) for r in top] == [(r["index"], r["relevance_score"]) for r in full[:2]]
    assert [r["document"] for r in top] == [{"text": DOCUMENTS[r["index"]]} for r in top]
    everything = rerank(http, top_n=100).json()["results"]
    assert everything == full  # more than there are: all of them, as Cohere and Jina do


def test_document_objects_and_other_paths_score_the_same(http):
    expected = scores_by_index(rerank(http).json())
    objects = [{"text": document, "title": "ignored"} for document in DOCUMENTS]
    assert scores_by_index(rerank(http, documents=objects).json()) == expected
    for path in ("/rerank", "/v2/rerank"):
        response = rerank(http, path)
        assert response.status_code == 200, (path, response.text)
        assert scores_by_index(response.json()) == expected


def test_a_head_without_a_pooling_type_is_a_reranker_that_scores_the_same(http):
    """llama.cpp's converter writes no pooling type for BERT cross-encoders: the head decides, and the
    engine asks llama.cpp for rank pooling (the same graph: the very same scores)."""
    v1 = {model["key"]: model for model in http.get("/api/v1/models").json()["models"]}
    assert v1[UNKEYED_KEY]["type"] == "reranker"
    unkeyed = rerank(http, model=UNKEYED_KEY)
    assert unkeyed.status_code == 200, unkeyed.text
    assert scores_by_index(unkeyed.json()) == scores_by_index(rerank(http).json())


def test_batched_scores_equal_one_by_one(http):
    """The same scores up to rounding: a batch of five pairs runs other matrix shapes (and kernels, on F16
    weights) than a pair alone, as with embeddings (components within 2e-4), and the head amplifies that:
    measured here within 6.3e-3 on scores from -2.5 to 1.9, whose neighbours are at least 0.57 apart."""
    batched = scores_by_index(rerank(http).json())
    alone = {}
    for index, document in enumerate(DOCUMENTS):
        results = rerank(http, documents=[document]).json()["results"]
        assert [r["index"] for r in results] == [0]
        alone[index] = results[0]["relevance_score"]
    assert alone == pytest.approx(batched, abs=1.5e-2)
    assert sorted(alone, key=lambda i: -alone[i]) == sorted(batched, key=lambda i: -batched[i])


@pytest.mark.parametrize(
    ("fields", "param", "says"),
    [
        ({"documents": []}, "documents", "'documents' is empty"),
        ({"query": ""}, "query", "'query' is empty"),
        ({"query": "  "}, "query", "'query' is empty"),
        ({"top_n": 0}, "top_n", "at least 1"),
        ({"top_n": -3}, "top_n", "at least 1"),
        ({"model": SMOLLM}, "model", "it is a chat model"),
        ({"model": MINILM}, "model", "it is an embedding model"),
        ({"documents": ["short", "word " * 600]}, "documents[1]", "more than the model's context of 512"),
        ({"documents": ["x"] * 2049}, "documents", "more than 2048"),
    ],
)
def test_bad_requests_are_400_naming_the_field(http, fields, param, says):
    response = rerank(http, **fields)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and says in error["message"], error
    assert error["type"] == "invalid_request_error"


def test_an_unknown_model_is_404(http):
    assert rerank(http, model="nobody/nothing").status_code == 404


def test_lists_show_the_reranker_and_other_routes_refuse_it(http):
    v0 = {model["id"]: model for model in http.get("/api/v0/models").json()["data"]}
    assert v0[RERANKER_KEY]["type"] == "reranker" and v0[MINILM]["type"] == "embeddings"
    v1 = {model["key"]: model for model in http.get("/api/v1/models").json()["models"]}
    assert v1[RERANKER_KEY]["type"] == "reranker" and v1[MINILM]["type"] == "embedding"
    assert "capabilities" not in v1[RERANKER_KEY]

    embeddings = http.post("/v1/embeddings", json={"model": RERANKER_KEY, "input": "hello"})
    assert embeddings.status_code == 400 and embeddings.json()["error"]["param"] == "model"
    assert "is a reranker" in embeddings.json()["error"]["message"]
    chat = http.post("/v1/chat/completions", json={"model": RERANKER_KEY,
                                                   "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 400 and "is a reranker" in chat.json()["error"]["message"]
    question = {"type": "predicate", "instructions": "Is it about Paris?"}
    decisions = http.post("/v1/decisions", json={"model": RERANKER_KEY, "input": "hi", "questions": [question]})
    assert decisions.status_code == 400 and decisions.json()["error"]["param"] == "model"
    assert "is a reranker" in decisions.json()["error"]["message"]
    listed = {model["id"]: model for model in http.get("/v1/models").json()["data"]}
    assert "decisions" not in (listed[RERANKER_KEY].get("capabilities") or [])
    assert "decisions" not in v0[RERANKER_KEY].get("capabilities", [])
