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

Owners: each response records who stored it (``owner``: an API token's public id, None without auth).
Every read, delete and continuation takes the caller's owner: with one, another owner's response is
not found, exactly as an id never stored; with None (the server runs without auth) all are visible.

Durability: ``create`` commits before it returns (WAL, ``synchronous=FULL``), so a response
whose id was handed out survives SIGKILL of the server and power loss.

Faults (store/faults.py): a full disk, a read-only or damaged file, a file that is not SQLite raise
``StorageUnavailable`` (``StorageFull``), logged once; with ``tolerate_faults`` (the server) a file
that cannot be opened leaves the store closed, and it tries again at most every REOPEN_SECONDS, so
moving a broken file aside brings storing back without a restart. Saved KV states are caches: they
are sized against the free disk (store/space.py) and dropped before a response would be refused.

Threads: one connection per store, shared by all threads under a lock. Every write is one
small transaction (a row or a few) and one fsync: about 0.5 ms per ``create`` on the dev VM's
disk, more on a slow one, so the server should call it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any, Self

from studiolo import config
from studiolo.domain.errors import InvalidRequest
from studiolo.domain.responses import (  # noqa: F401 - the id rule and values are the store's API too
    ID_PREFIX,
    InvalidResponseId,
    ResponseNotFound,
    StoredResponse,
    check_response_id,
    new_response_id,
)
from studiolo.store import space
from studiolo.store.faults import FaultLog, StorageFull, StorageUnavailable, classify
from studiolo.store.schema import MIGRATIONS, StoreError, StoreVersionError  # noqa: F401 - the store's API
from studiolo.store.schema import connect as _connect
from studiolo.store.schema import write_transaction as _write_transaction

log = logging.getLogger(__name__)

MAX_CONVERSATION_LENGTH = 10_000  # longer chains mean a corrupt file, not a real chat
REOPEN_SECONDS = 5.0  # a store that could not be opened tries again at most this often
PROBE_ID = ID_PREFIX + "probe"  # the row a writability probe inserts and rolls back
_PROBE_INSERT = """INSERT INTO responses (id, model, created_at, status, input_items, output_items, usage, metadata)
VALUES (?, '', 0, '', '[]', '[]', '{}', '{}')"""


class ResponseIdTaken(StoreError, InvalidRequest):
    code = "response_id_taken"

    def __init__(self, response_id: str):
        super().__init__(f"response id already used: {response_id}")
        self.response_id = response_id


class CorruptConversation(StoreError):
    """A chain of previous_response_id that loops or is implausibly long."""


_FIELDS = [f.name for f in fields(StoredResponse)]  # also the column order of every query
_COLUMNS = ", ".join(_FIELDS)
_MARKS = ",".join("?" * len(_FIELDS))
# Whose responses a call sees: with an owner (auth on), that token's only; with None (auth off), all.
# Its two parameters are the owner, twice.
_VISIBLE = "(? IS NULL OR owner = ?)"
_JSON_KINDS = {"input_items": list, "output_items": list, "usage": dict, "metadata": dict}


def default_path() -> Path:
    return config.studiolo_home() / "responses.sqlite3"


class ResponseStore:
    def __init__(self, path: str | Path | None = None, *, file_cap_mib: int = 0, tolerate_faults: bool = False):
        """``file_cap_mib``: the most the database file may hold (0: what the disk has). ``tolerate_faults``:
        a file that cannot be opened (not SQLite, unreadable, no room to create) leaves the store closed,
        each use raising why, instead of raising here."""
        self.path = Path(path) if path is not None else default_path()
        self.cap_bytes = file_cap_mib * space.MIB
        self.faults = FaultLog()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._next_open = 0.0
        self._state_bytes = 0
        self._index_in_heap = False  # opened on a full disk: the WAL index could not be a -shm file
        try:
            self._open()
        except StorageUnavailable as fault:
            if not tolerate_faults:
                raise
            self.faults.failed(fault)

    @property
    def state_bytes(self) -> int:
        """Bytes of saved KV states in the database now (for the server's memory and disk figures)."""
        return self._state_bytes

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
                self._next_open = float("inf")  # closed on purpose: never reopened

    def __enter__(self) -> Self:
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
        owner: str | None = None,
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
            usage, status, instructions, {} if metadata is None else metadata, owner,
        )
        row = _to_row(response)  # serialize before taking the lock: bad input writes nothing
        try:
            self._insert(row, report=False)
        except StorageFull as fault:
            # saved KV states are caches: all of them go before a response is refused for want of room
            if not self._drop_states():
                self.faults.failed(fault)
                raise
            self._insert(row)
        return _from_row(row)  # a copy of what was stored: the caller's lists may change later

    def _insert(self, row: tuple[Any, ...], report: bool = True) -> None:
        rid, previous_response_id = row[0], row[_FIELDS.index("previous_response_id")]
        with self._transaction(report) as conn:
            owner = row[_FIELDS.index("owner")]
            if previous_response_id is not None and not _is_live(conn, previous_response_id, owner):
                raise ResponseNotFound(previous_response_id)  # another token's too: it must not learn it exists
            if conn.execute("SELECT 1 FROM responses WHERE id = ?", (rid,)).fetchone():
                raise ResponseIdTaken(rid)  # tombstones too: an id names one response only
            conn.execute(f"INSERT INTO responses ({_COLUMNS}) VALUES ({_MARKS})", row)

    def _drop_states(self) -> int:
        """Drops every saved KV state; how many there were."""
        with self._transaction() as conn:
            dropped = conn.execute("DELETE FROM response_states").rowcount
            self._state_bytes = 0
        if dropped:
            log.warning("dropped all %d saved KV states to make room in %s (their conversations will prefill)",
                        dropped, self.path)
        return dropped

    def check_writable(self, need_bytes: int = 0) -> None:
        """Raise StorageUnavailable (StorageFull) if storing ``need_bytes`` more would fail for a reason
        known now, before any work is spent on what is to be stored. A probe row is inserted and rolled
        back (no fsync): that finds a read-only or damaged file; free disk and the size cap find no room."""
        with self._lock:
            conn = self._connection()
            try:
                with _write_transaction(conn, commit=False):
                    conn.execute(_PROBE_INSERT, (PROBE_ID,))
                room = space.measure(conn, self.path, self.cap_bytes)
            except (sqlite3.Error, OSError) as exc:
                raise self._fault(exc) from exc
            # the states can be dropped to make room (create does it)
            if room.bytes + self._state_bytes < need_bytes + space.WRITE_MARGIN_BYTES:
                raise self._no_room(room, need_bytes)

    def _no_room(self, room: space.Room, need_bytes: int) -> StorageFull:
        fault = StorageFull(
            f"no room to store this turn in {self.path}: {room.bytes / space.MIB:.1f} MiB are left{self._cap_note()}, "
            f"{(need_bytes + space.WRITE_MARGIN_BYTES) / space.MIB:.1f} MiB are needed; storing is off until space is "
            "freed; requests with store: false still work", "no room left")
        self.faults.failed(fault)
        return fault

    def get(self, response_id: str, owner: str | None = None) -> StoredResponse:
        check_response_id(response_id)
        with self._reading() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM responses WHERE id = ? AND deleted_at IS NULL AND {_VISIBLE}",
                (response_id, owner, owner),
            ).fetchone()
        if row is None:
            raise ResponseNotFound(response_id)
        return _from_row(row)

    def input_items(self, response_id: str, owner: str | None = None) -> list[dict[str, Any]]:
        """The items this response's own turn added (the Responses API's input_items)."""
        return self.get(response_id, owner).input_items

    def conversation(self, response_id: str, owner: str | None = None) -> list[StoredResponse]:
        """The chain from the root to response_id, oldest first; deleted ancestors included. Only
        response_id's owner is checked: a response can only continue one its own token sees."""
        check_response_id(response_id)
        limit = MAX_CONVERSATION_LENGTH
        with self._reading() as conn:
            rows = conn.execute(_CHAIN_QUERY, (response_id, limit)).fetchall()
        if not rows or rows[-1][0] is not None:  # rows[-1] is response_id's own row
            raise ResponseNotFound(response_id)
        chain = [_from_row(row[1:]) for row in rows]
        if owner is not None and chain[-1].owner != owner:
            raise ResponseNotFound(response_id)
        if len(chain) > limit or len({r.id for r in chain}) < len(chain):
            raise CorruptConversation(f"{response_id}: chain loops or exceeds {limit} responses")
        if chain[0].previous_response_id is not None:
            missing = chain[0].previous_response_id
            raise CorruptConversation(f"{response_id}: ancestor {missing} is missing")
        return chain

    def delete(self, response_id: str, owner: str | None = None) -> None:
        """Deletes a response; see the module docstring for what its descendants keep."""
        check_response_id(response_id)
        with self._transaction() as conn:
            if not _is_live(conn, response_id, owner):
                raise ResponseNotFound(response_id)
            conn.execute("DELETE FROM response_states WHERE response_id = ?", (response_id,))
            conn.execute(
                "UPDATE responses SET deleted_at = ? WHERE id = ?", (time.time(), response_id)
            )
            _remove_unneeded_tombstones(conn, response_id)
            self._state_bytes = _state_bytes(conn)

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
            self._state_bytes = _state_bytes(conn)

    def keep_state(self, response_id: str, data: bytes, budget_bytes: int) -> bool:
        """Saves a KV state if it fits what states may take (``budget_bytes``, and a share of the room
        left: store/space.py), dropping the oldest others to make it fit; False if it alone does not."""
        check_response_id(response_id)
        with self._transaction() as conn:
            if not _is_live(conn, response_id):
                raise ResponseNotFound(response_id)
            room = space.measure(conn, self.path, self.cap_bytes)
            allowance = space.state_allowance(room, self._state_bytes, budget_bytes)
            if len(data) > allowance:
                log.info("the KV state of %s (%.1f MiB) is over what states may take (%.1f MiB); its "
                         "continuation will prefill", response_id, len(data) / space.MIB, allowance / space.MIB)
                return False
            conn.execute("DELETE FROM response_states WHERE response_id = ?", (response_id,))
            _drop_oldest_states(conn, allowance - len(data))
            conn.execute("INSERT INTO response_states (response_id, data) VALUES (?, ?)", (response_id, bytes(data)))
            self._state_bytes = _state_bytes(conn)
        if len(data) > space.WAL_KEEP_BYTES:
            self._shrink_wal()
        return True

    def _shrink_wal(self) -> None:
        """Copies the WAL into the file and cuts it to nothing: a big state would otherwise leave a WAL as
        large as itself on the disk until the next write. Best effort: a reader may hold it (BUSY)."""
        with self._lock:
            try:
                self._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except (sqlite3.Error, StorageUnavailable) as exc:
                log.debug("could not truncate the WAL of %s: %s", self.path, exc)

    def load_state(self, response_id: str, owner: str | None = None) -> bytes | None:
        """The saved blob, or None if the response has none."""
        check_response_id(response_id)
        with self._reading() as conn:
            row = conn.execute(
                "SELECT r.deleted_at IS NULL, s.data FROM responses r "
                f"LEFT JOIN response_states s ON s.response_id = r.id WHERE r.id = ? AND {_VISIBLE}",
                (response_id, owner, owner),
            ).fetchone()
        if row is None or not row[0]:
            raise ResponseNotFound(response_id)
        return row[1]

    def trim_states(self, budget_bytes: int) -> int:
        """Drop the oldest responses' saved states until the rest fit in ``budget_bytes``; returns
        how many were dropped. (States are caches: a conversation without one is prefilled again.)"""
        with self._transaction() as conn:
            dropped = _drop_oldest_states(conn, budget_bytes)
            self._state_bytes = _state_bytes(conn)
        return dropped

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._connection()
            try:
                yield conn
            except (sqlite3.Error, OSError) as exc:
                raise self._fault(exc) from exc

    @contextmanager
    def _transaction(self, report: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction; ``report``: False when the caller handles a fault itself (it is then
        neither logged nor counted as storage working again)."""
        with self._lock:
            conn = self._connection()
            try:
                with _write_transaction(conn):
                    yield conn
            except (sqlite3.Error, OSError) as exc:
                raise self._fault(exc, report) from exc
            if report:
                self.faults.worked()

    def _fault(self, exc: BaseException, report: bool = True) -> BaseException:
        """The storage fault ``exc`` stands for (logged once), or ``exc`` itself if it is a bug."""
        fault = classify(exc, self.path)
        if fault is None:
            return exc
        if isinstance(fault, StorageFull) and self.cap_bytes:
            fault = StorageFull(f"{fault}{self._cap_note()}", fault.reason)
        if report:
            self.faults.failed(fault)
        return fault

    def _cap_note(self) -> str:
        cap = self.cap_bytes // space.MIB
        return f" (budgets.stored_file_mib caps the file at {cap} MiB)" if cap else ""

    def _connection(self) -> sqlite3.Connection:
        """The open connection; a store that could not be opened tries again (at most every
        REOPEN_SECONDS) and raises why it is still closed. Call with the lock held."""
        if self._index_in_heap and time.monotonic() >= self._next_open and not space.disk_full(self.path):
            # room again: reopen as usual, so that other processes (studiolo store check) can read too
            if self._conn is not None:
                self._conn.close()
            self._conn, self._index_in_heap = None, False
        if self._conn is None:
            if time.monotonic() < self._next_open and self.faults.current is not None:
                raise self.faults.current
            try:
                self._open()
            except StorageUnavailable as fault:
                self.faults.failed(fault)
                raise
            log.warning("the response store %s is open", self.path)
        assert self._conn is not None
        return self._conn

    def _open(self) -> None:
        self._next_open = time.monotonic() + REOPEN_SECONDS
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = _connect(self.path, self.cap_bytes)
        except (sqlite3.Error, OSError) as exc:
            fault = classify(exc, self.path)
            if fault is None:
                raise
            if not space.disk_full(self.path):
                raise fault from exc
            conn = self._open_on_full_disk(fault)
        try:
            self._state_bytes = _state_bytes(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise classify(exc, self.path) or exc from exc
        self._conn = conn

    def _open_on_full_disk(self, fault: StorageUnavailable) -> sqlite3.Connection:
        """On a full disk SQLite cannot size the -shm file that WAL readers share: open with the WAL
        index in this process's memory (exclusive locking), so stored responses still read; writes fail
        as a full disk makes them, and the store reopens as usual once there is room."""
        try:
            conn = _connect(self.path, self.cap_bytes, exclusive=True)
        except (sqlite3.Error, OSError) as exc:
            raise StorageFull(f"the disk holding {self.path} is full ({fault.reason}): stored responses cannot be "
                              "read or written until space is freed; requests with store: false still work",
                              fault.reason) from exc
        self._index_in_heap = True
        full = StorageFull(f"the disk holding {self.path} is full: stored responses are read, but storing is off "
                           "until space is freed; requests with store: false still work", "disk full at open")
        self.faults.failed(full)
        return conn


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


def _state_bytes(conn: sqlite3.Connection) -> int:
    # length() of a blob reads its size from the record header, not its pages
    return conn.execute("SELECT coalesce(sum(length(data)), 0) FROM response_states").fetchone()[0]


def _drop_oldest_states(conn: sqlite3.Connection, keep_bytes: int) -> int:
    """Deletes the oldest responses' states until the rest hold at most ``keep_bytes``; how many went."""
    rows = conn.execute(
        "SELECT s.response_id, length(s.data) FROM response_states s "
        "JOIN responses r ON r.id = s.response_id ORDER BY r.created_at DESC"
    ).fetchall()
    kept, dropped = 0, []
    for response_id, size in rows:
        kept += size
        if kept > keep_bytes:
            dropped.append((response_id,))
    conn.executemany("DELETE FROM response_states WHERE response_id = ?", dropped)
    return len(dropped)


def _is_live(conn: sqlite3.Connection, response_id: str, owner: str | None = None) -> bool:
    row = conn.execute(
        f"SELECT 1 FROM responses WHERE id = ? AND deleted_at IS NULL AND {_VISIBLE}", (response_id, owner, owner)
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
    values = {n: json.loads(v) if n in _JSON_KINDS else v for n, v in zip(_FIELDS, row, strict=True)}
    return StoredResponse(**values)
