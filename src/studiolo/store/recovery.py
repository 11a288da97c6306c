"""Checking the response database, and recovering what can still be read of a damaged one.

``check`` opens the file read-only and reports what is wrong: not an SQLite database, a newer
schema, what SQLite's integrity check finds, and what it holds. ``recover`` reads every response row
it can (scanning by rowid, stepping over regions whose pages cannot be read) into a new database,
and keeps the old file, untouched, under another name. Saved KV states are not carried over: they
are caches, and bytes from a damaged file are not fed to llama.cpp. A response whose earlier turn
was lost starts a conversation of its own; its metadata says which turn it continued
(``recovered.lost_previous_response_id``).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studiolo.store import schema
from studiolo.store.responses import _COLUMNS, _FIELDS, _from_row

MAX_PROBLEMS = 20  # integrity_check lines reported
MAX_SKIP = 2**40  # the farthest a scan looks past an unreadable region for more rows
SIDE_FILES = ("-wal", "-shm")


@dataclass
class CheckReport:
    path: Path
    size_bytes: int = 0
    problems: list[str] = field(default_factory=list)
    schema_version: int | None = None
    responses: int = 0
    deleted: int = 0  # tombstones kept for their descendants' conversations
    states: int = 0
    state_bytes: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class RecoverReport:
    source: Path
    output: Path
    recovered: int = 0
    unreadable_regions: int = 0  # stretches of the file the scan had to step over
    bad_rows: int = 0  # rows read whose values do not decode
    rerooted: int = 0  # responses whose earlier turn was lost
    states_dropped: int = 0
    kept_as: Path | None = None  # where the old file went, when the recovered one took its place


def check(path: Path) -> CheckReport:
    report = CheckReport(path)
    if not path.exists():
        report.problems.append(f"{path} does not exist (the server makes it when it first stores)")
        return report
    report.size_bytes = path.stat().st_size
    try:
        with _read_only(path) as conn:
            report.schema_version = conn.execute("PRAGMA user_version").fetchone()[0]
            if report.schema_version > len(schema.MIGRATIONS):
                report.problems.append(f"schema version {report.schema_version} is newer than this studiolo knows")
                return report
            _count(conn, report)
            rows = conn.execute(f"PRAGMA integrity_check({MAX_PROBLEMS})").fetchall()
            report.problems += [row[0] for row in rows if row[0] != "ok"]
    except sqlite3.Error as exc:
        report.problems.append(str(exc))
    return report


def _count(conn: sqlite3.Connection, report: CheckReport) -> None:
    """What the file holds, as far as it reads (a damaged table is a problem, and counts 0)."""
    try:
        report.responses, report.deleted = conn.execute(
            "SELECT count(*) - count(deleted_at), count(deleted_at) FROM responses NOT INDEXED").fetchone()
        report.states, report.state_bytes = conn.execute(
            "SELECT count(*), coalesce(sum(length(data)), 0) FROM response_states NOT INDEXED").fetchone()
    except sqlite3.DatabaseError as exc:
        report.problems.append(f"counting what it holds: {exc}")


def recover(path: Path, output: Path | None = None) -> RecoverReport:
    """Copies what is readable of ``path`` into a new database. Without ``output``, the new file takes
    ``path``'s place and the old one (with its -wal and -shm) is renamed ``<name>.damaged-<time>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = output or path.with_name(f"{path.name}.recovered-{stamp}")
    if target.exists():
        raise FileExistsError(f"{target} already exists")
    report = RecoverReport(path, target)
    rows = list(_readable_rows(path, report)) if path.exists() else []
    _write(target, _relinked(rows, report))
    report.recovered = len(rows)
    if output is None:
        report.kept_as = path.with_name(f"{path.name}.damaged-{stamp}")
        for suffix in ("", *SIDE_FILES):
            old = Path(f"{path}{suffix}")
            if old.exists():
                old.rename(f"{report.kept_as}{suffix}")
        target.rename(path)
        report.output = path
    return report


def _readable_rows(path: Path, report: RecoverReport) -> Iterator[tuple[Any, ...]]:
    """Every response row that reads and decodes, in rowid order; a row is _FIELDS then deleted_at."""
    try:
        with _read_only(path) as conn:
            report.states_dropped = _quietly(lambda: conn.execute("SELECT count(*) FROM response_states").fetchone()[0])
            for row in _scan(conn, report):
                try:
                    _from_row(row[:-1])  # its JSON columns decode
                except (ValueError, TypeError):
                    report.bad_rows += 1
                    continue
                yield row
    except sqlite3.Error:
        report.unreadable_regions += 1  # not SQLite at all, or its schema page is gone


def _scan(conn: sqlite3.Connection, report: RecoverReport) -> Iterator[tuple[Any, ...]]:
    query = f"SELECT rowid, {_source_columns(conn)}, deleted_at FROM responses WHERE rowid > ? ORDER BY rowid"
    after: int | None = -(2**63)
    while after is not None:
        try:
            for row in conn.execute(query, (after,)):
                after = row[0]
                yield row[1:]
            return
        except sqlite3.DatabaseError:
            report.unreadable_regions += 1
            after = _next_readable(conn, after)


def _source_columns(conn: sqlite3.Connection) -> str:
    """_COLUMNS as the damaged file can give them: a file from before a column was added gives NULL for it
    (its responses' owner: none, as when they were stored)."""
    try:
        present = {row[1] for row in conn.execute("PRAGMA table_info(responses)")}
    except sqlite3.DatabaseError:
        return _COLUMNS
    if not present:
        return _COLUMNS
    return ", ".join(name if name in present else f"NULL AS {name}" for name in _FIELDS)


def _next_readable(conn: sqlite3.Connection, after: int) -> int | None:
    """A rowid just before the next row that can be read past ``after``, looking ever farther."""
    step = 1
    while step <= MAX_SKIP:
        try:
            row = conn.execute("SELECT rowid FROM responses WHERE rowid > ? ORDER BY rowid LIMIT 1",
                               (after + step,)).fetchone()
            return None if row is None else row[0] - 1
        except sqlite3.DatabaseError:
            step *= 2
    return None


def _relinked(rows: list[tuple[Any, ...]], report: RecoverReport) -> list[tuple[Any, ...]]:
    """The rows, a response whose previous one was lost made the start of its conversation."""
    ids = {row[0] for row in rows}
    previous, metadata = _FIELDS.index("previous_response_id"), _FIELDS.index("metadata")
    out = []
    for row in rows:
        lost = row[previous]
        if lost is not None and lost not in ids:
            report.rerooted += 1
            meta = {**json.loads(row[metadata]), "recovered": {"lost_previous_response_id": lost}}
            row = (*row[:previous], None, *row[previous + 1:metadata], json.dumps(meta), *row[metadata + 1:])
        out.append(row)
    return out


def _write(target: Path, rows: list[tuple[Any, ...]]) -> None:
    conn = schema.connect(target)
    try:
        with schema.write_transaction(conn):
            conn.execute("PRAGMA defer_foreign_keys = ON")  # children may come before their parents
            marks = ",".join("?" * (len(_FIELDS) + 1))
            conn.executemany(f"INSERT OR IGNORE INTO responses ({_COLUMNS}, deleted_at) VALUES ({marks})", rows)
    finally:
        conn.close()


def _read_only(path: Path) -> closing[sqlite3.Connection]:
    """A read-only connection: the old file is never changed, not even by a checkpoint."""
    return closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None))


def _quietly(read: Callable[[], int]) -> int:
    try:
        return read()
    except sqlite3.Error:
        return 0
