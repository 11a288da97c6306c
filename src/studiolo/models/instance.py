"""A loaded model instance: weights, engine, how it was loaded and when it was last used."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from studiolo.config import EngineSettings
from studiolo.engine.constraints import forget as forget_constraints
from studiolo.engine.embedding import EmbeddingEngine
from studiolo.engine.engine import Engine
from studiolo.engine.llama import LlamaModel
from studiolo.models.catalog import CatalogEntry
from studiolo.models.gguf_info import ModelInfo
from studiolo.models.memory import LoadEstimate


@dataclass(frozen=True)
class LoadConfig:
    """LM Studio's load options; None means the server's default."""

    context_length: int | None = None
    parallel: int | None = None
    eval_batch_size: int | None = None
    ttl: float | None = None  # seconds idle before unloading; None: never
    identifier: str | None = None
    draft_model: str | None = None  # drafts for its requests unless they name another ("ngram": no model)


@dataclass
class Instance:
    id: str  # "google/gemma-3-270m", "google/gemma-3-270m:2", or the identifier it was given
    entry: CatalogEntry
    info: ModelInfo
    model: LlamaModel
    engine: Engine | EmbeddingEngine  # an embedding model gets the latter
    settings: EngineSettings
    jit: bool  # loaded by a request (auto-evict applies) rather than explicitly
    ttl: float | None
    load_seconds: float
    footprint: LoadEstimate  # weights, KV cache and compute buffers of this instance, in bytes
    draft_model: str | None = None  # the draft its requests use unless they name another
    loaded_at: float = field(default_factory=time.time)
    last_active: float = field(default_factory=time.monotonic)
    draft_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one draft model load at a time

    @property
    def key(self) -> str:
        return self.entry.key

    @property
    def context_length(self) -> int:
        return self.engine.context_length

    def draft_models(self) -> list[str]:
        """The draft models attached to it, by catalog key."""
        engine = self.engine
        return list(engine.drafts) if isinstance(engine, Engine) else []

    def busy(self) -> bool:
        return self.engine.busy()

    def touch(self) -> None:
        self.last_active = time.monotonic()

    def ttl_remaining(self) -> float | None:
        """Seconds until the idle timer unloads it; the full TTL while it is working."""
        if self.ttl is None:
            return None
        if self.busy():
            return self.ttl
        return max(0.0, self.ttl - (time.monotonic() - self.last_active))

    def close(self) -> None:
        self.engine.close()
        if isinstance(self.engine, Engine):
            self.engine.slots.cache.clear()  # its states count against the process's budget until freed
        forget_constraints(self.model)  # its llguidance tokenizer points into the model's vocabulary
        self.model.close()
