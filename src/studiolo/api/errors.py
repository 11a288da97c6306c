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

from studiolo.api.private import without_paths
from studiolo.domain.errors import Kind, StudioloError

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
        message = without_paths(message)  # no absolute path on the server's disk reaches a client (api/private.py)
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

    @property
    def anthropic_status(self) -> int:
        return ANTHROPIC_STATUS.get(self.status, self.status)

    def body_anthropic(self) -> dict[str, Any]:
        """Anthropic's error: its type told by the status, the field first in the message, dotted as
        Anthropic names it (``messages.1.content.0.type: ...``)."""
        status = self.anthropic_status
        kind = ANTHROPIC_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
        message = self.message
        if self.param and self.param != "body":
            dotted = anthropic_field(self.param)
            message = f"{dotted}: {message.replace(repr(self.param), repr(dotted))}"
        return {"type": "error", "error": {"type": kind, "message": message}, "request_id": None}

    def response(self, request: Request) -> JSONResponse:
        path = request.url.path
        if is_anthropic_path(path):
            return JSONResponse(self.body_anthropic(), status_code=self.anthropic_status, headers=self.headers)
        v1 = path.startswith("/api/v1/")
        return JSONResponse(self.body_v1() if v1 else self.body(), status_code=self.status, headers=self.headers)


# Anthropic's Messages API (api/anthropic/): its error types by status, and unavailable (503) as its
# overloaded (529), which its SDKs retry
ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                   529: "overloaded_error"}
ANTHROPIC_STATUS = {503: 529}


def is_anthropic_path(path: str) -> bool:
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def anthropic_field(param: str) -> str:
    """'messages[1].content[0].type' -> 'messages.1.content.0.type'."""
    return param.replace("[", ".").replace("]", "")


# An error's kind decides its HTTP status, for every family (LM Studio's REST API answers with
# OpenAI's statuses); its code and param go into the body as they are.
STATUS_OF_KIND: dict[Kind, int] = {
    "invalid": 400,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "too_large": 413,
    "internal": 500,
    "not_implemented": 501,
    "upstream": 502,
    "failed_dependency": 424,  # OpenAI's answer when a request's MCP server cannot list its tools
    "unavailable": 503,
    "insufficient_storage": 507,
    "unauthorized": 401,
    "overloaded": 429,
}
# LM Studio's v1 error type, where the status alone does not say it
V1_TYPE_OF_CODE = {
    "model_not_found": "model_not_found",
    "job_not_found": "job_not_found",
    "mcp_connection_error": "mcp_connection_error",  # an MCP server of /api/v1/chat's integrations
    "repo_not_found": "model_not_found",
    "file_not_found": "model_not_found",
    "quantization_not_found": "model_not_found",
    "storage_unavailable": "storage_unavailable",
    "storage_full": "storage_full",
}
V1_TYPE_OF_KIND: dict[Kind, str] = {"not_implemented": "not_implemented", "upstream": "internal_error"}
V1_TYPE_OF_KIND["overloaded"] = "server_busy"  # a model's full queue (429)
# OpenAI's type, where the status does not say it
TYPE_OF_KIND: dict[Kind, str] = {"overloaded": "rate_limit_error", "failed_dependency": "external_connector_error"}


def from_domain(exc: BaseException) -> APIError | None:
    """The API error an exception stands for, or None for unexpected ones (bugs)."""
    if isinstance(exc, APIError):
        return exc
    return api_error(exc) if isinstance(exc, StudioloError) else None


def api_error(exc: StudioloError) -> APIError:
    """The API error a domain error stands for: its kind gives the status, nothing else is decided here."""
    status = STATUS_OF_KIND[exc.kind]
    return APIError(
        status,
        str(exc),
        type=TYPE_OF_KIND.get(exc.kind) or ("invalid_request_error" if status < 500 else "server_error"),
        param=exc.param,
        code=exc.code,
        v1_type=V1_TYPE_OF_CODE.get(exc.code or "") or V1_TYPE_OF_KIND.get(exc.kind),
        headers=_retry_headers(exc),
    )


def _retry_headers(exc: StudioloError) -> dict[str, str] | None:
    """Whether and when a client should try again: ``x-should-retry: false`` for an error that would come
    back (OpenAI's and Anthropic's SDKs read it), ``Retry-After`` seconds when the error says."""
    if not exc.retry:
        return {"x-should-retry": "false"}
    return {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None


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


# the tags of Anthropic's content blocks and image sources: pydantic puts the member it tried in the path
_ANTHROPIC_TAGS = frozenset({"text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking", "base64",
                             "url"})


def describe_anthropic_validation(errors: list[dict[str, Any]]) -> APIError:
    """Anthropic's way: pydantic's message after the field it is about. Of a union's errors, the one
    deepest in the value says best what is wrong (a block's bad type, not that content is no string)."""
    first = next((error for error in errors if error.get("type") == "value_error"), None)
    first = first or max(errors, key=lambda error: len(error.get("loc", ())))
    if first.get("type") == "json_invalid":
        return describe_validation([first])
    loc = tuple(first.get("loc", ()))
    kept = [part for index, part in enumerate(loc)
            if not (part in _ANTHROPIC_TAGS and 0 < index < len(loc) - 1
                    and (isinstance(loc[index - 1], int) or loc[index - 1] == "source"))]
    param = field_path(tuple(kept)) or "body"
    return APIError(400, first.get("msg", "invalid value"), param=param,
                    code="missing_required_parameter" if first.get("type") == "missing" else "invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    for handled in (APIError, StudioloError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(handled, _error_response)


async def _error_response(request: Request, exc: Exception) -> JSONResponse:
    error = _error_of(request, exc)
    response = error.response(request)
    if isinstance(exc, StarletteHTTPException):
        response.headers.update(exc.headers or {})
    return response


def _error_of(request: Request, exc: Exception) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, StudioloError):
        return api_error(exc)
    if isinstance(exc, RequestValidationError):
        if is_anthropic_path(request.url.path):
            return describe_anthropic_validation(list(exc.errors()))
        return describe_validation(list(exc.errors()))
    if isinstance(exc, StarletteHTTPException):
        return _http_error(request, exc)
    log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return APIError(500, f"internal server error: {exc}", type="server_error")


def _http_error(request: Request, exc: StarletteHTTPException) -> APIError:
    if exc.status_code == 404:
        return APIError(404, f"unknown endpoint: {request.method} {request.url.path}", code="unknown_url")
    if exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
        return APIError(405, message, code="method_not_allowed")
    return APIError(exc.status_code, str(exc.detail))
