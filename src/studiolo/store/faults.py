"""Storage faults: what goes wrong with the response database that is neither the client's fault nor
a bug (a full disk, a read-only or damaged file, a file that is not SQLite), as errors that say so.

``classify`` turns SQLite's and the OS's errors into ``StorageUnavailable`` (the API answers 503
``storage_unavailable``) or ``StorageFull`` (507 ``storage_full``); other errors (a type mismatch, a
misuse) are bugs and are left as they are. ``FaultLog`` logs a fault once, when it starts or
changes, and once more when storage works again, so a broken disk does not flood the log with one
line per request.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import threading
from pathlib import Path

from studiolo.domain.errors import Unavailable

log = logging.getLogger("studiolo.store")

RECOVER_HINT = "run `studiolo store check` to see what is wrong and, with the server stopped, `studiolo store recover`"

# SQLite's primary result codes (sqlite3.h) that mean the file or the disk, not the statement
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY, _SQLITE_IOERR = 3, 5, 6, 8, 10
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_PROTOCOL, _SQLITE_NOTADB = 11, 13, 14, 15, 26
_DAMAGED = {_SQLITE_CORRUPT, _SQLITE_NOTADB}
_UNUSABLE = {_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CANTOPEN,
             _SQLITE_PROTOCOL}
_OS_FULL = {errno.ENOSPC, errno.EDQUOT}


class StorageUnavailable(Unavailable):
    """Stored responses cannot be read or written for a reason outside the request; the server keeps
    serving what does not store. ``reason`` is the short cause (SQLite's or the OS's words)."""
    retry = False  # the disk or the database, not the request: retrying at once would not help

    code = "storage_unavailable"

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


class StorageFull(StorageUnavailable):
    """The disk (or the database's size cap) has no room for what is to be stored."""
    kind = "insufficient_storage"

    code = "storage_full"


def classify(exc: BaseException, path: Path) -> StorageUnavailable | None:
    """The storage fault ``exc`` stands for, or None if it is not one (then it is a bug: let it raise)."""
    if isinstance(exc, StorageUnavailable):
        return exc
    if isinstance(exc, sqlite3.Error):
        return _from_sqlite(exc, path)
    if isinstance(exc, OSError):
        if exc.errno in _OS_FULL:
            return StorageFull(f"the disk holding {path} is full ({exc.strerror}): storing is off until space "
                               "is freed; requests with store: false still work", str(exc))
        return StorageUnavailable(f"{path} cannot be used ({exc}): storing is off; requests with store: false "
                                  f"still work; {RECOVER_HINT}", str(exc))
    return None


def _from_sqlite(exc: sqlite3.Error, path: Path) -> StorageUnavailable | None:
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    reason = str(exc)
    if primary == _SQLITE_FULL:
        return StorageFull(f"no room to store in {path} ({reason}): storing is off until space is freed; "
                           "requests with store: false still work", reason)
    if primary == _SQLITE_NOTADB:
        return StorageUnavailable(
            f"{path} is not an SQLite database ({reason}): stored responses are off; requests with store: false "
            f"still work. Move the file aside (a new one is then made), or {RECOVER_HINT}", reason)
    if primary in _DAMAGED:
        return StorageUnavailable(
            f"{path} is damaged ({reason}): what it holds may still be read, but nothing more can be stored; "
            f"requests with store: false still work; {RECOVER_HINT}", reason)
    if primary in _UNUSABLE:
        return StorageUnavailable(
            f"{path} cannot be written ({reason}): check its permissions, its disk and other processes "
            f"using it; requests with store: false still work", reason)
    return None


class FaultLog:
    """Logs the store's faults once each: when one starts or changes, and when storage works again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.current: StorageUnavailable | None = None  # the last fault seen, None once storage works

    def failed(self, fault: StorageUnavailable) -> None:
        with self._lock:
            changed = self.current is None or self.current.reason != fault.reason
            self.current = fault
        if changed:
            log.error("response storage fault: %s", fault)

    def worked(self) -> None:
        with self._lock:
            was, self.current = self.current, None
        if was is not None:
            log.warning("response storage works again (it had failed: %s)", was.reason)
