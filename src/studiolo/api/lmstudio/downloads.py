"""LM Studio v1 download endpoints: ``POST /api/v1/models/download`` and
``GET /api/v1/models/download/status/{job_id}``.

Errors come in LM Studio's v1 shape, as on every ``/api/v1`` route (api/errors.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ConfigDict, field_validator

from studiolo.api.errors import APIError
from studiolo.api.routing import make_router
from studiolo.service.downloads import (
    AmbiguousChoice,
    DownloadError,
    DownloadService,
    FileNotFound,
    FolderTaken,
    InvalidModelReference,
    JobNotFound,
    QuantizationNotFound,
    RepoGated,
    RepoNotFound,
    SplitModelUnsupported,
)

router = make_router()

# (HTTP status, v1 error type) for each way resolving a model can fail; anything else is the hub's fault
_DOWNLOAD_ERRORS: dict[type[DownloadError], tuple[int, str]] = {
    InvalidModelReference: (400, "invalid_request"),
    AmbiguousChoice: (400, "invalid_request"),
    RepoGated: (403, "invalid_request"),
    RepoNotFound: (404, "model_not_found"),
    FileNotFound: (404, "model_not_found"),
    QuantizationNotFound: (404, "model_not_found"),
    FolderTaken: (409, "invalid_request"),
    SplitModelUnsupported: (501, "not_implemented"),
}
_HUB_FAILURE = (502, "internal_error")


class DownloadBody(BaseModel):
    model_config = ConfigDict(extra="allow")

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
    try:
        # asks the hub, and may hash a file already present: keep it off the event loop
        return await asyncio.to_thread(downloads.start, body.model, body.quantization)
    except DownloadError as exc:
        status, kind = _DOWNLOAD_ERRORS.get(type(exc), _HUB_FAILURE)
        raise APIError(status, str(exc), code=exc.code, param=exc.param, v1_type=kind) from exc


@router.get("/api/v1/models/download/status/{job_id}")
async def download_status(job_id: str, request: Request) -> dict[str, Any]:
    try:
        return _downloads(request).status(job_id)
    except JobNotFound as exc:
        raise APIError(404, str(exc), code="job_not_found", param="job_id") from exc
