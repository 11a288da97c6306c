"""Rerank: a query and documents to a relevance score per document, through a reranker's
EmbeddingEngine (rank pooling), highest first.

Each document is scored as one (query, document) pair (engine/rank_input.py), all of a request's
pairs batched together like embeddings' inputs. The score is the model's classification head's
output as llama.cpp gives it, as llama-server returns it: a logit for a BERT or XLM-RoBERTa
cross-encoder, a probability for Qwen3-Reranker (its graph ends in a softmax). Ties keep the
documents' order.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from studiolo.domain.errors import InvalidRequest
from studiolo.engine.embedding import EmbeddingEngine
from studiolo.engine.llama import LlamaModel
from studiolo.engine.rank_input import rank_pair_tokens
from studiolo.models.manager import ModelManager

DOCUMENTS_FIELD = "documents"


@dataclass(frozen=True)
class RerankRequest:
    model: str
    query: str
    documents: list[str]
    top_n: int | None = None  # None: every document
    ttl: float | None = None


@dataclass(frozen=True)
class Ranked:
    index: int  # of the document in the request
    score: float


@dataclass(frozen=True)
class Ranking:
    model: str  # the instance that scored them
    results: list[Ranked]  # highest score first, at most top_n
    prompt_tokens: int  # of every pair scored, special tokens included


class RerankService:
    def __init__(self, manager: ModelManager):
        self.manager = manager

    async def rerank(self, request: RerankRequest) -> Ranking:
        _check_request(request)
        self._check_reranker(request.model)  # before loading a chat model for nothing
        target = await self.manager.get(request.model, ttl=request.ttl)
        if target.adapter is not None:
            raise InvalidRequest(f"'{request.model}' is a LoRA adapter; adapters apply to chat and completions "
                                 "only", "model")
        engine = target.instance.engine
        if not isinstance(engine, EmbeddingEngine) or not engine.ranks:
            raise _not_a_reranker(request.model, "its loaded instance has no rank pooling")
        # off the event loop: a thousand long documents take a while to tokenize
        pairs = await asyncio.to_thread(_pair_tokens, engine, target.instance.model, request)
        scores = await engine.score(pairs, DOCUMENTS_FIELD)
        order = sorted(range(len(scores)), key=lambda index: (-scores[index], index))
        results = [Ranked(index, scores[index]) for index in order[: request.top_n]]
        return Ranking(target.name, results, sum(len(tokens) for tokens in pairs))

    def _check_reranker(self, name: str) -> None:
        info = self.manager.model_info(name)  # raises for a model that is not there
        if info is None or info.is_reranker:  # None: an unreadable file, which loading explains
            return
        if info.is_embedding:
            raise _not_a_reranker(name, "it is an embedding model (/v1/embeddings)")
        raise _not_a_reranker(name, "it is a chat model (/v1/chat/completions)")


def _check_request(request: RerankRequest) -> None:
    if not request.query.strip():
        raise InvalidRequest("'query' is empty", "query")
    if not request.documents:
        raise InvalidRequest("'documents' is empty: give at least one document to rank", DOCUMENTS_FIELD)
    if request.top_n is not None and request.top_n < 1:
        raise InvalidRequest(f"'top_n' is {request.top_n}; it must be at least 1", "top_n")


def _not_a_reranker(name: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"'{name}' is not a reranker: {why}. Rerank needs a model with rank pooling "
                          "(`studiolo ls` shows them as type reranker)", "model", code="model_not_reranker")


def _pair_tokens(engine: EmbeddingEngine, model: LlamaModel, request: RerankRequest) -> list[list[int]]:
    """Each document's pair with the query, checked as soon as it is made: the first too long ends the work."""
    pairs = []
    for index, document in enumerate(request.documents):
        tokens = rank_pair_tokens(model, request.query, document)
        engine.check_input(index, tokens, DOCUMENTS_FIELD)
        pairs.append(tokens)
    return pairs

