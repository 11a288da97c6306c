"""Stored responses for stateful chats, in one SQLite file under STUDIOLO_HOME.

Serves LM Studio's ``POST /api/v1/chat`` (``response_id`` / ``previous_response_id``) and
OpenAI's Responses API (``/v1/responses``, ``GET``/``DELETE /v1/responses/{id}``,
``GET /v1/responses/{id}/input_items``). Each response holds only the items its own turn
added; ``previous_response_id`` links it to the turn it continues, so responses form a tree
and continuing from an earlier id branches the conversation. ``conversation(id)`` is the
chain from the root down to ``id``.

Delete rule: a deleted response that nothing continues from is removed at once; one that
other responses continue from becomes a tombstone. ``get``, ``input_items``, ``load_state``,
``delete`` and continuing from a tombstone raise ``ResponseNotFound``, as for an id never
stored, but its row and items stay so that the ``conversation`` of every descendant is still
whole (tombstones appear there, and only there). Its saved KV state goes at once. A tombstone
is removed for good as soon as nothing continues from it any more, so deleted data lives only
as long as a live response's history needs it. Children are never rewritten: their
``input_items`` stay exactly what their own turn added.

Durability: ``create`` commits before it returns (WAL, ``synchronous=FULL``), so a response
whose id was handed out survives SIGKILL of the server and power loss.

Threads: one connection per store, shared by all threads under a lock. Every write is one
small transaction (a row or a few) and one fsync: about 0.5 ms per ``create`` on the dev VM's
disk, more on a slow one, so the server should call it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from studiolo import config

ID_PREFIX = "resp_"
BUSY_TIMEOUT_S = 10.0  # another process (a second server, a CLI) may hold the write lock
MAX_CONVERSATION_LENGTH = 10_000  # longer chains mean a corrupt file, not a real chat

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
]


class StoreError(Exception):
    """Base of the response store's errors."""


class ResponseNotFound(StoreError, LookupError):
    def __init__(self, response_id: str):
        super().__init__(f"response not found: {response_id}")
        self.response_id = response_id


class InvalidResponseId(StoreError, ValueError):
    def __init__(self, response_id: object):
        super().__init__(f'invalid response id {response_id!r}: it must start with "{ID_PREFIX}"')
        self.response_id = response_id


class ResponseIdTaken(StoreError, ValueError):
    def __init__(self, response_id: str):
        super().__init__(f"response id already used: {response_id}")
        self.response_id = response_id


class StoreVersionError(StoreError):
    """The file was written by a newer studiolo; it is left untouched."""


class CorruptConversation(StoreError):
    """A chain of previous_response_id that loops or is implausibly long."""


@dataclass(frozen=True)
class StoredResponse:
    id: str
    model: str
    created_at: float  # unix seconds
    previous_response_id: str | None
    input_items: list[dict[str, Any]]  # the items this turn added, not the history
    output_items: list[dict[str, Any]]
    usage: dict[str, Any]
    status: str  # "completed", "incomplete", "failed", ...
    instructions: str | None
    metadata: dict[str, Any]


_FIELDS = [f.name for f in fields(StoredResponse)]  # also the column order of every query
_COLUMNS = ", ".join(_FIELDS)
_JSON_KINDS = {"input_items": list, "output_items": list, "usage": dict, "metadata": dict}


def default_path() -> Path:
    return config.studiolo_home() / "responses.sqlite3"


def new_response_id() -> str:
    return ID_PREFIX + secrets.token_hex(16)


def check_response_id(response_id: object) -> str:
    if not isinstance(response_id, str) or not response_id.startswith(ID_PREFIX):
        raise InvalidResponseId(response_id)
    return response_id


class ResponseStore:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = _connect(self.path)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ResponseStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def create(
        self,
        model: str,
        input_items: list[dict[str, Any]],
        output_items: list[dict[str, Any]],
        usage: dict[str, Any],
        *,
        previous_response_id: str | None = None,
        status: str = "completed",
        instructions: str | None = None,
        metadata: dict[str, Any] | None = None,
        created_at: float | None = None,
        response_id: str | None = None,
    ) -> StoredResponse:
        """Stores a response and commits: once this returns, its id may be handed out.

        The store makes the id, unless the caller had to name it before the turn ended (a
        streamed ``response.created`` event does): then it passes ``new_response_id()``'s.
        """
        if previous_response_id is not None:
            check_response_id(previous_response_id)
        rid = new_response_id() if response_id is None else check_response_id(response_id)
        when = time.time() if created_at is None else float(created_at)
        response = StoredResponse(
            rid, model, when, previous_response_id, input_items, output_items,
            usage, status, instructions, {} if metadata is None else metadata,
        )
        row = _to_row(response)  # serialize before taking the lock: bad input writes nothing
        with self._transaction() as conn:
            if previous_response_id is not None and not _is_live(conn, previous_response_id):
                raise ResponseNotFound(previous_response_id)
            if conn.execute("SELECT 1 FROM responses WHERE id = ?", (rid,)).fetchone():
                raise ResponseIdTaken(rid)  # tombstones too: an id names one response only
            conn.execute(f"INSERT INTO responses ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)", row)
        return _from_row(row)  # a copy of what was stored: the caller's lists may change later

    def get(self, response_id: str) -> StoredResponse:
        check_response_id(response_id)
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_COLUMNS} FROM responses WHERE id = ? AND deleted_at IS NULL",
                (response_id,),
            ).fetchone()
        if row is None:
            raise ResponseNotFound(response_id)
        return _from_row(row)

    def input_items(self, response_id: str) -> list[dict[str, Any]]:
        """The items this response's own turn added (the Responses API's input_items)."""
        return self.get(response_id).input_items

    def conversation(self, response_id: str) -> list[StoredResponse]:
        """The chain from the root to response_id, oldest first; deleted ancestors included."""
        check_response_id(response_id)
        limit = MAX_CONVERSATION_LENGTH
        with self._lock:
            rows = self._conn.execute(_CHAIN_QUERY, (response_id, limit)).fetchall()
        if not rows or rows[-1][0] is not None:  # rows[-1] is response_id's own row
            raise ResponseNotFound(response_id)
        chain = [_from_row(row[1:]) for row in rows]
        if len(chain) > limit or len({r.id for r in chain}) < len(chain):
            raise CorruptConversation(f"{response_id}: chain loops or exceeds {limit} responses")
        if chain[0].previous_response_id is not None:
            missing = chain[0].previous_response_id
            raise CorruptConversation(f"{response_id}: ancestor {missing} is missing")
        return chain

    def delete(self, response_id: str) -> None:
        """Deletes a response; see the module docstring for what its descendants keep."""
        check_response_id(response_id)
        with self._transaction() as conn:
            if not _is_live(conn, response_id):
                raise ResponseNotFound(response_id)
            conn.execute("DELETE FROM response_states WHERE response_id = ?", (response_id,))
            conn.execute(
                "UPDATE responses SET deleted_at = ? WHERE id = ?", (time.time(), response_id)
            )
            _remove_unneeded_tombstones(conn, response_id)

    def save_state(self, response_id: str, data: bytes) -> None:
        """Keeps an opaque blob (a saved KV-cache state) with the response, replacing any other.

        The caller records in the bytes which model and settings they are valid for.
        """
        check_response_id(response_id)
        with self._transaction() as conn:
            if not _is_live(conn, response_id):
                raise ResponseNotFound(response_id)
            conn.execute(
                "INSERT OR REPLACE INTO response_states (response_id, data) VALUES (?, ?)",
                (response_id, bytes(data)),
            )

    def load_state(self, response_id: str) -> bytes | None:
        """The saved blob, or None if the response has none."""
        check_response_id(response_id)
        with self._lock:
            row = self._conn.execute(
                "SELECT r.deleted_at IS NULL, s.data FROM responses r "
                "LEFT JOIN response_states s ON s.response_id = r.id WHERE r.id = ?",
                (response_id,),
            ).fetchone()
        if row is None or not row[0]:
            raise ResponseNotFound(response_id)
        return row[1]

    def trim_states(self, budget_bytes: int) -> int:
        """Drop the oldest responses' saved states until the rest fit in ``budget_bytes``; returns
        how many were dropped. (States are caches: a conversation without one is prefilled again.)"""
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT s.response_id, length(s.data) FROM response_states s "
                "JOIN responses r ON r.id = s.response_id ORDER BY r.created_at DESC"
            ).fetchall()
            kept, dropped = 0, []
            for response_id, size in rows:
                kept += size
                if kept > budget_bytes:
                    dropped.append((response_id,))
            conn.executemany("DELETE FROM response_states WHERE response_id = ?", dropped)
        return len(dropped)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            with _write_transaction(self._conn) as conn:
                yield conn


# Walks up from the given id; the final join drops a missing id (and a missing ancestor,
# which then shows as a chain whose first element still has a previous_response_id).
_CHAIN_QUERY = f"""
WITH RECURSIVE chain(id, depth) AS (
    SELECT ?, 0
    UNION ALL
    SELECT r.previous_response_id, chain.depth + 1 FROM responses r JOIN chain ON r.id = chain.id
    WHERE r.previous_response_id IS NOT NULL AND chain.depth < ?
)
SELECT r.deleted_at, {", ".join("r." + name for name in _FIELDS)}
FROM chain JOIN responses r ON r.id = chain.id ORDER BY chain.depth DESC
"""


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; every write says BEGIN IMMEDIATE itself.
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    try:
        _schema_version(conn, path)  # before any pragma that could write to the file
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(f"{path}: cannot use WAL journal mode (got {mode!r})")
        conn.execute("PRAGMA synchronous = FULL")  # fsync the WAL at every commit
        conn.execute("PRAGMA foreign_keys = ON")
        _migrate(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _schema_version(conn: sqlite3.Connection, path: Path) -> int:
    """The file's version; StoreVersionError if newer than the migrations this code has."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StoreVersionError(
            f"{path} has schema version {version}, newer than this studiolo knows "
            f"({len(MIGRATIONS)}); upgrade studiolo or use another file. The file was not changed."
        )
    return version


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Applies the missing steps, each in its own transaction with its new version number."""
    while True:
        with _write_transaction(conn):
            # Read again under the write lock: another process may have migrated meanwhile.
            version = _schema_version(conn, path)
            if version == len(MIGRATIONS):
                return
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")


@contextmanager
def _write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    # IMMEDIATE takes the write lock at once, so the checks inside see what the write will.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _is_live(conn: sqlite3.Connection, response_id: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM responses WHERE id = ? AND deleted_at IS NULL", (response_id,)
    ).fetchone()
    return row is not None


def _remove_unneeded_tombstones(conn: sqlite3.Connection, response_id: str | None) -> None:
    """Removes tombstones nothing continues from, from response_id up towards the root."""
    while response_id is not None:  # each turn removes a row, so this ends
        rows = conn.execute(_REMOVE_IF_UNNEEDED, (response_id,)).fetchall()
        response_id = rows[0][0] if rows else None


_REMOVE_IF_UNNEEDED = """
DELETE FROM responses WHERE id = ? AND deleted_at IS NOT NULL
AND NOT EXISTS (SELECT 1 FROM responses child WHERE child.previous_response_id = responses.id)
RETURNING previous_response_id
"""


def _to_row(response: StoredResponse) -> tuple[Any, ...]:
    """The row's values in _FIELDS order; TypeError or ValueError for what is not JSON."""
    values = []
    for name in _FIELDS:
        value = getattr(response, name)
        kind = _JSON_KINDS.get(name)
        if kind is not None:  # the other columns' types are checked by SQLite (STRICT)
            if not isinstance(value, kind):
                raise TypeError(f"{name} must be a {kind.__name__}, not {type(value).__name__}")
            # allow_nan=False: NaN is not JSON, and the items go back to HTTP clients as stored.
            value = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        values.append(value)
    return tuple(values)


def _from_row(row: tuple[Any, ...]) -> StoredResponse:
    values = {n: json.loads(v) if n in _JSON_KINDS else v for n, v in zip(_FIELDS, row)}
    return StoredResponse(**values)
