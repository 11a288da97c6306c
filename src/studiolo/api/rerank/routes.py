"""``POST /v1/rerank`` (and ``/rerank``, ``/v2/rerank``): a query and documents in, the documents' relevance
scores out, highest first.

The shape llama-server, vLLM, Jina and Cohere share: ``model``, ``query``, ``documents`` (strings,
or Jina's and Cohere's objects ``{"text": ...}``), ``top_n`` (default: every document) and
``return_documents`` (default false, as Cohere and llama-server; Jina's default is true). The answer
is ``{"id", "object": "list", "model", "results": [{"index", "relevance_score", "document"?:
{"text"}}], "usage": {"prompt_tokens", "total_tokens"}}``, results sorted by score, highest first.
docs/API.md has the decisions.
"""

from __future__ import annotations

import json
import uuid

from fastapi import Request, Response
from pydantic import Field

from studiolo.api.body import Body
from studiolo.api.routing import CLIENT_CLOSED_REQUEST, make_router
from studiolo.api.sse import ClientDisconnected, until_disconnected
from studiolo.api.wire_types import Int
from studiolo.domain.auth import Permission
from studiolo.service.rerank import Ranking, RerankRequest, RerankService

router = make_router(permission=Permission.inference)
MAX_DOCUMENTS = 2048  # as embeddings' inputs: each is one sequence of a batch


class DocumentObject(Body):
    """Jina's and Cohere's document object: its ``text`` is what is ranked (other fields are ignored)."""

    text: str


class RerankBody(Body):
    model: str = Field(min_length=1)
    query: str
    documents: list[str | DocumentObject]
    top_n: Int | None = None  # checked by the service, so that its 400 says what is wrong
    return_documents: bool = False
    ttl: float | None = Field(None, gt=0)

    def texts(self) -> list[str]:
        # their number and size were bounded before validation (api/request_body.py)
        return [item if isinstance(item, str) else item.text for item in self.documents]


def _service(request: Request) -> RerankService:
    return request.app.state.rerank


@router.post("/v1/rerank")
@router.post("/rerank")  # llama-server's and Jina's path
@router.post("/v2/rerank")  # vLLM's Cohere-style path
async def rerank(body: RerankBody, request: Request):
    texts = body.texts()
    work = _service(request).rerank(RerankRequest(body.model, body.query, texts, body.top_n, body.ttl))
    try:
        ranking = await until_disconnected(request, work)
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    answer = rendered(ranking, texts if body.return_documents else None)
    return Response(json.dumps(answer, separators=(",", ":")), media_type="application/json")


def rendered(ranking: Ranking, texts: list[str] | None) -> dict:
    """The wire answer; ``texts``: the documents, to return each with its result (None: not asked for)."""
    results = []
    for ranked in ranking.results:
        result: dict = {"index": ranked.index, "relevance_score": ranked.score}
        if texts is not None:
            result["document"] = {"text": texts[ranked.index]}
        results.append(result)
    usage = {"prompt_tokens": ranking.prompt_tokens, "total_tokens": ranking.prompt_tokens}
    return {"id": f"rerank-{uuid.uuid4().hex}", "object": "list", "model": ranking.model, "results": results,
            "usage": usage}
