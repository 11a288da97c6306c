"""Embeddings: inputs (texts or token ids) to normalized vectors, through the model's EmbeddingEngine."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from studiolo.domain.errors import InvalidRequest
from studiolo.engine.embedding import EmbeddingEngine
from studiolo.engine.llama import LlamaModel
from studiolo.models.manager import ModelManager


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    inputs: list[str | list[int]]
    ttl: float | None = None
    dimensions: int | None = None  # checked against the model's size before any work


@dataclass(frozen=True)
class Embeddings:
    model: str  # the instance that made them
    vectors: list[np.ndarray]
    prompt_tokens: int
    dimensions: int  # the model's own size


class EmbeddingService:
    def __init__(self, manager: ModelManager):
        self.manager = manager

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        if not self.manager.is_embedding_model(request.model):  # before loading a chat model for nothing
            info = self.manager.model_info(request.model)
            if info is not None and info.is_reranker:
                raise InvalidRequest(f"'{request.model}' is a reranker: it scores documents against a query "
                                     "(/v1/rerank), it makes no embeddings", "model")
            raise InvalidRequest(f"'{request.model}' is not an embedding model; load one (type embeddings) "
                                 "to get embeddings", "model")
        target = await self.manager.get(request.model, ttl=request.ttl)
        if target.adapter is not None:
            raise InvalidRequest(f"'{request.model}' is a LoRA adapter of an embedding model; adapters apply to "
                                 "chat and completions only", "model")
        engine = target.instance.engine
        assert isinstance(engine, EmbeddingEngine)
        model = target.instance.model
        if request.dimensions is not None and request.dimensions > model.n_embd_out:
            raise InvalidRequest(f"'dimensions' is {request.dimensions}, more than the model's {model.n_embd_out}",
                                 "dimensions")
        # off the event loop: 2,048 long texts take seconds to tokenize, and other clients wait meanwhile
        inputs = await asyncio.to_thread(_tokenized, engine, model, request.inputs)
        vectors = await engine.embed(inputs)
        return Embeddings(target.name, vectors, sum(len(tokens) for tokens in inputs), model.n_embd_out)


def _tokenized(engine: EmbeddingEngine, model: LlamaModel, items: list[str | list[int]]) -> list[list[int]]:
    """Token lists for the inputs, each checked as soon as it is made: the first bad one ends the work."""
    inputs = []
    for index, item in enumerate(items):
        # a text gets the model's special tokens ([CLS] ... [SEP] for BERT); token ids are taken as given
        tokens = model.tokenize(item, add_special=True, parse_special=False) if isinstance(item, str) else item
        engine.check_input(index, tokens)
        inputs.append(tokens)
    return inputs


def check_generation_model(manager: ModelManager, name: str) -> None:
    """Chat and completions need a generative model: an embedding model or a reranker is a 400 naming it."""
    info = manager.model_info(name)  # raises for unknown names; None: loading will say what is wrong
    if info is not None and info.is_embedding:
        raise InvalidRequest(f"'{name}' is an embedding model: it makes embeddings (/v1/embeddings), not "
                             "chat or completions", "model")
    if info is not None and info.is_reranker:
        raise InvalidRequest(f"'{name}' is a reranker: it scores documents (/v1/rerank), not chat or "
                             "completions", "model")
