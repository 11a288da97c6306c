"""Model management for every route: listing, describing, loading and unloading models.

The LM Studio routes (v0 and v1), the OpenAI ``/v1/models`` routes and any in-process caller ask
this service, and get plain values back (``ModelFile``, ``ListedModel``, ``InstanceStatus``); each
API family renders them in its own JSON. The manager (models/manager.py) keeps the instances; the
rules of what a list shows live here, once.
"""

from __future__ import annotations

import logging
import platform
import sys
import time
from dataclasses import dataclass
from typing import Any

import llama_cpp

from studiolo.chat.reasoning import reasoning_format_for
from studiolo.models.catalog import CatalogEntry
from studiolo.models.gguf_info import InvalidModelFile, ModelInfo, read_model_info
from studiolo.models.instance import Instance, LoadConfig
from studiolo.models.load_progress import LoadProgress, Watch
from studiolo.models.manager import ModelManager
from studiolo.service.decisions import answers_decisions
from studiolo.service.generation import Generation

log = logging.getLogger(__name__)

MODEL_FORMAT = "gguf"


@dataclass(frozen=True)
class Runtime:
    """The inference runtime this process serves with, as LM Studio's v0 ``runtime`` names it."""

    name: str
    version: str
    supported_formats: tuple[str, ...]


RUNTIME = Runtime(
    name=f"llama.cpp-{sys.platform}-{platform.machine().lower()}-cpu",
    version=llama_cpp.__version__,  # the llama-cpp-python build studiolo runs on
    supported_formats=(MODEL_FORMAT,),
)


@dataclass(frozen=True)
class ModelFile:
    """A model or LoRA adapter in the catalog, as OpenAI's model objects describe it."""

    key: str
    publisher: str
    modified_at: int  # the file's modification time, epoch seconds
    base_key: str | None = None  # for a LoRA adapter: the model it adapts
    decisions: bool = False  # it answers /v1/decisions (service/decisions.py answers_decisions)

    @property
    def is_adapter(self) -> bool:
        return self.base_key is not None


@dataclass(frozen=True)
class InstanceStatus:
    """A loaded instance: how it was loaded and what it is doing now (a snapshot)."""

    id: str  # "google/gemma-3-270m", "google/gemma-3-270m:2", or the identifier it was given
    key: str  # the model it is an instance of
    info: ModelInfo
    context_length: int
    eval_batch_size: int
    parallel: int
    jit: bool  # loaded by a request rather than explicitly
    ttl: float | None
    ttl_remaining: float | None
    running_requests: int
    queued_requests: int
    loaded_at: float  # epoch seconds
    load_seconds: float
    draft_model: str | None = None  # its load-time draft, as the load named it ("ngram": no model); None: none
    draft_models: tuple[str, ...] = ()  # the draft models attached to it now (its own and requests'), by key
    path: str = ""  # its file under the models folder: "publisher/repo/file.gguf" (LM Studio's model path)
    last_used_at: float = 0.0  # epoch seconds of the last request it served (its load, before any)


@dataclass(frozen=True)
class ListedModel:
    """A model in LM Studio's lists: what its file says, and its loaded instances."""

    key: str
    publisher: str
    info: ModelInfo
    instances: tuple[InstanceStatus, ...]
    path: str = ""  # its file under the models folder: "publisher/repo/file.gguf" (LM Studio's model path)

    @property
    def reasoning(self) -> dict[str, Any] | None:
        """``capabilities.reasoning`` of ``/api/v1/models``, read from the chat template without loading
        the model (chat/reasoning.py); None: the model does not reason."""
        return reasoning_format_for(self.info.chat_template or "").capability()

    @property
    def decisions(self) -> bool:
        """Whether it answers /v1/decisions and /v1/systemone (service/decisions.py)."""
        return answers_decisions(self.info)


@dataclass(frozen=True)
class ServedModel:
    """The model a generation ran on, for LM Studio's v0 ``model_info``."""

    info: ModelInfo
    context_length: int


def instance_status(instance: Instance) -> InstanceStatus:
    running, queued = instance.engine.request_counts()
    idle_seconds = time.monotonic() - instance.last_active
    return InstanceStatus(
        id=instance.id,
        key=instance.key,
        info=instance.info,
        context_length=instance.context_length,
        eval_batch_size=instance.settings.batch_size,
        parallel=instance.settings.parallel,
        jit=instance.jit,
        ttl=instance.ttl,
        ttl_remaining=instance.ttl_remaining(),
        running_requests=running,
        queued_requests=queued,
        loaded_at=instance.loaded_at,
        load_seconds=instance.load_seconds,
        draft_model=instance.draft_model,
        draft_models=tuple(instance.draft_models()),
        path=model_path(instance.entry),
        last_used_at=time.time() - idle_seconds,
    )


def model_path(entry: CatalogEntry) -> str:
    """The model's file as LM Studio names it: relative to the models folder, as it is on disk
    (``HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/smollm2-135m-instruct-q8_0.gguf``); never a path on the
    server's disk."""
    parts = entry.path.parts
    return "/".join(parts[-3:])


def served_model(generation: Generation) -> ServedModel:
    instance = generation.instance
    return ServedModel(instance.info, instance.context_length)


def _model_file(entry: CatalogEntry) -> ModelFile:
    base_key = entry.base.key if entry.base is not None else None
    try:  # the header is cached by file (models/gguf_info.py): listing reads each once
        decisions = answers_decisions(read_model_info((entry.base or entry).path))
    except (InvalidModelFile, OSError):
        decisions = False  # unreadable: loading it will say why
    return ModelFile(entry.key, entry.publisher, int(entry.path.stat().st_mtime), base_key, decisions)


class ModelService:
    def __init__(self, manager: ModelManager):
        self.manager = manager

    # --- lists -----------------------------------------------------------------------

    def listed(self) -> list[ListedModel]:
        """Every readable model on disk with its instances, then the loaded models no longer on disk.

        A loaded model whose file left the catalog (moved, deleted, unreadable now) still serves: it is
        listed, with what it was loaded from, so that `studiolo ps` shows it and it can be unloaded.
        """
        manager = self.manager
        listed = [(entry, info, manager.instances_of(entry.key)) for entry, info in self._readable()]
        keys = {entry.key for entry, _, _ in listed}
        gone: dict[str, list[Instance]] = {}
        for instance in manager.loaded():
            if instance.key not in keys:
                gone.setdefault(instance.key, []).append(instance)
        listed += [(group[0].entry, group[0].info, group) for group in gone.values()]
        return [
            ListedModel(entry.key, entry.publisher, info, tuple(instance_status(i) for i in instances),
                        model_path(entry))
            for entry, info, instances in listed
        ]

    def loaded(self) -> list[InstanceStatus]:
        """Every loaded instance, in the order they were loaded."""
        return [instance_status(instance) for instance in self.manager.loaded()]

    def _readable(self) -> list[tuple[CatalogEntry, ModelInfo]]:
        """The catalog's models whose header reads; the others are left out, with a warning (loading
        one still gives a clear error naming the file)."""
        found = []
        for entry in self.manager.catalog.entries():
            try:
                found.append((entry, read_model_info(entry.path)))
            except (InvalidModelFile, OSError) as exc:
                log.warning("leaving %s out of the model list: %s", entry.key, exc)
        return found

    def usable(self) -> list[ModelFile]:
        """What a request can name now: every model on disk while JIT loading is on, else the loaded
        ones; then the LoRA adapters of those, each usable whenever its base model is."""
        manager = self.manager
        if manager.jit_loading:
            entries = manager.catalog.entries()
        else:
            entries = [loaded.entry for loaded in manager.loaded()]
        keys = {entry.key for entry in entries}
        adapters = [adapter for adapter in manager.catalog.adapters() if adapter.base and adapter.base.key in keys]
        return [_model_file(entry) for entry in entries + adapters]

    def find(self, name: str) -> ModelFile:
        """The model or adapter ``name`` refers to; raises ModelNotFound or AmbiguousModelName."""
        return _model_file(self.manager.catalog.resolve(name))

    def needs_load(self, name: str) -> bool:
        """Whether a request naming ``name`` would load a model first (raises for unknown names)."""
        return self.manager.needs_load(name)

    def instance_id_for(self, name: str) -> str:
        """The instance a request naming ``name`` would run on, or the id the model it loads will get."""
        return self.manager.instance_id_for(name)

    # --- loading ---------------------------------------------------------------------

    async def load(self, name: str, config: LoadConfig, progress: LoadProgress | None = None) -> InstanceStatus:
        """A new instance of the model ``name`` refers to (a second one when it is already loaded);
        ``progress`` (made by ``LoadProgress()`` on the event loop) follows its load."""
        entry = self.manager.catalog.resolve(name)
        return instance_status(await self.manager.load(entry, config, progress))

    def watch_jit_load(self, name: str) -> Watch:
        """The progress of the JIT load ``get_or_load(name)`` waits for, under way or next to start."""
        return self.manager.watch_jit_load(name)

    async def get_or_load(self, name: str, *, ttl: float | None = None,
                          context_length: int | None = None) -> InstanceStatus:
        """The instance a request naming ``name`` runs on, JIT-loading its model as a request's ``model``
        does (JIT on or off, TTL, auto-evict: models/manager.py); the ttl and context length apply only
        to a load it starts."""
        target = await self.manager.get(name, ttl=ttl, context_length=context_length)
        return instance_status(target.instance)

    @property
    def loads_just_in_time(self) -> bool:
        """Whether a request naming a model that is not loaded loads it (the server's JIT setting)."""
        return self.manager.jit_loading

    def jit_evictions(self, name: str) -> list[InstanceStatus]:
        """The instances a JIT load for ``name`` would unload now (auto-evict), for clients that announce
        it; none when ``name`` is served by a loaded instance already."""
        manager = self.manager
        if not (manager.jit_loading and manager.auto_evict) or not manager.needs_load(name):
            return []
        key = manager.catalog.resolve(name)
        wanted = (key.base or key).key
        return [instance_status(i) for i in manager.loaded() if i.jit and i.key != wanted]

    async def unload(self, instance_id: str) -> str:
        """Unload the instance; returns its id as the manager knows it."""
        instance = await self.manager.unload(instance_id)
        return instance.id


__all__ = [
    "InstanceStatus", "ListedModel", "LoadConfig", "LoadProgress", "ModelFile", "ModelInfo", "ModelService", "RUNTIME",
    "Runtime", "ServedModel", "Watch", "instance_status", "served_model",
]
