"""The lifecycle every engine shares: an inbox, the compute thread's wake signal, and close.

Other threads post work to an engine's inbox under ``COMPUTE.wake`` (the compute thread's own
lock, so a post cannot slip in between its check for work and its wait). Closing is carried out
by the compute thread itself, between steps: the engine ends whatever it holds, leaves the
thread, and only then does ``close`` free the llama.cpp context, never under a running
computation. Engines still open when the interpreter exits are closed first: the compute thread
left inside llama_decode while the process tears down its C++ state crashes it.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from abc import ABC, abstractmethod
from collections import deque
from typing import Generic, TypeVar

from studiolo.engine.compute import COMPUTE
from studiolo.engine.llama import LlamaContext

UNLOADED = "the model was unloaded; send the request again to load it"

Work = TypeVar("Work")

_open_engines: weakref.WeakSet[EngineLifecycle] = weakref.WeakSet()


@atexit.register
def close_open_engines() -> None:
    """Close every engine still open (run at interpreter exit)."""
    for engine in list(_open_engines):
        engine.close()


class EngineLifecycle(ABC, Generic[Work]):
    """Base of the engines: subclasses hold ``context`` and define ``_work_step`` and ``_shut_down``.

    ``_inbox`` holds the posted work; what a subclass does with it (drain it each step, or keep
    items until they are done) is its own affair, as long as it reads and changes it under ``_wake``.
    """

    context: LlamaContext

    def __init__(self) -> None:
        """Call last in a subclass's ``__init__``: the compute thread may step the engine at once."""
        self._inbox: deque[Work] = deque()
        self._wake = COMPUTE.wake
        self._closing = False
        self._closed = threading.Event()
        COMPUTE.attach(self)
        _open_engines.add(self)

    # --- called from other threads ----------------------------------------------------

    def close(self) -> None:
        """End the engine's work with an error, leave the compute thread and free the context. Idempotent."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._closed.wait()  # the compute thread is out of this engine's step: the context is unused
        self.context.close()
        _open_engines.discard(self)

    def _post(self, work: Work) -> bool:
        """Queue ``work`` for the compute thread; False (and nothing queued) once the engine is closing."""
        with self._wake:
            if self._closing:
                return False
            self._inbox.append(work)
            self._wake.notify()
            return True

    # --- on the compute thread --------------------------------------------------------

    def ready(self) -> bool:
        """Whether a step has something to do; called with the compute lock held."""
        return bool(self._inbox) or self._has_work() or (self._closing and not self._closed.is_set())

    def run_step(self) -> None:
        with self._wake:
            closing = self._closing
        if closing:
            try:
                self._shut_down()
            finally:  # even if ending its work failed, ``close`` must not wait forever
                COMPUTE.detach(self)
                self._closed.set()
            return
        self._work_step()

    def _has_work(self) -> bool:
        """Work the engine holds outside its inbox (called with the compute lock held)."""
        return False

    @abstractmethod
    def _work_step(self) -> None:
        """One step of the engine's work, without the lock."""

    @abstractmethod
    def _shut_down(self) -> None:
        """End everything the engine holds or finds in its inbox: nothing will ever run it."""
