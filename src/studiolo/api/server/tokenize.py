"""``POST /tokenize``, ``/detokenize`` and ``/apply-template``: llama-server's token utilities, in its shapes.

- ``/tokenize`` ``{content, add_special=false, parse_special=true, with_pieces=false}`` ->
  ``{"tokens": [ids]}``, or with pieces ``{"tokens": [{"id", "piece"}]}``: a piece is a string when its
  bytes are valid UTF-8, else the list of its bytes (a token holding part of a character).
- ``/detokenize`` ``{tokens}`` -> ``{"content"}``, special tokens written out.
- ``/apply-template``: a chat completion's body -> ``{"prompt"}``, the text the model would be given
  (tools, ``chat_template_kwargs`` and reasoning settings applied; images shown as ``<image N: ...>``),
  with its token count beside it (``n_tokens``, studiolo's addition), nothing generated.

Each also takes ``model`` (llama-server serves one model and needs none; here it may be left out when
exactly one model is loaded). Client disconnects cancel a JIT load or a long render as elsewhere.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request, Response

from studiolo.api.body import Body
from studiolo.api.openai.schemas import ChatCompletionBody
from studiolo.api.routing import CLIENT_CLOSED_REQUEST, make_router, request_limits
from studiolo.api.sse import ClientDisconnected, until_disconnected
from studiolo.api.wire_types import Int
from studiolo.domain.auth import Permission
from studiolo.service.token_tools import TokenPiece, TokenTools

router = make_router(permission=Permission.inference)


class TokenizeBody(Body):
    model: str | None = None
    content: str
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False


class DetokenizeBody(Body):
    model: str | None = None
    tokens: list[Int]


class ApplyTemplateBody(ChatCompletionBody):
    model: str = ""  # the one model loaded, when left out


def _tools(request: Request) -> TokenTools:
    return request.app.state.token_tools


def _piece(piece: bytes) -> str | list[int]:
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return list(piece)


def _tokens(pieces: list[TokenPiece], with_pieces: bool) -> list[Any]:
    if with_pieces:
        return [{"id": p.id, "piece": _piece(p.piece)} for p in pieces]
    return [p.id for p in pieces]


@router.post("/tokenize")
async def tokenize(body: TokenizeBody, request: Request):
    work = _tools(request).tokenize(body.model, body.content, add_special=body.add_special,
                                    parse_special=body.parse_special)
    try:
        pieces = await until_disconnected(request, work)
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    return {"tokens": _tokens(pieces, body.with_pieces)}


@router.post("/detokenize")
async def detokenize(body: DetokenizeBody, request: Request):
    try:
        content = await until_disconnected(request, _tools(request).detokenize(body.model, body.tokens))
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    return {"content": content}


@router.post("/apply-template")
async def apply_template(body: ApplyTemplateBody, request: Request):
    chat = await asyncio.to_thread(body.to_domain, request_limits(request).max_json_depth)
    try:
        prompt = await until_disconnected(request, _tools(request).chat_prompt(chat))
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    return {"prompt": prompt.text, "n_tokens": len(prompt.tokens)}

