"""Whether the server is ready for traffic (``GET /ready``), and the start-up loads it waits for.

Ready means: stored responses can be written now (a probe row, rolled back: a read-only or damaged
database, a full disk or the size cap all show), and every model of ServerSettings.preload_models is
loaded. Those are loaded when the server starts, one after another, with no idle TTL, so a
just-in-time load never makes a first request wait for them; a readiness probe (a service manager's,
a load balancer's) holds traffic back until they are in.

What is missing is said by codes and model keys only, never by a message: those can hold paths.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from studiolo.domain.errors import StudioloError
from studiolo.models.instance import LoadConfig
from studiolo.service.conversations import Conversations
from studiolo.service.models import ModelService

log = logging.getLogger(__name__)

LOADING, LOADED = "loading", "loaded"


@dataclass
class Readiness:
    ready: bool
    store: str  # "ok", or the storage fault's code
    models: dict[str, str] = field(default_factory=dict)  # preloaded key -> loaded | loading | failed: <code>

    def missing(self) -> list[str]:
        """One line per thing not ready, for the 503's body."""
        lines = [] if self.store == "ok" else [f"store: {self.store}"]
        return lines + [f"model {key}: {state}" for key, state in self.models.items() if state != LOADED]


class Preloads:
    """The models the server loads when it starts, and how each load went."""

    def __init__(self, models: ModelService, keys: tuple[str, ...]):
        self._models = models
        self._state = dict.fromkeys(keys, LOADING)
        self._instances: dict[str, str] = {}  # preloaded key -> the instance it loaded
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._state:
            self._task = asyncio.create_task(self._load_all())

    async def _load_all(self) -> None:
        for key in self._state:
            try:
                status = await self._models.load(key, LoadConfig())
                self._instances[key] = status.id
                self._state[key] = LOADED
            except Exception as exc:  # any failure: a load left "loading" would hold readiness back for ever
                log.error("could not preload %s: %s", key, exc)
                code = (exc.code or exc.kind) if isinstance(exc, StudioloError) else "internal"
                self._state[key] = f"failed: {code}"

    def states(self) -> dict[str, str]:
        """Each key's state; a loaded model unloaded since (by hand) counts as missing again."""
        loaded = {instance.id for instance in self._models.manager.loaded()}
        states = dict(self._state)
        for key, state in states.items():
            if state == LOADED and self._instances[key] not in loaded:
                states[key] = "unloaded"
        return states

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def readiness(conversations: Conversations, preloads: Preloads) -> Readiness:
    store = "ok"
    try:
        await asyncio.to_thread(conversations.check_can_store, [])
    except StudioloError as exc:
        store = exc.code or exc.kind
    models = preloads.states()
    ready = store == "ok" and all(state == LOADED for state in models.values())
    return Readiness(ready, store, models)
