"""LM Studio v1 download endpoints: ``POST /api/v1/models/download`` and
``GET /api/v1/models/download/status/{job_id}``.

Errors come in LM Studio's v1 shape, as on every ``/api/v1`` route: each download error's kind
(models/hub_reference.py) gives its status, through api/errors.py's one table.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request
from pydantic import field_validator

from studiolo.api.body import Body
from studiolo.api.routing import make_router
from studiolo.domain.auth import Permission
from studiolo.service.downloads import DownloadService

router = make_router(permission=Permission.models)


class DownloadBody(Body):
    model: str  # a Hugging Face repo id or URL
    quantization: str | None = None  # e.g. "Q4_K_M"

    @field_validator("model", "quantization")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must be a non-empty string")
        return value


def _downloads(request: Request) -> DownloadService:
    return request.app.state.downloads


@router.post("/api/v1/models/download")
async def start_download(body: DownloadBody, request: Request) -> dict[str, Any]:
    downloads = _downloads(request)
    # asks the hub, and may hash a file already present: keep it off the event loop
    return await asyncio.to_thread(downloads.start, body.model, body.quantization)


@router.get("/api/v1/models/download/status/{job_id}")
async def download_status(job_id: str, request: Request) -> dict[str, Any]:
    return _downloads(request).status(job_id)
