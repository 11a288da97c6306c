"""API tokens and what they allow: made, listed, revoked and checked (store/tokens.py keeps them), and
the rule that a server reachable from the network must ask for them.

Every request's token is looked up afresh (one indexed read of a small file), so a token revoked here,
through ``/api/v1/tokens`` or by ``studiolo token revoke`` in another process, fails the next request.
An open stream checks its token again at each event it sends, but cheaply: only when ``generation()``
moved since its last check, or when the token's expiry has passed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from studiolo.domain.auth import (
    InvalidApiKey,
    Permission,
    PermissionDenied,
    TokenInfo,
    parse_duration,
    parse_permissions,
)
from studiolo.domain.errors import InvalidRequest
from studiolo.domain.hosts import is_loopback
from studiolo.store.tokens import TokenNotFound, TokenStore  # noqa: F401 - TokenNotFound is this API's too

MAX_NAME_CHARS = 200


@dataclass(frozen=True)
class NewToken:
    info: TokenInfo
    text: str  # shown once: only its hash is kept


class TokenService:
    def __init__(self, path: Path | None = None):
        self.store = TokenStore(path)

    def close(self) -> None:
        self.store.close()

    def create(self, name: object, permissions: object = ("inference",), expires_in: object = None) -> NewToken:
        """A token named ``name`` with ``permissions`` (names), expiring ``expires_in`` from now (a duration
        such as ``30d``, or seconds; None: never)."""
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS:
            raise InvalidRequest(f"'name' must be a non-empty string of at most {MAX_NAME_CHARS} characters",
                                 "name", code="invalid_value")
        checked = parse_permissions(list(permissions) if isinstance(permissions, tuple) else permissions)
        expires_at = None if expires_in is None else time.time() + parse_duration(expires_in)
        info, text = self.store.create(name.strip(), checked, expires_at)
        return NewToken(info, text)

    def list(self) -> list[TokenInfo]:
        return self.store.list()

    def revoke(self, token_id: str) -> TokenInfo:
        return self.store.revoke(token_id)

    def verify(self, text: str | None) -> TokenInfo:
        """The usable token ``text`` is; InvalidApiKey for none, or one unknown, revoked or expired."""
        if not text:
            raise InvalidApiKey()
        return self.store.verify(text)

    def generation(self) -> int:
        return self.store.generation()

    def has_tokens(self) -> bool:
        now = time.time()
        return any(info.usable(now) for info in self.store.list())


def require(info: TokenInfo, permission: Permission, what: str) -> None:
    """PermissionDenied naming ``permission`` unless the token has it; ``what``: the action, for the message."""
    if permission not in info.permissions:
        raise PermissionDenied(permission, what)


class StreamCheck:
    """Whether an open stream's token still holds, asked at each event: the token is read again only
    when the store's generation moved (a token was made or revoked anywhere) or its expiry passed."""

    def __init__(self, tokens: TokenService, info: TokenInfo, text: str):
        self.tokens = tokens
        self.info = info
        self.text = text
        self.seen = tokens.generation()

    def still_valid(self) -> bool:
        expired = self.info.expires_at is not None and time.time() >= self.info.expires_at
        generation = self.tokens.generation()
        if not expired and generation == self.seen:
            return True
        self.seen = generation
        try:
            self.info = self.tokens.verify(self.text)
        except InvalidApiKey:
            return False
        return True


def bind_refusal(host: str, require_auth: bool, insecure_no_auth: bool) -> str | None:
    """Why a server must not start on ``host`` (None: it may): beyond loopback, anyone who reaches the
    port could load models, download files and read every prompt, unless tokens are required."""
    if is_loopback(host) or require_auth or insecure_no_auth:
        return None
    return (f"Refusing to serve on {host} without authentication: anyone who can reach it could use every "
            "route (load models, download files, read the log stream). Start it with --require-auth (and make "
            "a token with `studiolo token create`), or say --insecure-no-auth if the network is yours alone.")


BOOTSTRAP_HINT = ("No API token exists yet: make one with `studiolo token create --name admin --permission admin "
                  "--permission models --permission inference` (it is printed once).")
