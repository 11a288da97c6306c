"""How many sequences may wait for one engine's slots, and for how long.

An engine decodes ``parallel`` sequences at once; the others wait in its scheduler's queue. That queue is
bounded here, in sequences (a request with ``n`` choices takes ``n`` places): a submission that would
make more than ``max_queued`` sequences wait is refused at once (``QueueFull``, a 429 with Retry-After)
instead of joining a queue that only grows under load. An idle engine (nothing running or waiting)
takes any submission whole: it waits only for its own sequences, and refusing it would refuse it
forever. A sequence still waiting at its request's ``queue_deadline`` leaves the queue, finished with
reason ``queue_timeout`` (the service turns that into a 503 with Retry-After), never left hanging.

``live`` counts sequences submitted and not yet finished. It is changed under the engine's lock by
the submitting thread (up) and the compute thread (down, as each sequence finishes), so the count a
submission is checked against is exact: ``live - parallel`` sequences are waiting.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from studiolo.domain.errors import Overloaded
from studiolo.engine.sequence import Sequence

# What a refused client is told to wait, in seconds (Retry-After): a hint, not a promise; the queue
# moves as sequences finish, which for a chat answer takes seconds
RETRY_AFTER_SECONDS = 1
QUEUE_TIMEOUT = "queue_timeout"  # FinishEvent.reason of a sequence that waited past its deadline


class QueueFull(Overloaded):
    code, param = "queue_full", "model"
    retry_after = RETRY_AFTER_SECONDS


class Admission:
    """The count of an engine's live sequences; called with the engine's lock held."""

    def __init__(self, parallel: int):
        self.parallel = parallel
        self.live = 0

    def waiting(self) -> int:
        return max(0, self.live - self.parallel)

    def enter(self, count: int, max_queued: int | None) -> None:
        """Count ``count`` new sequences in, or raise QueueFull if too many would wait."""
        would_wait = max(0, self.live + count - self.parallel)
        if max_queued is not None and self.live > 0 and would_wait > max_queued:
            raise QueueFull(f"the model is busy: {self.waiting()} sequences already wait for one of its "
                            f"{self.parallel} parallel slots, and at most {max_queued} may wait (setting "
                            f"limits.max_queued_per_model); retry after {RETRY_AFTER_SECONDS} s")
        self.live += count

    def leave(self, count: int = 1) -> None:
        self.live -= count


def expired(waiting: Iterable[Sequence], now: float | None = None) -> list[Sequence]:
    """The waiting sequences whose request's queue deadline (time.monotonic) has passed."""
    now = time.monotonic() if now is None else now
    return [seq for seq in waiting
            if seq.request.queue_deadline is not None and seq.request.queue_deadline <= now]



def queue_deadline(seconds: int) -> float | None:
    """The time.monotonic() a request waiting from now for ``seconds`` must have a slot by; 0: none."""
    return time.monotonic() + seconds if seconds else None
