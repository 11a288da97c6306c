"""Loaded model instances, as LM Studio manages them: JIT loading, idle TTL, auto-evict.

- JIT (on by default): a request naming a model on disk that is not loaded loads it.
  Concurrent first requests for one model wait for a single load (LM Studio loads duplicates).
- Idle TTL: an instance with a TTL unloads once it has run no sequence for that long; JIT loads
  get the request's ``ttl`` or an hour; explicit loads none unless asked.
- Auto-evict (on by default): at most one JIT-loaded model at a time. Loading another JIT model
  first unloads the previous one, waiting for it to finish what it is generating (never cutting
  a generation off); if it stays busy too long, the new load is refused. Explicit loads are never
  evicted.
- A model's settings file (STUDIOLO_HOME/model-settings/<publisher>/<repo>.json) gives its load
  defaults (context length, parallel, ttl) wherever the load itself leaves them to the server.
- A memory guard refuses a load that would not fit in RAM (models/memory.py).
- A request naming a LoRA adapter gets its base model's instance (loaded as above) with the
  adapter loaded onto it (models/adapters.py); adapters themselves are never instances.

Everything here runs on the event loop; the slow parts (loading, closing) in worker threads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeGuard

from studiolo.config import Budgets, EngineSettings
from studiolo.domain.errors import InternalError, InvalidRequest, NotFound, Unavailable
from studiolo.engine.draft_model import DraftModel
from studiolo.engine.embedding import EmbeddingEngine
from studiolo.engine.engine import Engine
from studiolo.engine.llama import LlamaModel, LoraAdapter, ModelLoadError
from studiolo.engine.prompt_cache import POOL as PROMPT_CACHE
from studiolo.engine.slots import kv_cells, read_lanes
from studiolo.models.adapters import load_adapter
from studiolo.models.catalog import Catalog, CatalogEntry, ModelNotFound
from studiolo.models.drafts import NGRAM, NO_DRAFT, attach_draft, draft_entry
from studiolo.models.gguf_info import InvalidModelFile, ModelInfo, read_model_info, vision_projector
from studiolo.models.instance import Instance, LoadConfig
from studiolo.models.load_progress import LoadBoard, LoadProgress, Watch
from studiolo.models.memory import check_fits, context_footprint, estimate
from studiolo.models.projector import load_projector, projector_estimate, projector_footprint
from studiolo.store.settings_files import InvalidSettingsFile, read_model_defaults

log = logging.getLogger(__name__)

JIT_DEFAULT_TTL = 3600.0  # LM Studio's default idle TTL for JIT-loaded models
EVICT_WAIT_SECONDS = 60.0  # how long a JIT load waits for the model it evicts to go idle
# A model handed to a request counts as in use this long: the request may not have queued its work
# yet (it awaits a grammar, an adapter), and evicting the model then would fail it.
EVICT_GRACE_SECONDS = 1.0
TTL_CHECK_SECONDS = 0.5


class ModelNotLoaded(NotFound):
    code, param = "model_not_found", "model"

    def __init__(self, key: str):
        super().__init__(
            f"model '{key}' is not loaded and just-in-time loading is off; load it first (studiolo load {key})"
        )


class InstanceNotFound(NotFound):
    code, param = "model_not_found", "instance_id"

    def __init__(self, instance_id: str, loaded: list[str]):
        listing = ", ".join(loaded) if loaded else "none"
        super().__init__(f"no loaded model instance '{instance_id}'; loaded instances: {listing}")


class IdentifierTaken(InvalidRequest):
    code = "identifier_taken"
    param = "identifier"


class ModelBusy(Unavailable):
    """A JIT load would evict a model that kept generating past the wait."""
    code, param = "model_busy", "model"


class ModelLoadFailed(InternalError):
    code, param = "model_load_failed", "model"


class InvalidModelSettings(ModelLoadFailed):
    code = "invalid_model_settings"
    retry = False  # the file must be fixed first


class ModelFileUnloadable(ModelLoadFailed):
    """The file itself cannot be loaded (corrupt, truncated, unsupported): trying again cannot help
    until it changes on disk."""
    retry = False  # OpenAI's and Anthropic's clients retry a 5xx unless told not to


class AdapterNotLoadable(InvalidRequest):
    """An explicit load named a LoRA adapter: adapters ride on their base model's instance."""
    code, param = "model_is_adapter", "model"

    def __init__(self, entry: CatalogEntry):
        base = entry.base.key if entry.base is not None else "its base model"
        super().__init__(
            f"'{entry.key}' is a LoRA adapter of '{base}', not a model: load '{base}' "
            f"and name the adapter in requests' model field"
        )


@dataclass(frozen=True)
class Target:
    """What a request's ``model`` names: a loaded instance, and the LoRA adapter to apply, if any."""

    instance: Instance
    adapter: LoraAdapter | None = None
    adapter_key: str | None = None
    load_seconds: float | None = None  # how long this request's JIT load took, if it loaded the model

    @property
    def name(self) -> str:
        """The model as responses name it: the adapter when there is one."""
        return self.adapter_key or self.instance.id


class ModelManager:
    def __init__(
        self,
        catalog: Catalog,
        settings: EngineSettings,
        *,
        jit_loading: bool = True,
        auto_evict: bool = True,
        evict_wait_seconds: float = EVICT_WAIT_SECONDS,
        budgets: Budgets | None = None,
        jit_ttl: float | None = JIT_DEFAULT_TTL,
    ):
        self.catalog = catalog
        budgets = budgets or Budgets()
        # The budget is the one setting: every engine's prompt cache takes it as its own cap, and
        # all of them together are held to it (engine/prompt_cache.py).
        PROMPT_CACHE.budget_bytes = budgets.prompt_cache_mib * 2**20
        self.settings = replace(settings, prompt_cache_mib=budgets.prompt_cache_mib)
        self.jit_loading = jit_loading
        self.auto_evict = auto_evict
        self.evict_wait_seconds = evict_wait_seconds
        self.jit_ttl = jit_ttl  # a JIT load's idle TTL when its request names none (None: never)
        # loads by model key, and unloads by (model key, why: "request", "auto_evict", "ttl"), since start:
        # read by /metrics (service/metrics.py)
        self.load_counts: Counter[str] = Counter()
        self.unload_counts: Counter[tuple[str, str]] = Counter()
        self._instances: dict[str, Instance] = {}
        self._jit_loads: dict[str, asyncio.Task[Instance]] = {}  # per model key, while it loads
        self._loads: set[asyncio.Task[Instance]] = set()  # explicit loads under way (strong refs)
        self._load_lock = asyncio.Lock()  # one load at a time: memory checks see the truth
        # A JIT load evicts and loads as one step, so a second JIT load sees the first one's model
        # (LM Studio keeps at most one); explicit loads need not wait behind an eviction's wait.
        self._jit_lock = asyncio.Lock()
        self._ttl_task: asyncio.Task | None = None
        self.jit_load_progress = LoadBoard()  # JIT loads' progress by model key, for their requests to watch
        # Files that failed to load, by path: the file's stamp then, and the failure. Clients retry
        # a 5xx (OpenAI's, twice): such a file is refused at once until it changes on disk.
        self._unloadable: dict[Path, tuple[tuple[int, int, int], ModelFileUnloadable]] = {}

    # --- lookups ---------------------------------------------------------------------

    def loaded(self) -> list[Instance]:
        return list(self._instances.values())

    def prompt_cache_usage(self) -> tuple[int, int | None]:
        """Bytes the RAM prompt caches of all loaded models hold, and their budget together."""
        return PROMPT_CACHE.used_bytes, PROMPT_CACHE.budget_bytes

    def instances_of(self, key: str) -> list[Instance]:
        return [i for i in self._instances.values() if i.key == key]

    def _named(self, name: str) -> Instance | None:
        """The instance whose id is ``name`` (as given, or in the catalog's lower case)."""
        return self._instances.get(name) or self._instances.get(name.strip().lower())

    def find_instance(self, instance_id: str) -> Instance:
        found = self._named(instance_id)
        if found is None:
            raise InstanceNotFound(instance_id, list(self._instances))
        return found

    def instance_id_for(self, name: str) -> str:
        """The id of the instance ``get(name)`` would use now, or give the model it would load."""
        named = self._named(name)
        if named is not None:
            return named.id
        entry = self.catalog.resolve(name)
        key = (entry.base or entry).key
        existing = self._least_busy(key)
        return existing.id if existing is not None else self._new_instance_id(key, None)

    def is_embedding_model(self, name: str) -> bool:
        """Whether ``name`` is an embedding model (read from its file's header; raises for unknown names)."""
        info = self.model_info(name)
        return info is not None and info.is_embedding

    def model_info(self, name: str) -> ModelInfo | None:
        """The header of the model ``name`` gives, loaded or not (raises for unknown names; None: the
        file cannot be read, and loading it will say what is wrong)."""
        named = self._named(name)
        if named is not None:
            return named.info
        entry = self.catalog.resolve(name)
        try:
            return read_model_info((entry.base or entry).path)
        except (InvalidModelFile, OSError):
            return None

    def needs_load(self, name: str) -> bool:
        """Whether ``get(name)`` would load a model (raises as ``get`` does for unknown names)."""
        if self._named(name) is not None:
            return False
        entry = self.catalog.resolve(name)
        return self._least_busy((entry.base or entry).key) is None

    def watch_jit_load(self, name: str) -> Watch:
        """The progress of the JIT load ``get(name)`` waits for, under way or next to start."""
        entry = self.catalog.resolve(name)
        return self.jit_load_progress.watch((entry.base or entry).key)

    async def get(self, name: str, *, ttl: float | None = None, context_length: int | None = None) -> Target:
        """The instance (and adapter) a request's ``model`` names, JIT-loading the model if
        allowed (with ``ttl`` and ``context_length``); resets its idle timer."""
        instance = self._named(name)
        if instance is not None:
            instance.touch()
            return Target(instance)
        entry = self.catalog.resolve(name)
        model = entry.base or entry
        instance, load_seconds = self._least_busy(model.key), None
        if instance is None:
            if not self.jit_loading:
                raise ModelNotLoaded(model.key)
            started = time.time()
            config = _with_model_defaults(model, LoadConfig(context_length, ttl=ttl))
            if config.ttl is None and self.jit_ttl is not None:
                config = replace(config, ttl=self.jit_ttl)
            instance = await self._jit_load(model, config)
            load_seconds = instance.load_seconds if instance.loaded_at >= started else None
        instance.touch()
        if entry.is_adapter:
            return Target(instance, await load_adapter(instance, entry), entry.key, load_seconds)
        return Target(instance, load_seconds=load_seconds)

    def _least_busy(self, key: str) -> Instance | None:
        candidates = self.instances_of(key)
        return min(candidates, key=lambda i: sum(i.engine.request_counts()), default=None)

    # --- loading ---------------------------------------------------------------------

    # A load runs to its end in a task of its own, even when the request that asked for it goes
    # away (a client gone mid-load cancels the request's task, not the load): the model it maps is
    # then registered like any other, TTL and all, rather than left in memory where nothing sees it.

    async def _jit_load(self, entry: CatalogEntry, config: LoadConfig) -> Instance:
        self._refuse_known_unloadable(entry)  # before evicting a model for it
        loading = self._jit_loads.get(entry.key)
        if loading is None:  # concurrent first requests: one load, the others wait for it
            loading = self._jit_loads[entry.key] = asyncio.ensure_future(self._jit_load_now(entry, config))
            loading.add_done_callback(lambda done: self._load_done(done, entry.key))
        return await asyncio.shield(loading)

    async def _jit_load_now(self, entry: CatalogEntry, config: LoadConfig) -> Instance:
        async with self._jit_lock:
            existing = self._least_busy(entry.key)
            if existing is not None:
                return existing
            if self.auto_evict:
                await self._evict_jit_models(except_key=entry.key)
            return await self._load_now(entry, config, jit=True)

    async def load(self, entry: CatalogEntry, config: LoadConfig, progress: LoadProgress | None = None) -> Instance:
        """A new instance of ``entry`` (a second one when it is already loaded, as `lms load` does);
        ``progress`` follows its load."""
        if entry.is_adapter:
            raise AdapterNotLoadable(entry)
        self._refuse_known_unloadable(entry)
        config = _with_model_defaults(entry, config)
        if _names_a_draft_model(config.draft_model):
            draft_entry(self.catalog, config.draft_model)  # a bad name is a 400 before anything loads
        loading = asyncio.ensure_future(self._load_now(entry, config, jit=False, progress=progress))
        self._loads.add(loading)
        loading.add_done_callback(lambda done: self._load_done(done, None))
        return await asyncio.shield(loading)

    def _load_done(self, loading: asyncio.Task[Instance], jit_key: str | None) -> None:
        self._loads.discard(loading)
        if jit_key is not None and self._jit_loads.get(jit_key) is loading:
            del self._jit_loads[jit_key]
        if not loading.cancelled():
            loading.exception()  # retrieved: a failure nobody waited for any more is not an asyncio warning

    async def _load_now(self, entry: CatalogEntry, config: LoadConfig, *, jit: bool,
                        progress: LoadProgress | None = None) -> Instance:
        async with self._load_lock:
            instance_id = self._new_instance_id(entry.key, config.identifier)
            settings = replace(
                self.settings,
                context_length=config.context_length or self.settings.context_length,
                parallel=config.parallel or self.settings.parallel,
                batch_size=config.eval_batch_size or self.settings.batch_size,
            )
            started = time.perf_counter()
            if jit:
                progress = self.jit_load_progress.begin(entry.key)
            try:
                model, engine, info, footprint = await asyncio.to_thread(
                    _load_blocking, entry, settings, instance_id, progress.report if progress else None)
            except ModelFileUnloadable as exc:
                self._remember_unloadable(entry.path, exc)
                raise
            finally:
                if progress is not None:  # watchers see the load end, loaded or not
                    self.jit_load_progress.end(entry.key, progress)
            draft_model = None if config.draft_model in (None, *NO_DRAFT) else config.draft_model
            instance = Instance(instance_id, entry, info, model, engine, settings, jit, config.ttl,
                                load_seconds=time.perf_counter() - started, footprint=footprint,
                                draft_model=draft_model)
            self._instances[instance_id] = instance
            self.load_counts[entry.key] += 1
            if _names_a_draft_model(draft_model):
                await self._attach_or_unload(instance, draft_model)
        log.info("loaded %s as %s in %.2fs%s", entry.key, instance_id, instance.load_seconds,
                 f" (ttl {config.ttl:g}s)" if config.ttl is not None else "")
        self._ensure_ttl_task()
        return instance

    async def _attach_or_unload(self, instance: Instance, draft_model: str) -> None:
        """Load a model's default draft with it; a draft that cannot load fails the whole load."""
        try:
            await attach_draft(instance, draft_entry(self.catalog, draft_model))
        except BaseException:
            self._instances.pop(instance.id, None)
            await asyncio.to_thread(instance.close)
            raise

    async def draft(self, instance: Instance, name: str) -> DraftModel:
        """The draft model ``name`` attached to ``instance``, loaded onto it the first time."""
        return await attach_draft(instance, draft_entry(self.catalog, name))

    def _remember_unloadable(self, path: Path, failure: ModelFileUnloadable) -> None:
        stamp = _file_stamp(path)
        if stamp is not None:
            self._unloadable[path] = (stamp, failure)

    def _refuse_known_unloadable(self, entry: CatalogEntry) -> None:
        known = self._unloadable.get(entry.path)
        if known is None:
            return
        stamp, failure = known
        if _file_stamp(entry.path) != stamp:  # replaced or repaired: try it again
            del self._unloadable[entry.path]
            return
        raise ModelFileUnloadable(f"{failure} (the file failed to load before and has not changed since)")

    def _new_instance_id(self, key: str, identifier: str | None) -> str:
        if identifier is not None:
            identifier = identifier.strip()
            if not identifier:
                raise IdentifierTaken("identifier must not be empty")
            if identifier in self._instances:
                raise IdentifierTaken(f"identifier '{identifier}' is already used by a loaded instance")
            self._check_names_no_other_model(identifier, key)
            return identifier
        if key not in self._instances:
            return key
        n = 2
        while f"{key}:{n}" in self._instances:
            n += 1
        return f"{key}:{n}"

    def _check_names_no_other_model(self, identifier: str, key: str) -> None:
        """Requests look instances up before the catalog: an identifier that names another model
        (or adapter) would take that model's requests."""
        wanted = identifier.lower()
        entries = self.catalog.entries() + self.catalog.adapters()
        others = sorted(e.key for e in entries if e.key != key and wanted in e.names())
        if others:
            raise IdentifierTaken(
                f"identifier '{identifier}' names the model '{others[0]}': its requests would reach this instance;"
                " choose another identifier"
            )

    # --- unloading -------------------------------------------------------------------

    async def unload(self, instance_id: str, reason: str = "request") -> Instance:
        instance = self.find_instance(instance_id)
        self._instances.pop(instance.id, None)
        self.unload_counts[instance.key, reason] += 1
        await asyncio.to_thread(instance.close)
        log.info("unloaded %s", instance.id)
        return instance

    async def _evict_jit_models(self, except_key: str) -> None:
        for instance in [i for i in self._instances.values() if i.jit and i.key != except_key]:
            deadline = time.monotonic() + self.evict_wait_seconds
            while instance.busy() or time.monotonic() - instance.last_active < EVICT_GRACE_SECONDS:
                if time.monotonic() >= deadline:
                    raise ModelBusy(
                        f"cannot load '{except_key}': just-in-time loading keeps one model at a time and "
                        f"'{instance.id}' is still generating after {self.evict_wait_seconds:g} s; "
                        "retry later, or load models explicitly (studiolo load) to keep several"
                    )
                await asyncio.sleep(0.05)
            if instance.id in self._instances:
                log.info("auto-evicting %s to load %s", instance.id, except_key)
                await self.unload(instance.id, "auto_evict")

    def _ensure_ttl_task(self) -> None:
        if self._ttl_task is None or self._ttl_task.done():
            self._ttl_task = asyncio.create_task(self._expire_idle())

    async def _expire_idle(self) -> None:
        """Unload instances idle past their TTL; the clock stands still while they work."""
        while self._instances:
            await asyncio.sleep(TTL_CHECK_SECONDS)
            for instance in list(self._instances.values()):
                if instance.ttl is None:
                    continue
                if instance.busy():
                    instance.touch()
                elif instance.ttl_remaining() == 0.0 and instance.id in self._instances:
                    log.info("unloading %s: idle for its ttl of %gs", instance.id, instance.ttl)
                    await self.unload(instance.id, "ttl")

    async def close(self) -> None:
        if self._ttl_task is not None:
            self._ttl_task.cancel()
        instances, self._instances = list(self._instances.values()), {}
        for instance in instances:
            await asyncio.to_thread(instance.close)


def _with_model_defaults(entry: CatalogEntry, config: LoadConfig) -> LoadConfig:
    """``config`` with the model's settings file (store/settings_files.py) wherever it leaves a value to
    the server: what a load asks for (`studiolo load` flags, a request's ttl) wins over the file."""
    try:
        defaults = read_model_defaults(entry.key)
    except InvalidSettingsFile as exc:
        raise InvalidModelSettings(f"cannot load '{entry.key}': its settings file is invalid: {exc}") from None
    return replace(
        config,
        context_length=config.context_length or defaults.context_length,
        parallel=config.parallel or defaults.parallel,
        ttl=config.ttl if config.ttl is not None else defaults.ttl,
        draft_model=config.draft_model if config.draft_model is not None else defaults.draft_model,
    )


def _names_a_draft_model(name: str | None) -> TypeGuard[str]:
    """Whether a load's ``draft_model`` names a model (not none, nor drafting without one)."""
    return name is not None and name not in NO_DRAFT and name != NGRAM


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is replaced or rewritten: its inode, size and modification time."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _problem(exc: BaseException, entry: CatalogEntry) -> str:
    """What went wrong with a model's file, for its client: its path on the server's disk left out (the
    message names the model by its key; the server's log keeps the path)."""
    log.warning("loading %s from %s failed: %s", entry.key, entry.path, exc)
    text = str(exc).replace(f"{entry.path}: ", "")
    return text.replace(str(entry.path), f"the file of '{entry.key}'")


def _load_blocking(entry: CatalogEntry, settings: EngineSettings, instance_id: str,
                   on_progress: Callable[[float], None] | None):
    """Check the file, the memory, then load; any failure leaves nothing behind."""
    try:
        info = read_model_info(entry.path)
    except (InvalidModelFile, OSError) as exc:
        raise ModelFileUnloadable(f"cannot load '{entry.key}': {_problem(exc, entry)}") from exc
    try:
        model = LlamaModel(entry.path, on_progress)
    except ModelLoadError as exc:
        raise ModelFileUnloadable(f"cannot load '{entry.key}': {_problem(exc, entry)}") from exc
    projector = None if info.pooled else vision_projector(entry.path)
    vision = None
    try:
        context_length = min(settings.context_length, model.n_ctx_train or settings.context_length)
        lanes = 0 if info.pooled else read_lanes(settings.parallel, settings.batch_size, model.can_truncate)
        cells = kv_cells(context_length, settings.parallel, settings.batch_size, lanes)
        check_fits(instance_id, estimate(model, cells, settings.batch_size)
                   + projector_estimate(projector))
        vision = load_projector(model, projector, settings.threads)
        # embedding models and rerankers: one pooled output (a vector, a score) per sequence
        engine = (EmbeddingEngine(model, settings, rank_pooling=info.ranks_by_head) if info.pooled
                  else Engine(model, settings, vision))
        # its output buffer at its largest: a row of logits per token of a batch, when a request
        # scores every prompt token
        footprint = (context_footprint(model, engine.context, output_rows=engine.context.n_batch)
                     + projector_footprint(vision))
    except BaseException as exc:
        if vision is not None:
            vision.close()  # before the model: it points into the model's weights
        model.close()
        if isinstance(exc, ModelLoadError):
            raise ModelLoadFailed(f"cannot load '{entry.key}': {_problem(exc, entry)}") from exc
        raise
    return model, engine, info, footprint


__all__ = [
    "AdapterNotLoadable", "IdentifierTaken", "Instance", "InstanceNotFound", "InvalidModelSettings", "LoadConfig",
    "ModelBusy", "ModelFileUnloadable", "ModelLoadFailed",
    "ModelManager", "ModelNotFound", "ModelNotLoaded", "Target",
]
