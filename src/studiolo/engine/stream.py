"""Handing engine events from the worker thread to asyncio.

The worker collects every event of a step and hands them over in one
``call_soon_threadsafe`` per event loop, instead of one wake-up per token.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque

from studiolo.engine.sequence import EngineEvent, FinishEvent


class TokenStream:
    """The consumer's end of one sequence: an async iterator of engine events."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._events: deque[EngineEvent] = deque()
        self._ready = asyncio.Event()
        self.finished = False
        self.cancel = lambda: None  # set by the engine on submit

    def _receive(self, events: list[EngineEvent]) -> None:
        """Runs on the event loop."""
        self._events.extend(events)
        self._ready.set()

    def __aiter__(self):
        return self

    async def __anext__(self) -> EngineEvent:
        while not self._events:
            if self.finished:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        event = self._events.popleft()
        if isinstance(event, FinishEvent):
            self.finished = True
        return event

    async def drain(self) -> list[EngineEvent]:
        return [event async for event in self]


def _deliver(batch: list[tuple[TokenStream, list[EngineEvent]]]) -> None:
    for stream, events in batch:
        stream._receive(events)


class Outbox:
    """Events gathered during one engine step, sent on when the step ends."""

    def __init__(self) -> None:
        self._pending: dict[TokenStream, list[EngineEvent]] = {}

    def put(self, stream: TokenStream, event: EngineEvent) -> None:
        self._pending.setdefault(stream, []).append(event)

    def flush(self) -> None:
        if not self._pending:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list] = defaultdict(list)
        for stream, events in self._pending.items():
            by_loop[stream.loop].append((stream, events))
        self._pending = {}
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, batch)
            except RuntimeError:  # the loop closed: nobody is listening any more
                pass
