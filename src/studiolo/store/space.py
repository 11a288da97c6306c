"""Room left for the response database: free disk, the database's own free pages, and its size cap.

KV states kept with responses are caches (a conversation without one is prefilled again), so the
room they may take is sized against what is free, not only against a fixed budget: they get at most
``STATE_SHARE`` of the room (counting their own bytes as room, since they can always be dropped),
so that half of what was free stays free for responses, other files and other programs.
"""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

MIB = 2**20
STATE_SHARE = 0.5  # of the room (free disk, free pages, states' own bytes) KV states may fill
# a stored turn's row is its items as JSON, written twice (WAL, then the file): what must be free
# beyond the turn's own input before it is generated; more than any reply of a small local context
WRITE_MARGIN_BYTES = 1 * MIB
# the WAL file is cut back to this after a checkpoint (SQLite keeps it at its largest otherwise: a
# 30 MB KV state would leave a 30 MB WAL behind); the size it keeps lets a delete go through on a
# full disk, since its frames reuse space the file already has
WAL_KEEP_BYTES = 4 * MIB


@dataclass(frozen=True)
class Room:
    disk_free: int  # bytes the disk has for this process (statvfs f_bavail)
    free_pages: int  # bytes of the database's free pages (reused before the file grows)
    cap_left: int | None  # bytes left under budgets.stored_file_mib, counting free pages; None: no cap

    @property
    def bytes(self) -> int:
        """What can still be written, without dropping anything."""
        room = self.free_pages + self.disk_free
        return max(0, room if self.cap_left is None else min(room, self.cap_left))


def measure(conn: sqlite3.Connection, path: Path, cap_bytes: int) -> Room:
    """The room now; reads three pragmas (no I/O beyond the header) and statvfs."""
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free_pages = conn.execute("PRAGMA freelist_count").fetchone()[0] * page_size
    disk_free = shutil.disk_usage(path.parent).free
    cap_left = cap_bytes - (pages * page_size - free_pages) if cap_bytes else None
    return Room(disk_free, free_pages, cap_left)


def disk_full(path: Path) -> bool:
    """Whether the disk holding ``path`` has less than a write's margin free."""
    try:
        return shutil.disk_usage(path.parent).free < WRITE_MARGIN_BYTES
    except OSError:
        return False


def state_allowance(room: Room, state_bytes: int, budget_bytes: int) -> int:
    """Bytes KV states may hold in all: the configured budget, and STATE_SHARE of the room."""
    return max(0, min(budget_bytes, int((room.bytes + state_bytes) * STATE_SHARE)))
