"""``/api/v1/tokens``: API tokens, for a caller with the admin permission (``studiolo token`` does the
same on the home's file directly). LM Studio makes tokens only in its GUI; these routes are studiolo's.

``POST`` answers the token's text once, in ``token``; nothing can show it again. ``DELETE`` revokes:
the token's next request fails, and its open streams end at their next event.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import Request
from pydantic import Field

from studiolo.api.body import Body
from studiolo.api.routing import make_router
from studiolo.domain.auth import Permission, TokenInfo
from studiolo.domain.errors import Unavailable
from studiolo.service.auth import TokenService

router = make_router(prefix="/api/v1", permission=Permission.admin)


class CreateTokenBody(Body):
    name: str
    permissions: list[str] = Field(default_factory=lambda: [Permission.inference.value])
    expires_in: str | int | None = None  # a duration (30d, 12h, 90m, 45s, 2w) or seconds; None: never


def token_json(info: TokenInfo) -> dict[str, Any]:
    return info.listing(time.time())


def _tokens(request: Request) -> TokenService:
    tokens = getattr(request.app.state, "tokens", None)
    if tokens is None:
        raise Unavailable("the API token file cannot be opened (see the server's log)", code="tokens_unavailable")
    return tokens


@router.get("/tokens")
async def list_tokens(request: Request) -> dict[str, Any]:
    infos = await asyncio.to_thread(_tokens(request).list)
    return {"tokens": [token_json(info) for info in infos]}


@router.post("/tokens")
async def create_token(body: CreateTokenBody, request: Request) -> dict[str, Any]:
    made = await asyncio.to_thread(_tokens(request).create, body.name, body.permissions, body.expires_in)
    return {**token_json(made.info), "token": made.text}


@router.delete("/tokens/{token_id}")
async def revoke_token(token_id: str, request: Request) -> dict[str, Any]:
    info = await asyncio.to_thread(_tokens(request).revoke, token_id)
    return token_json(info)
