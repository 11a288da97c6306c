"""LM Studio v1 download endpoints: ``POST /api/v1/models/download`` and
``GET /api/v1/models/download/status/{job_id}``.

Errors come in LM Studio's v1 shape, ``{"error": {"type", "message", "code", "param"}}``.
The app's global validation handler renders OpenAI's shape, so the body is parsed here,
by hand, rather than through a pydantic parameter.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from studiolo.models.download import (
    AmbiguousChoice,
    DownloadError,
    FileNotFound,
    FolderTaken,
    InvalidModelReference,
    QuantizationNotFound,
    RepoGated,
    RepoNotFound,
    SplitModelUnsupported,
)
from studiolo.models.download_jobs import DownloadJobs, JobNotFound

router = APIRouter()

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


def v1_error(status: int, type: str, message: str, *, code: str | None = None, param: str | None = None) -> JSONResponse:
    """An error response in LM Studio's v1 shape."""
    body = {"error": {"type": type, "message": message, "code": code, "param": param}}
    return JSONResponse(body, status_code=status)


class BadBody(ValueError):
    def __init__(self, message: str, *, param: str | None = None, code: str = "invalid_value"):
        super().__init__(message)
        self.param = param
        self.code = code

    def response(self) -> JSONResponse:
        return v1_error(400, "invalid_request", str(self), code=self.code, param=self.param)


def parse_download_body(raw: bytes) -> tuple[str, str | None]:
    """The request's (model, quantization), or BadBody naming the field at fault."""
    try:
        body: Any = json.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        raise BadBody(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadBody("the request body must be a JSON object")
    model = body.get("model")
    if model is None:
        raise BadBody("'model' is required", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model.strip():
        raise BadBody("'model' must be a non-empty string: a Hugging Face repo id or URL", param="model")
    quantization = body.get("quantization")
    if quantization is not None and (not isinstance(quantization, str) or not quantization.strip()):
        raise BadBody("'quantization' must be a non-empty string such as \"Q4_K_M\"", param="quantization")
    return model, quantization


def download_registry(app: FastAPI) -> DownloadJobs:
    """The app's registry, made on first use (the lifespan may also set it up, and close it)."""
    registry = getattr(app.state, "downloads", None)
    if registry is None:
        registry = app.state.downloads = DownloadJobs()
    return registry


def _download_error(exc: DownloadError) -> JSONResponse:
    status, kind = _DOWNLOAD_ERRORS.get(type(exc), _HUB_FAILURE)
    return v1_error(status, kind, str(exc), code=exc.code, param=exc.param)


@router.post("/api/v1/models/download")
async def start_download(request: Request) -> JSONResponse:
    try:
        model, quantization = parse_download_body(await request.body())
    except BadBody as exc:
        return exc.response()
    registry = download_registry(request.app)
    try:
        # asks the hub, and may hash a file already present: keep it off the event loop
        body = await asyncio.to_thread(registry.submit, model, quantization)
    except DownloadError as exc:
        return _download_error(exc)
    return JSONResponse(body)


@router.get("/api/v1/models/download/status/{job_id}")
async def download_status(job_id: str, request: Request) -> JSONResponse:
    try:
        return JSONResponse(download_registry(request.app).status(job_id))
    except JobNotFound as exc:
        return v1_error(404, "job_not_found", str(exc), code="job_not_found", param="job_id")
