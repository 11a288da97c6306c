"""API tokens, in their own small SQLite file: ``STUDIOLO_HOME/tokens.sqlite3``.

Why a file of their own, not a table beside the stored responses (store/schema.py): the response
file is user data with its own life. It may be capped (``budgets.stored_file_mib``; full, it answers
507) and a full disk or a damaged file turns storing off while the server keeps serving; ``studiolo
store recover`` rebuilds it copying only responses, and a user may delete it to forget chats. None of
that may lock everyone out or, worse, leave a revoked token working. Tokens are credentials: a tiny
file, made readable by its owner only (0600), whose faults fail requests closed.

Only a hash of each token's secret is kept: SHA-256. A slow KDF (bcrypt, scrypt, argon2) exists to make
guessing a low-entropy password from its hash expensive; a token's secret is 119 random bits (older
tokens: 256; domain/auth.py), which no amount of guessing finds, so a fast hash loses nothing and keeps
the check on every request cheap. The hash is compared with ``hmac.compare_digest``, in constant time.

The server holds one connection and reads each request's token afresh, so a token made or revoked by
``studiolo token`` (another process, writing this file directly) counts on the next request.
``generation()`` changes whenever any connection commits a change (SQLite's ``data_version``, plus
this process's own writes): open streams re-check their token only when it moved.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from studiolo import config
from studiolo.domain.auth import (
    InvalidApiKey,
    Permission,
    TokenInfo,
    new_token_text,
    split_token_text,
)
from studiolo.domain.errors import NotFound
from studiolo.store.schema import BUSY_TIMEOUT_S, write_transaction

SCHEMA_VERSION = 1
_SCHEMA = """CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    secret_sha256 BLOB NOT NULL,
    permissions TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL
) STRICT"""
_COLUMNS = "id, name, permissions, created_at, expires_at, revoked_at"
# compared against when the id is unknown, so that an unknown id costs what a wrong secret does
_NO_HASH = bytes(32)


class TokenNotFound(NotFound):
    code, param = "token_not_found", "id"

    def __init__(self, token_id: str):
        super().__init__(f"no API token has the id '{token_id}'")


def default_path() -> Path:
    return config.studiolo_home() / "tokens.sqlite3"


def secret_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class TokenStore:
    def __init__(self, path: Path | None = None):
        self.path = path or default_path()
        self._lock = threading.Lock()
        self._own_writes = 0
        self._conn = _open(self.path)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def create(self, name: str, permissions: tuple[Permission, ...], expires_at: float | None = None
               ) -> tuple[TokenInfo, str]:
        """A new token: its record and its text (the only time the text exists)."""
        text, public_id, secret = new_token_text()
        info = TokenInfo(public_id, name, permissions, time.time(), expires_at)
        with self._writing() as conn:
            conn.execute("INSERT INTO tokens (id, name, secret_sha256, permissions, created_at, expires_at) "
                         "VALUES (?, ?, ?, ?, ?, ?)", (public_id, name, secret_hash(secret),
                                                       json.dumps([p.value for p in permissions]),
                                                       info.created_at, expires_at))
        return info, text

    def list(self) -> list[TokenInfo]:
        with self._lock:
            rows = self._conn.execute(f"SELECT {_COLUMNS} FROM tokens ORDER BY created_at").fetchall()
        return [_info(row) for row in rows]

    def revoke(self, token_id: str) -> TokenInfo:
        """Marks the token revoked (its record stays, for the listing); TokenNotFound if none has the id."""
        with self._writing() as conn:
            conn.execute("UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                         (time.time(), token_id))
            row = conn.execute(f"SELECT {_COLUMNS} FROM tokens WHERE id = ?", (token_id,)).fetchone()
        if row is None:
            raise TokenNotFound(token_id)
        return _info(row)

    def verify(self, text: str) -> TokenInfo:
        """The record of the token whose text this is, if it is usable now; else InvalidApiKey."""
        public_id, secret = split_token_text(text)
        with self._lock:
            row = self._conn.execute(f"SELECT secret_sha256, {_COLUMNS} FROM tokens WHERE id = ?",
                                     (public_id,)).fetchone()
        matches = hmac.compare_digest(row[0] if row else _NO_HASH, secret_hash(secret))
        if row is None or not matches:
            raise InvalidApiKey("The API token provided is not valid.")
        info = _info(row[1:])
        if info.revoked_at is not None:
            raise InvalidApiKey(f"The API token {info.id} has been revoked.")
        if not info.usable(time.time()):
            raise InvalidApiKey(f"The API token {info.id} has expired.")
        return info

    def generation(self) -> int:
        """A number that changes whenever a token is made or revoked, by any process."""
        with self._lock:
            return self._conn.execute("PRAGMA data_version").fetchone()[0] * 1_000_000 + self._own_writes

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """A write transaction under the lock; counts this store's own writes for generation()."""
        with self._lock:
            with write_transaction(self._conn) as conn:
                yield conn
            self._own_writes += 1


def _open(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():  # made readable by its owner only before anything is written to it
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{path} has schema version {version}, newer than this studiolo knows")
        with write_transaction(conn):
            conn.execute(_SCHEMA)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.close()
        raise
    return conn


def _info(row: tuple) -> TokenInfo:
    token_id, name, permissions, created_at, expires_at, revoked_at = row
    return TokenInfo(token_id, name, tuple(Permission(p) for p in json.loads(permissions)), created_at,
                     expires_at, revoked_at)
