"""A live feed of what the models see and say, and of the server's log lines.

``LogHub`` is what ``studiolo log stream`` (LM Studio's ``lms log stream``) reads: the generation
service publishes each request's exact formatted prompt and each finished choice to the source
"model", and ``LogHubHandler`` publishes every log record of the server to the source "server".

Publishing sits on every request's path and on every log call, from the event loop and from
engine or library threads alike, so it never blocks and never raises, and with nobody listening
it costs one dictionary lookup. Each subscriber has its own bounded queue: a reader that falls
behind loses its oldest events (and is told how many) rather than slowing the server or growing
its memory. Queues are bounded in events and in bytes: a model input event carries the whole
prompt (megabytes, for a long one), so 256 of them could hold a gigabyte. The hub's
``budget_bytes`` (``Budgets.log_queue_mib``) is shared by its readers in equal parts; an event
counts what its strings take (``sys.getsizeof``) once per reader that holds it, an upper bound
since readers share it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from studiolo.engine.speculation import DraftStats

SOURCES = ("model", "server")
DEFAULT_MAX_PENDING = 256  # events a subscriber may fall behind by before the oldest are dropped
DEFAULT_BUDGET_BYTES = 64 * 2**20  # Budgets.log_queue_mib's default

# uvicorn's loggers, parents first so a child that propagates to an attached parent is skipped
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def utc_timestamp() -> str:
    """Now as ISO-8601 UTC with milliseconds: ``2025-01-31T12:00:00.123Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Subscription:
    """One reader's queue. Written from any thread, read on the event loop that subscribed."""

    def __init__(self, source: str, hub: LogHub, max_pending: int):
        self.source = source
        self._hub = hub
        self._max_pending = max_pending
        self._events: deque[tuple[dict[str, Any], int]] = deque()  # with each event's size
        self.pending_bytes = 0
        self._dropped = 0
        self._lock = threading.Lock()  # publishers on other threads touch the queue too
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._ready = asyncio.Event()
        self._wake_scheduled = False  # one pending wake-up is enough, however many events arrive

    def offer(self, event: dict[str, Any], size: int = 0, max_bytes: int | None = None) -> None:
        """Queue an event of ``size`` bytes, dropping the oldest while the queue is full (in events,
        or past ``max_bytes`` with it); the newest is always kept. Safe from any thread, never blocks."""
        with self._lock:
            while self._events and (len(self._events) >= self._max_pending
                                    or (max_bytes is not None and self.pending_bytes + size > max_bytes)):
                self.pending_bytes -= self._events.popleft()[1]
                self._dropped += 1
            self._events.append((event, size))
            self.pending_bytes += size
            if self._wake_scheduled:
                return
            self._wake_scheduled = True
        if threading.get_ident() == self._loop_thread:
            self._wake()
        else:
            # asyncio.Event is not thread-safe: set it on its own loop
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        with self._lock:
            self._wake_scheduled = False
        self._ready.set()

    def _take(self) -> dict[str, Any] | None:
        with self._lock:
            if self._dropped:
                count, self._dropped = self._dropped, 0
                return self._hub.stamp(self.source, {"type": "dropped", "count": count})
            if self._events:
                event, size = self._events.popleft()
                self.pending_bytes -= size
                return event
            self._ready.clear()
            return None

    async def get(self) -> dict[str, Any]:
        """The next event; a ``dropped`` notice first if events were lost since the last read."""
        while (event := self._take()) is None:
            await self._ready.wait()
        return event

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await self.get()


class LogHub:
    """Fans events out to the subscribers of each source. One per server."""

    def __init__(self, max_pending: int = DEFAULT_MAX_PENDING, budget_bytes: int = DEFAULT_BUDGET_BYTES):
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.max_pending = max_pending
        self.budget_bytes = budget_bytes  # all readers' queues together
        # replaced, never mutated, under the lock: publish reads it without locking
        self._subscribers: dict[str, tuple[Subscription, ...]] = {source: () for source in SOURCES}
        self._lock = threading.Lock()

    def has_subscribers(self, source: str) -> bool:
        """Whether anyone listens: lets publishers skip building events nobody would read."""
        return bool(self._subscribers.get(source))

    def subscriber_count(self, source: str) -> int:
        return len(self._subscribers.get(source, ()))

    def pending_bytes(self) -> int:
        """What every reader's queue holds, in bytes (a snapshot)."""
        return sum(s.pending_bytes for subscribers in list(self._subscribers.values()) for s in subscribers)

    @staticmethod
    def stamp(source: str, event: dict[str, Any]) -> dict[str, Any]:
        return {**event, "timestamp": utc_timestamp(), "source": source}

    def publish(self, source: str, event: dict[str, Any]) -> None:
        """Send ``event`` to the current subscribers of ``source``, from any thread.

        Subscribers share the stamped dict, so they must not change it.
        """
        subscribers = self._subscribers.get(source)
        if not subscribers:
            return
        try:
            stamped = self.stamp(source, event)
            size = event_bytes(stamped)
        except Exception:  # noqa: BLE001 - a bad event must not break the request publishing it
            return
        readers = sum(len(group) for group in self._subscribers.values())
        share = self.budget_bytes // max(1, readers)
        for subscription in subscribers:
            try:
                subscription.offer(stamped, size, share)
            except Exception:  # noqa: BLE001 - e.g. the subscriber's loop has just closed
                pass

    @asynccontextmanager
    async def subscribe(self, source: str, max_pending: int | None = None) -> AsyncIterator[Subscription]:
        """Receive the events of ``source`` published from now until the block exits."""
        if source not in SOURCES:
            raise ValueError(f"unknown log source {source!r}: use one of {', '.join(SOURCES)}")
        max_pending = self.max_pending if max_pending is None else max_pending
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        subscription = Subscription(source, self, max_pending)
        with self._lock:
            self._subscribers[source] = self._subscribers[source] + (subscription,)
        try:
            yield subscription
        finally:
            with self._lock:
                self._subscribers[source] = tuple(s for s in self._subscribers[source] if s is not subscription)


def event_bytes(event: dict[str, Any]) -> int:
    """What an event holds in memory: the dict and its values (strings, numbers; not deeper)."""
    return sys.getsizeof(event) + sum(sys.getsizeof(value) for value in event.values())


def model_input_event(request_id: str, model: str, prompt_text: str, prompt_tokens: int) -> dict[str, Any]:
    """The exact formatted prompt a request sends to the model."""
    return {
        "type": "input",
        "request_id": request_id,
        "model": model,
        "prompt": prompt_text,
        "prompt_tokens": prompt_tokens,
    }


def model_output_event(
    request_id: str,
    model: str,
    index: int,
    text: str,
    completion_tokens: int,
    stop_reason: str | None,
    tokens_per_second: float | None,
    time_to_first_token: float | None,
    draft_model: str | None = None,
    drafts: DraftStats | None = None,
    reasoning: str | None = None,
) -> dict[str, Any]:
    """What one finished choice produced, with its stats (seconds for the time to first token); a
    choice that drafted adds LM Studio's draft statistics (``draft_model`` None: a prediction drafted).
    A reasoning model's choice whose output was split has its ``reasoning`` apart; ``text`` is then
    the output after the reasoning (the answer, with its tool calls as the model wrote them)."""
    event = {
        "type": "output",
        "request_id": request_id,
        "model": model,
        "index": index,
        "text": text,
        "completion_tokens": completion_tokens,
        "stop_reason": stop_reason,
        "tokens_per_second": tokens_per_second,
        "time_to_first_token": time_to_first_token,
    }
    if reasoning is not None:
        event["reasoning"] = reasoning
    if drafts is not None:
        event.update(draft_model=draft_model, total_draft_tokens_count=drafts.drafted,
                     accepted_draft_tokens_count=drafts.accepted, rejected_draft_tokens_count=drafts.rejected,
                     ignored_draft_tokens_count=drafts.ignored)
    return event


class LogHubHandler(logging.Handler):
    """Publishes log records to the hub's "server" source."""

    def __init__(self, hub: LogHub):
        super().__init__()
        self.hub = hub
        self.loggers: list[logging.Logger] = []  # where install_server_log_handler attached it

    def emit(self, record: logging.LogRecord) -> None:
        if not self.hub.has_subscribers("server"):
            return  # the usual case: skip formatting the message
        try:
            event = {"type": "log", "level": record.levelname, "logger": record.name, "message": record.getMessage()}
            if record.exc_info:
                event["exception"] = logging.Formatter().formatException(record.exc_info)
            self.hub.publish("server", event)
        except Exception:  # noqa: BLE001 - logging must never fail the code that logs
            pass


def _reaches(logger: logging.Logger, attached: list[logging.Logger]) -> bool:
    """Whether records logged on ``logger`` already pass one of ``attached`` by propagation."""
    current: logging.Logger | None = logger
    while current is not None:
        if current in attached:
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False


def install_server_log_handler(hub: LogHub) -> LogHubHandler:
    """Publish the server's log records: the root logger's, and uvicorn's that do not reach it.

    uvicorn's own logging config stops "uvicorn" and "uvicorn.access" from propagating to the
    root, while "uvicorn.error" propagates to "uvicorn"; attaching only where records would not
    already arrive gives each record exactly one event whatever the configuration. Call it once
    logging is configured (uvicorn does that before the app's lifespan starts).
    """
    handler = LogHubHandler(hub)
    root = logging.getLogger()
    root.addHandler(handler)
    handler.loggers.append(root)
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        if not _reaches(logger, handler.loggers):
            logger.addHandler(handler)
            handler.loggers.append(logger)
    return handler


def remove_server_log_handler(handler: LogHubHandler) -> None:
    for logger in handler.loggers:
        logger.removeHandler(handler)
    handler.loggers.clear()
