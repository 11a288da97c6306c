"""Loaded models and just-in-time loading.

A request that names a model on disk which is not loaded loads it (JIT, on by default).
Concurrent first requests for the same model wait for one load instead of each loading
their own copy. Loading runs in a worker thread so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from studiolo.config import EngineSettings
from studiolo.engine.engine import Engine
from studiolo.engine.llama import LlamaModel
from studiolo.models.catalog import Catalog, CatalogEntry

log = logging.getLogger(__name__)


class ModelNotLoaded(LookupError):
    def __init__(self, key: str):
        super().__init__(
            f"model '{key}' is not loaded and just-in-time loading is off; load it first (studiolo load {key})"
        )


@dataclass
class LoadedModel:
    entry: CatalogEntry
    model: LlamaModel
    engine: Engine
    loaded_at: float = field(default_factory=time.time)

    @property
    def key(self) -> str:
        return self.entry.key

    def close(self) -> None:
        self.engine.close()
        self.model.close()


class ModelManager:
    def __init__(self, catalog: Catalog, settings: EngineSettings, *, jit_loading: bool = True):
        self.catalog = catalog
        self.settings = settings
        self.jit_loading = jit_loading
        self._loaded: dict[str, LoadedModel] = {}
        self._loading: dict[str, asyncio.Lock] = {}

    def loaded(self) -> list[LoadedModel]:
        return list(self._loaded.values())

    async def get(self, name: str) -> LoadedModel:
        """The loaded model ``name`` refers to, loading it first if JIT allows."""
        entry = self.catalog.resolve(name)
        found = self._loaded.get(entry.key)
        if found is not None:
            return found
        if not self.jit_loading:
            raise ModelNotLoaded(entry.key)
        return await self.load(entry)

    async def load(self, entry: CatalogEntry) -> LoadedModel:
        lock = self._loading.setdefault(entry.key, asyncio.Lock())
        async with lock:
            found = self._loaded.get(entry.key)
            if found is not None:
                return found
            started = time.perf_counter()
            loaded = await asyncio.to_thread(self._load_blocking, entry)
            self._loaded[entry.key] = loaded
            log.info("loaded %s in %.2fs", entry.key, time.perf_counter() - started)
            return loaded

    def _load_blocking(self, entry: CatalogEntry) -> LoadedModel:
        model = LlamaModel(entry.path)
        try:
            engine = Engine(model, self.settings)
        except BaseException:
            model.close()
            raise
        return LoadedModel(entry, model, engine)

    async def close(self) -> None:
        loaded, self._loaded = list(self._loaded.values()), {}
        for item in loaded:
            await asyncio.to_thread(item.close)
