"""The one error base of every floor, and what decides how a client sees an error.

Every error a client can cause or meet derives from ``StudioloError``. Three things decide its
answer, and nothing else does: its ``kind`` (what went wrong, in terms any API family can map to
its own status), its ``code`` (a stable machine-readable name, OpenAI's ``error.code``) and its
``param`` (the request field it is about). ``retry`` False tells clients that retry server errors
by themselves (OpenAI's and Anthropic's SDKs) that this one would fail again. Each API family
turns a kind into its status with one table (``api/errors.py``); no route catches and renames.

Errors are defined where they arise (a floor raises its own), each naming its kind and code::

    StudioloError                     kind                  HTTP
    ├── InvalidRequest                invalid               400
    │   └── (bad input everywhere: ContextLengthExceeded, InvalidConstraint, TemplateError, ...)
    ├── Unauthorized                  unauthorized          401   no valid API token (domain/auth.py)
    ├── Forbidden                     forbidden             403
    ├── NotFound                      not_found             404
    │   └── (ModelNotFound, ResponseNotFound, InstanceNotFound, JobNotFound, ...)
    ├── Conflict                      conflict              409
    ├── (kind too_large)              too_large             413
    ├── InternalError                 internal              500
    │   └── (ModelLoadFailed, GenerationFailed, ...)
    ├── (kind not_implemented)        not_implemented       501
    ├── (kind upstream)               upstream              502   a server we depend on failed
    ├── (kind failed_dependency)      failed_dependency     424   a server the request named failed
    ├── Overloaded                    overloaded            429   too much waits already (QueueFull)
    └── Unavailable                   unavailable           503
        └── (EngineClosed, ModelBusy, StorageUnavailable; StorageFull: insufficient_storage 507)

Exceptions used for control flow inside a floor (a stopped render, a truncated read) are not
``StudioloError``: they never reach a client.
"""

from __future__ import annotations

from typing import ClassVar, Literal

Kind = Literal[
    "invalid",
    "forbidden",
    "not_found",
    "conflict",
    "too_large",
    "internal",
    "not_implemented",
    "upstream",
    "failed_dependency",
    "unavailable",
    "insufficient_storage",
    "unauthorized",
    "overloaded",
]


class StudioloError(Exception):
    """An error with a kind, a code and the field it is about.

    Subclasses set the class defaults; ``param`` and ``code`` given to the constructor win over
    them (one class may be raised about different fields).
    """

    kind: ClassVar[Kind] = "internal"
    code: str | None = None
    param: str | None = None
    retry: ClassVar[bool] = True
    retry_after: int | None = None  # seconds a client should wait before trying again (HTTP Retry-After)

    def __init__(self, message: str = "", param: str | None = None, *, code: str | None = None):
        super().__init__(message)
        if param is not None:
            self.param = param
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class InvalidRequest(StudioloError, ValueError):
    """A request that cannot be carried out as asked; ``param`` names the field."""

    kind: ClassVar[Kind] = "invalid"


class Unauthorized(StudioloError):
    """The request carries no valid API token (the server requires one)."""

    kind: ClassVar[Kind] = "unauthorized"
    retry: ClassVar[bool] = False


class Forbidden(StudioloError):
    kind: ClassVar[Kind] = "forbidden"


class NotFound(StudioloError, LookupError):
    kind: ClassVar[Kind] = "not_found"


class Conflict(StudioloError):
    kind: ClassVar[Kind] = "conflict"


class InternalError(StudioloError, RuntimeError):
    """The server failed at something it should have done (a load, a generation)."""

    kind: ClassVar[Kind] = "internal"


class Unavailable(StudioloError, RuntimeError):
    """What the request needs is not available now (a model unloading, a busy model, the disk)."""

    kind: ClassVar[Kind] = "unavailable"


class Overloaded(StudioloError):
    """The server has more work waiting than it takes (a model's full queue); ``retry_after`` says when to
    try again."""

    kind: ClassVar[Kind] = "overloaded"
