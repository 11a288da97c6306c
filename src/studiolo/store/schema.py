"""The response database's file: opening it (WAL, synchronous=FULL, the size cap) and its schema
migrations. store/responses.py holds what is in it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from studiolo.domain.errors import StudioloError
from studiolo.store import space
from studiolo.store.faults import StorageUnavailable

BUSY_TIMEOUT_S = 10.0  # another process (a second server, a CLI) may hold the write lock

# Step i brings the schema from version i to i + 1 (PRAGMA user_version). Append new steps;
# never edit a released one, since files already at its version will not run it again.
# STRICT tables (SQLite 3.37+) refuse a value of the wrong type instead of storing it.
# Steps run with foreign keys on (the pragma cannot change inside a transaction).
MIGRATIONS: list[tuple[str, ...]] = [
    (
        """CREATE TABLE responses (
            id TEXT PRIMARY KEY,
            previous_response_id TEXT REFERENCES responses(id),
            model TEXT NOT NULL,
            created_at REAL NOT NULL,
            status TEXT NOT NULL,
            instructions TEXT,
            input_items TEXT NOT NULL,
            output_items TEXT NOT NULL,
            usage TEXT NOT NULL,
            metadata TEXT NOT NULL,
            deleted_at REAL
        ) STRICT""",
        # Finding children: the foreign key check on delete, and tombstone removal.
        "CREATE INDEX responses_by_previous ON responses(previous_response_id)",
        """CREATE TABLE response_states (
            response_id TEXT PRIMARY KEY REFERENCES responses(id) ON DELETE CASCADE,
            data BLOB NOT NULL
        ) STRICT""",
    ),
    # who stored each response: the public id of an API token, NULL for responses stored without auth
    # (every response of an older file, which keeps all its rows)
    ("ALTER TABLE responses ADD COLUMN owner TEXT",),
]


class StoreError(StudioloError):
    """Base of the response store's errors."""


class StoreVersionError(StoreError, StorageUnavailable):
    """The file was written by a newer studiolo; it is left untouched."""


def connect(path: Path, cap_bytes: int = 0, exclusive: bool = False) -> sqlite3.Connection:
    """``exclusive``: no other process may use the file meanwhile, and SQLite keeps the WAL index in
    memory instead of a -shm file (which a full disk cannot hold)."""
    # isolation_level=None: no implicit transactions; every write says BEGIN IMMEDIATE itself.
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    try:
        if exclusive:  # before the first read: only then does SQLite skip the shared-memory index
            conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        schema_version(conn, path)  # before any pragma that could write to the file
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StorageUnavailable(f"{path}: cannot use WAL journal mode (got {mode!r}); storing is off")
        conn.execute("PRAGMA synchronous = FULL")  # fsync the WAL at every commit
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA journal_size_limit = {space.WAL_KEEP_BYTES}")
        if cap_bytes:  # past it, SQLite answers SQLITE_FULL, as a full disk does
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {max(1, cap_bytes // page_size)}")
        migrate(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def schema_version(conn: sqlite3.Connection, path: Path) -> int:
    """The file's version; StoreVersionError if newer than the migrations this code has."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StoreVersionError(
            f"{path} has schema version {version}, newer than this studiolo knows "
            f"({len(MIGRATIONS)}); upgrade studiolo or use another file. The file was not changed."
        )
    return version


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Applies the missing steps, each in its own transaction with its new version number."""
    while True:
        with write_transaction(conn):
            # Read again under the write lock: another process may have migrated meanwhile.
            version = schema_version(conn, path)
            if version == len(MIGRATIONS):
                return
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")


@contextmanager
def write_transaction(conn: sqlite3.Connection, commit: bool = True) -> Iterator[sqlite3.Connection]:
    # IMMEDIATE takes the write lock at once, so the checks inside see what the write will.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT" if commit else "ROLLBACK")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
