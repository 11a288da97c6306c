"""``POST /v1/embeddings`` and LM Studio's ``POST /api/v0/embeddings``, in OpenAI's shape.

``input`` is a string, a list of strings, a list of token ids or a list of such lists (OpenAI's
four forms); ``encoding_format`` is ``float`` or ``base64`` (little-endian float32, as OpenAI's
clients decode it); ``dimensions`` keeps the first so many components and renormalizes them (as
OpenAI's text-embedding-3 models do). ``usage.prompt_tokens`` counts the tokens embedded, special
tokens included (LM Studio reports 0).
"""

from __future__ import annotations

import base64
import json
from typing import Any, Literal

import numpy as np
from fastapi import Request, Response
from pydantic import Field

from studiolo.api.body import Body
from studiolo.api.routing import CLIENT_CLOSED_REQUEST, make_router
from studiolo.api.sse import ClientDisconnected, until_disconnected
from studiolo.api.wire_types import Int
from studiolo.domain.auth import Permission
from studiolo.domain.errors import InvalidRequest
from studiolo.service.embeddings import EmbeddingRequest, EmbeddingService

router = make_router(permission=Permission.inference)
MAX_INPUTS = 2048  # OpenAI's limit on inputs per request


class EmbeddingBody(Body):
    model: str = Field(min_length=1)
    input: str | list[str] | list[Int] | list[list[Int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Int | None = Field(None, ge=1)
    ttl: float | None = Field(None, gt=0)

    def inputs(self) -> list[str | list[int]]:
        value = self.input
        if isinstance(value, str):
            items: list = [value]
        elif value and all(isinstance(item, int) for item in value):
            items = [list(value)]
        else:
            items = list(value)
        if not items:
            raise InvalidRequest("'input' is empty", "input")
        if len(items) > MAX_INPUTS:
            raise InvalidRequest(f"at most {MAX_INPUTS} inputs per request", "input")
        for index, item in enumerate(items):
            if not item:  # OpenAI refuses an empty string or token list
                raise InvalidRequest(f"input {index} is empty", f"input[{index}]")
        return items


def _service(request: Request) -> EmbeddingService:
    return request.app.state.embeddings


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingBody, request: Request):
    return await _embeddings(body, request)


@router.post("/api/v0/embeddings")
async def embeddings_v0(body: EmbeddingBody, request: Request):
    return await _embeddings(body, request)


async def _embeddings(body: EmbeddingBody, request: Request):
    inputs = body.inputs()
    try:
        work = _service(request).embed(EmbeddingRequest(body.model, inputs, body.ttl, body.dimensions))
        result = await until_disconnected(request, work)
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    data = [{"object": "embedding", "index": index, "embedding": _encoded(vector, body)}
            for index, vector in enumerate(result.vectors)]
    usage = {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}
    answer = {"object": "list", "data": data, "model": result.model, "usage": usage}
    # straight to JSON: FastAPI's jsonable_encoder walking 64 x 384 floats cost 20 ms a request
    return Response(json.dumps(answer, separators=(",", ":")), media_type="application/json")


def _encoded(vector: np.ndarray, body: EmbeddingBody) -> Any:
    if body.dimensions is not None:
        vector = vector[: body.dimensions]
        norm = float(np.linalg.norm(vector))
        vector = vector / norm if norm > 0 else vector
    vector = vector.astype("<f4")
    if body.encoding_format == "base64":
        return base64.b64encode(vector.tobytes()).decode("ascii")
    return vector.tolist()
