"""API tokens as every floor sees them: permissions, a token's public record, its text format, the
errors a request without the right token gets, and who owns what the current request stores.

A token's text is LM Studio's, ``sk-lm-<public id>:<secret>``: the public id (8 hex digits) names the
token in listings, logs and ``studiolo token revoke``; the secret (20 letters and digits, about 119
random bits) is shown once, when the token is made, and only its hash is kept. That is the shape
LM Studio's SDKs accept as an API token (lmstudio-js checks
``^sk-lm-(?<clientIdentifier>[a-zA-Z0-9]{8}):(?<clientPasskey>[a-zA-Z0-9]{20})$`` and sends the two
halves in its socket's handshake), so one token serves REST clients and the SDKs alike. 119 random
bits are still beyond guessing: a fast hash keeps them safe (store/tokens.py). Tokens made before
(a 43-character URL-safe secret, 256 bits) keep working over REST; the SDKs refuse their shape.
"""

from __future__ import annotations

import re
import secrets
import string
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from studiolo.domain.errors import Forbidden, InvalidRequest, Unauthorized

TOKEN_PREFIX = "sk-lm-"
PUBLIC_ID_HEX_DIGITS = 8
SECRET_LENGTH = 20  # lmstudio-js's clientPasskey: [a-zA-Z0-9]{20}
SECRET_ALPHABET = string.ascii_letters + string.digits  # 62 symbols: 20 of them carry 119 bits
_TOKEN_TEXT = re.compile(r"sk-lm-([0-9a-f]{8}):([A-Za-z0-9_-]{16,128})")


class Permission(StrEnum):
    """What a token may do. ``inference``: generation, embeddings, listing models, stored responses;
    ``models``: load, unload, download, import and their job status; ``admin``: tokens, the log
    stream, settings, memory. No permission implies another."""

    inference = "inference"
    models = "models"
    admin = "admin"


# a route anyone may call, token or not (only liveness): what a route declares instead of a permission
PUBLIC = "public"


@dataclass(frozen=True)
class TokenInfo:
    """A token's record, as listed (never its secret)."""

    id: str  # the public id
    name: str
    permissions: tuple[Permission, ...]
    created_at: float  # unix seconds
    expires_at: float | None = None
    revoked_at: float | None = None

    def usable(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def state(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "active" if self.usable(now) else "expired"

    def listing(self, now: float) -> dict[str, Any]:
        """The record as ``/api/v1/tokens`` and ``studiolo token ls --json`` show it (unix seconds)."""
        def seconds(value: float | None) -> int | None:
            return None if value is None else int(value)

        return {"id": self.id, "name": self.name, "permissions": [p.value for p in self.permissions],
                "created_at": int(self.created_at), "expires_at": seconds(self.expires_at),
                "revoked_at": seconds(self.revoked_at), "state": self.state(now)}


class InvalidApiKey(Unauthorized):
    """No token, or one that is malformed, unknown, revoked or expired. The message never repeats what
    the client sent: a token that reached the wrong server must not end up in its logs."""

    code = "invalid_api_key"

    def __init__(self, message: str | None = None):
        super().__init__(message or "An API token is required to make requests to this server, but none was "
                         "provided using the Authorization header using the 'Bearer' scheme (or x-api-key).")


class PermissionDenied(Forbidden):
    code = "insufficient_permissions"

    def __init__(self, permission: Permission, what: str):
        super().__init__(f"this API token lacks the '{permission}' permission, which {what} needs")
        self.permission = permission


class InvalidPermission(InvalidRequest):
    code, param = "invalid_value", "permissions"

    def __init__(self, value: object):
        known = ", ".join(p.value for p in Permission)
        super().__init__(f"unknown permission {value!r}: use one or more of {known}")


def parse_permissions(values: object) -> tuple[Permission, ...]:
    """A list of permission names, checked and in a stable order."""
    if not isinstance(values, list | tuple) or not values:
        raise InvalidRequest("'permissions' must be a non-empty list of permission names", "permissions",
                             code="invalid_value")
    found = set()
    for value in values:
        if value not in Permission.__members__:
            raise InvalidPermission(value)
        found.add(Permission(value))
    return tuple(p for p in Permission if p in found)


def new_token_text() -> tuple[str, str, str]:
    """A fresh token: (its text, its public id, its secret)."""
    public_id = secrets.token_hex(PUBLIC_ID_HEX_DIGITS // 2)
    secret = "".join(secrets.choice(SECRET_ALPHABET) for _ in range(SECRET_LENGTH))
    return f"{TOKEN_PREFIX}{public_id}:{secret}", public_id, secret


def split_token_text(text: str) -> tuple[str, str]:
    """(public id, secret) of a token's text; InvalidApiKey if it is not one of ours."""
    match = _TOKEN_TEXT.fullmatch(text.strip())
    if match is None:
        raise InvalidApiKey("The API token provided is not valid.")
    return match.group(1), match.group(2)


_DURATION = re.compile(r"(\d+)\s*([smhdw]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: object, param: str = "expires_in") -> float:
    """Seconds in ``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or a bare number of seconds (> 0)."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = _DURATION.fullmatch(str(text).strip().lower())
        if match is None:
            raise InvalidRequest(f"'{param}' must be a duration such as 30d, 12h, 90m or a number of seconds",
                                 param, code="invalid_value")
        seconds = float(int(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    if not 0 < seconds < 100 * 365 * 86400:
        raise InvalidRequest(f"'{param}' must be more than 0 and less than 100 years", param, code="invalid_value")
    return seconds


# Who owns what the current request stores (stored responses): the public id of the request's token,
# or None when the server runs without auth. The auth middleware sets it for each request; being
# ambient to the request, it spares every stateful route passing it down to the store by hand.
REQUEST_OWNER: ContextVar[str | None] = ContextVar("studiolo_request_owner", default=None)


def request_owner() -> str | None:
    return REQUEST_OWNER.get()
