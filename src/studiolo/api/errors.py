"""Error responses in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Client mistakes are 4xx with a message that names the field; domain exceptions from the
layers below are mapped here, once, for every route.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from studiolo.chat.templates import TemplateError
from studiolo.engine.engine import ContextLengthExceeded, EngineClosed, InvalidTokens
from studiolo.engine.llama import ModelLoadError
from studiolo.models.catalog import AmbiguousModelName, ModelNotFound
from studiolo.models.manager import ModelNotLoaded
from studiolo.service.types import InvalidRequest

log = logging.getLogger(__name__)


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


DOMAIN_ERRORS = (
    ModelNotFound,
    ModelNotLoaded,
    AmbiguousModelName,
    ContextLengthExceeded,
    InvalidTokens,
    TemplateError,
    InvalidRequest,
    ModelLoadError,
    EngineClosed,
)


def from_domain(exc: Exception) -> APIError | None:
    """The API error a domain exception stands for, or None for unexpected ones."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, (ModelNotFound, ModelNotLoaded)):
        return APIError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, AmbiguousModelName):
        return APIError(400, str(exc), param="model", code="ambiguous_model")
    if isinstance(exc, ContextLengthExceeded):
        return APIError(400, str(exc), param=exc.param, code="context_length_exceeded")
    if isinstance(exc, InvalidTokens):
        return APIError(400, str(exc), param=exc.param, code="invalid_token")
    if isinstance(exc, TemplateError):
        return APIError(400, str(exc), param="messages", code="chat_template_error")
    if isinstance(exc, InvalidRequest):
        return APIError(400, str(exc), param=exc.param)
    if isinstance(exc, EngineClosed):
        return APIError(503, str(exc), type="server_error", param="model", code="model_unloaded")
    if isinstance(exc, ModelLoadError):
        return APIError(500, str(exc), type="server_error", param="model", code="model_load_failed")
    return None


def field_path(loc: tuple[Any, ...]) -> str:
    """('body', 'messages', 0, 'role') -> 'messages[0].role'."""
    path = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not _is_union_branch(part):
            path += f".{part}" if path else str(part)
    return path


def _is_union_branch(part: Any) -> bool:
    # pydantic names the union member it tried (e.g. 'str', 'list[str]', 'function-after[...]')
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool", "list", "dict"})


def describe_validation(errors: list[dict[str, Any]]) -> APIError:
    first = errors[0]
    if first.get("type") == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}".rstrip(": "))
    param = field_path(tuple(first.get("loc", ())))
    if not param:
        return APIError(400, "the request body must be a JSON object")
    message = first.get("msg", "invalid value")
    if first.get("type") == "missing":
        return APIError(400, f"'{param}' is required", param=param, code="missing_required_parameter")
    return APIError(400, f"invalid value for '{param}': {message}", param=param, code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = describe_validation(list(exc.errors()))
        return JSONResponse(error.body(), status_code=error.status)

    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"unknown endpoint: {request.method} {request.url.path}"
            error = APIError(404, message, code="unknown_url")
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
            error = APIError(405, message, code="method_not_allowed")
        else:
            error = APIError(exc.status_code, str(exc.detail))
        return JSONResponse(error.body(), status_code=error.status, headers=getattr(exc, "headers", None))

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        error = APIError(500, f"internal server error: {exc}", type="server_error")
        return JSONResponse(error.body(), status_code=error.status)

    async def on_domain_error(request: Request, exc: Exception) -> JSONResponse:
        error = from_domain(exc)
        return JSONResponse(error.body(), status_code=error.status)

    app.add_exception_handler(APIError, on_api_error)
    for domain_error in DOMAIN_ERRORS:
        app.add_exception_handler(domain_error, on_domain_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
