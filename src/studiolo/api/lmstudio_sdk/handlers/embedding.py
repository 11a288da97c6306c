"""The ``embedding`` namespace's own calls: ``embedString`` (``client.embedding.model(key).embed(text
or [texts])``; the SDKs send one call per text), ``tokenize`` and ``countTokens``. The model calls it
shares with ``llm`` (getOrLoad, listLoaded, unload, ...) are in models.py.

``embedString`` goes through the EmbeddingService that ``POST /v1/embeddings`` uses: the same model
resolution (a model key loads just in time), the same tokens, and the same float32 vector, so an
SDK's embedding equals the REST one for the same text. ``tokenize`` and ``countTokens`` give the
tokens an embedding of that text consumes, the model's special tokens included ([CLS] ... [SEP] for
BERT): ``countTokens`` is ``usage.prompt_tokens`` of /v1/embeddings for the text.
"""

from __future__ import annotations

from typing import Any

from studiolo.api.lmstudio_sdk.endpoints import Call, SdkError, namespace
from studiolo.api.lmstudio_sdk.handlers.specifiers import parse_specifier, resolve
from studiolo.domain.errors import InvalidRequest
from studiolo.service.embeddings import EmbeddingRequest, EmbeddingService
from studiolo.service.token_tools import TokenTools

embedding = namespace("embedding")


@embedding.rpc("embedString")
async def embed_string(call: Call, parameter: Any) -> dict[str, Any]:
    name = _model_name(call, parameter, "modelSpecifier")
    text = _input_string(parameter)
    service: EmbeddingService = call.state.embeddings
    result = await service.embed(EmbeddingRequest(name, [text]))
    # float32 as /v1/embeddings sends it: the same numbers, not float64 renderings of them
    return {"embedding": result.vectors[0].astype("<f4").tolist()}


@embedding.rpc("tokenize")
async def tokenize(call: Call, parameter: Any) -> dict[str, Any]:
    return {"tokens": await _tokens(call, parameter)}


@embedding.rpc("countTokens")
async def count_tokens(call: Call, parameter: Any) -> dict[str, Any]:
    return {"tokenCount": len(await _tokens(call, parameter))}


async def _tokens(call: Call, parameter: Any) -> list[int]:
    name = _model_name(call, parameter, "specifier")
    text = _input_string(parameter, allow_empty=True)
    tools: TokenTools = call.state.token_tools
    # as EmbeddingService tokenizes a text: special tokens added, none parsed out of the text
    pieces = await tools.tokenize(name, text, add_special=True, parse_special=False)
    return [piece.id for piece in pieces]


def _model_name(call: Call, parameter: Any, field: str) -> str:
    """What the service takes as the request's model: the loaded instance the specifier names, or the
    embedding model's key to load."""
    if not isinstance(parameter, dict):
        raise SdkError(f"the call needs an object with '{field}' and 'inputString'")
    return resolve(call.state.models, parse_specifier(parameter.get(field), field), "embedding").name


def _input_string(parameter: dict[str, Any], *, allow_empty: bool = False) -> str:
    text = parameter.get("inputString")
    if not isinstance(text, str):
        raise InvalidRequest("'inputString' must be a string", "inputString")
    if not text and not allow_empty:  # as /v1/embeddings refuses an empty input
        raise InvalidRequest("'inputString' is empty: there is nothing to embed", "inputString")
    return text
