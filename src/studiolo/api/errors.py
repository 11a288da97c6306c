"""Error responses: OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` (with
BladeLLM's ``"error_info": {"code", "message"}`` beside it), and on
LM Studio's ``/api/v1/*`` its v1 shape ``{"error": {"type", "message", "code", "param"}}`` whose
``type`` is one of LM Studio's (``invalid_request``, ``model_not_found``, ``internal_error``, ...).

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
from studiolo.engine.embedding import InputTooLong
from studiolo.engine.engine import ContextLengthExceeded, EngineClosed, InvalidTokens
from studiolo.engine.llama import ModelClosed, ModelLoadError
from studiolo.models.adapters import AdapterLoadFailed
from studiolo.models.catalog import AmbiguousModelName, ModelNotFound
from studiolo.models.manager import (
    AdapterNotLoadable,
    IdentifierTaken,
    InstanceNotFound,
    ModelBusy,
    ModelFileUnloadable,
    ModelLoadFailed,
    ModelNotLoaded,
)
from studiolo.models.memory import InsufficientMemory
from studiolo.service.generation import ConstraintFailed, GenerationFailed, UnloadedWhileGenerating
from studiolo.service.types import InvalidRequest
from studiolo.store.faults import StorageFull, StorageUnavailable
from studiolo.store.responses import InvalidResponseId, ResponseNotFound

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
        v1_type: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.v1_type = v1_type  # LM Studio's v1 error type, when the status and code do not tell it
        self.headers = headers

    def body(self) -> dict[str, Any]:
        """OpenAI's error, with BladeLLM's ``error_info`` beside it (its code: the HTTP status)."""
        return {
            "error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code},
            "error_info": {"code": self.status, "message": self.message},
        }

    def body_v1(self) -> dict[str, Any]:
        kind = self.v1_type
        if kind is None and self.code in ("model_not_found", "job_not_found"):
            kind = self.code
        elif kind is None:
            kind = "invalid_request" if self.status < 500 else "internal_error"
        return {"error": {"type": kind, "message": self.message, "code": self.code, "param": self.param}}

    def response(self, request: Request) -> JSONResponse:
        v1 = request.url.path.startswith("/api/v1/")
        return JSONResponse(self.body_v1() if v1 else self.body(), status_code=self.status, headers=self.headers)


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
    ModelClosed,
    InstanceNotFound,
    IdentifierTaken,
    ModelBusy,
    ModelLoadFailed,
    AdapterLoadFailed,
    AdapterNotLoadable,
    InsufficientMemory,
    ResponseNotFound,
    InvalidResponseId,
    InputTooLong,
    GenerationFailed,
    StorageUnavailable,
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
        return APIError(400, str(exc), param=exc.param, code="chat_template_error")
    if isinstance(exc, InvalidRequest):
        return APIError(400, str(exc), param=exc.param)
    if isinstance(exc, (EngineClosed, ModelClosed, UnloadedWhileGenerating)):
        return APIError(503, str(exc), type="server_error", param="model", code="model_unloaded")
    if isinstance(exc, ConstraintFailed):  # the client's grammar, too complex to follow to the end
        return APIError(400, str(exc), param=exc.param, code="constraint_too_complex")
    if isinstance(exc, GenerationFailed):
        return APIError(500, str(exc), type="server_error", code="generation_failed")
    if isinstance(exc, InputTooLong):
        return APIError(400, str(exc), param=exc.param, code="context_length_exceeded")
    if isinstance(exc, ResponseNotFound):
        return APIError(404, str(exc), param="previous_response_id", code="response_not_found")
    if isinstance(exc, InvalidResponseId):
        return APIError(400, str(exc), param="previous_response_id", code="invalid_response_id")
    if isinstance(exc, AdapterNotLoadable):
        return APIError(400, str(exc), param="model", code="model_is_adapter")
    if isinstance(exc, ModelFileUnloadable):
        # OpenAI's and Anthropic's clients retry a 5xx unless told not to: the file will fail again
        return APIError(500, str(exc), type="server_error", param="model", code="model_load_failed",
                        headers={"x-should-retry": "false"})
    if isinstance(exc, (ModelLoadError, ModelLoadFailed, AdapterLoadFailed)):
        return APIError(500, str(exc), type="server_error", param="model", code="model_load_failed")
    if isinstance(exc, InstanceNotFound):
        return APIError(404, str(exc), param="instance_id", code="model_not_found")
    if isinstance(exc, IdentifierTaken):
        return APIError(400, str(exc), param="identifier", code="identifier_taken")
    if isinstance(exc, ModelBusy):
        return APIError(503, str(exc), type="server_error", param="model", code="model_busy")
    if isinstance(exc, InsufficientMemory):
        # the request can be made to fit (a shorter context, fewer parallel sequences)
        return APIError(400, str(exc), param="model", code="insufficient_memory")
    if isinstance(exc, StorageUnavailable):
        # the disk or the database, not the request (nor a bug); retrying at once would not help
        return APIError(507 if isinstance(exc, StorageFull) else 503, str(exc), type="server_error", code=exc.code,
                        v1_type=exc.code, headers={"x-should-retry": "false"})
    return None


# where FastAPI says a request value came from: the field's own name is what a client sent
_SOURCES = ("body", "query", "path", "header", "cookie")


def field_path(loc: tuple[Any, ...]) -> str:
    """('body', 'messages', 0, 'role') -> 'messages[0].role'; ('query', 'limit') -> 'limit'."""
    path = ""
    for part in loc[1:] if loc and loc[0] in _SOURCES else loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not _is_union_branch(part):
            path += f".{part}" if path else str(part)
    return path


def _is_union_branch(part: Any) -> bool:
    # pydantic names the union member it tried (e.g. 'str', 'list[str]', 'function-after[...]')
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool", "list", "dict"})


def describe_validation(errors: list[dict[str, Any]]) -> APIError:
    # a union field gives one error per member; a rule of ours (value_error) says best what is wrong
    first = next((error for error in errors if error.get("type") == "value_error"), errors[0])
    if first.get("type") == "json_invalid":
        message = f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}".rstrip(": ")
        return APIError(400, message, param="body", code="invalid_json")
    param = field_path(tuple(first.get("loc", ())))
    if not param:
        return APIError(400, "the request body ('body') must be a JSON object", param="body", code="invalid_value")
    message = first.get("msg", "invalid value")
    if first.get("type") == "missing":
        return APIError(400, f"'{param}' is required", param=param, code="missing_required_parameter")
    return APIError(400, f"invalid value for '{param}': {message}", param=param, code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response(request)

    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return describe_validation(list(exc.errors())).response(request)

    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"unknown endpoint: {request.method} {request.url.path}"
            error = APIError(404, message, code="unknown_url")
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
            error = APIError(405, message, code="method_not_allowed")
        else:
            error = APIError(exc.status_code, str(exc.detail))
        response = error.response(request)
        response.headers.update(getattr(exc, "headers", None) or {})
        return response

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return APIError(500, f"internal server error: {exc}", type="server_error").response(request)

    async def on_domain_error(request: Request, exc: Exception) -> JSONResponse:
        return from_domain(exc).response(request)

    app.add_exception_handler(APIError, on_api_error)
    for domain_error in DOMAIN_ERRORS:
        app.add_exception_handler(domain_error, on_domain_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
