"""The process's memory as the kernel and the C allocator see it, and giving freed memory back.

Resident memory (``/proc/self/status``) splits into file pages (the memory-mapped model weights,
which the kernel may drop and read again) and anonymous pages (everything allocated: KV caches,
compute buffers, the RAM prompt cache, Python's objects).

glibc's malloc keeps what a program frees for reuse instead of returning it to the kernel: small
blocks always, and large ones once its mmap threshold has risen (it follows the largest block
freed, up to 32 MiB: KV states saved and dropped by the prompt cache raise it at once). With
several threads allocating (the compute thread, the HTTP worker threads) it keeps one heap, an
"arena", per thread in contention, each holding its own free memory. ``malloc_trim(0)`` hands
the free pages of every arena back; ``mallinfo2`` tells how much is free inside them.
On a C library other than glibc both are skipped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass
from pathlib import Path


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim, libc.mallinfo2  # noqa: B018 - glibc's, or AttributeError
    except (OSError, AttributeError):
        return None
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.mallinfo2.restype = _MallInfo2
    return libc


_LIBC = _glibc()


@dataclass(frozen=True)
class ResidentMemory:
    """Bytes of the process in RAM now, and the most it has had."""

    rss: int
    anonymous: int  # allocated memory: what the process's own work holds
    file: int  # mapped files, the model weights mostly
    peak: int  # VmHWM: the highest rss since the process started


def resident(status: Path = Path("/proc/self/status")) -> ResidentMemory:
    """Read from ``/proc/<pid>/status`` (the kernel's counters, in kB)."""
    values = {}
    for line in status.read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
            values[name] = int(rest.split()[0]) * 1024
    return ResidentMemory(values["VmRSS"], values["RssAnon"], values["RssFile"] + values.get("RssShmem", 0),
                          values["VmHWM"])


def allocator_free_bytes() -> int | None:
    """Bytes freed by the program that malloc still holds in its arenas (None off glibc)."""
    if _LIBC is None:
        return None
    info = _LIBC.mallinfo2()
    return int(info.fordblks)


def allocated_bytes() -> int:
    """Bytes malloc has handed out and not had back (0 off glibc): the difference across a call
    is what that call kept on the heap, native libraries' allocations included."""
    if _LIBC is None:
        return 0
    info = _LIBC.mallinfo2()
    return int(info.uordblks + info.hblkhd)


M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h


def limit_arenas(count: int) -> bool:
    """Let malloc keep at most ``count`` heaps from now on (unless MALLOC_ARENA_MAX already says),
    whether it was set. glibc's default, 8 per core, gives each short-lived worker thread a heap of
    its own whose freed pieces trimming cannot give back: measured in ``make soak``, 101 MiB stayed
    after the load with the default, 24 MiB with 2. Call it before the threads start."""
    if _LIBC is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return bool(_LIBC.mallopt(M_ARENA_MAX, count))


def trim() -> bool:
    """Give the allocator's free pages back to the kernel; whether any were."""
    return bool(_LIBC.malloc_trim(0)) if _LIBC is not None else False
