"""Model management in the ``llm`` and ``embedding`` namespaces, and ``system.listDownloadedModels``.

Both namespaces have the same endpoints, each about its own kind of model:

- ``getOrLoad`` (channel): the instance a name gives, loaded just in time as a REST request's ``model``
  would be (JIT on or off, TTL, auto-evict: the same service call). Packets: ``alreadyLoaded``; or
  ``unloadingOtherJITModel`` for each JIT model auto-evict will unload, ``startLoading``,
  ``loadProgress`` (llama.cpp's fractions as its tensors load, at most ~20 a second, then 1.0 once the
  model is ready) and ``loadSuccess``. Another request JIT-loading the same model meanwhile watches the
  same load.
- ``loadModel`` (channel): a new instance, as ``POST /api/v1/models/load``: ``resolved``, ``progress``
  (0.0, the fractions as above, 1.0) and ``success``. Needs the ``models`` permission.
- ``unloadModel``, ``listLoaded``, ``getModelInfo``, ``getLoadConfig`` (RPC); unloading needs
  ``models``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from studiolo.api.lmstudio_sdk.endpoints import Call, Channel, ChannelGone, SdkError, namespace
from studiolo.api.lmstudio_sdk.handlers.load_config import instance_load_config, load_settings
from studiolo.api.lmstudio_sdk.handlers.model_info import EMBEDDING, LLM, domain_of, instance_info, model_info
from studiolo.api.lmstudio_sdk.handlers.specifiers import (
    Query,
    domain_mismatch,
    find_loaded,
    loaded_instance,
    no_match,
    parse_specifier,
    resolve,
)
from studiolo.domain.auth import Permission
from studiolo.service.models import InstanceStatus, ListedModel, LoadConfig, LoadProgress, ModelService, Watch


class LoadCancelled(SdkError):
    code = "load_cancelled"


def _models(state: Any) -> ModelService:
    return state.models


def _object(parameter: Any, field: str) -> dict[str, Any]:
    if not isinstance(parameter, dict):
        raise SdkError(f"'{field}' must be an object", param=field)
    return parameter


def _ttl_seconds(parameter: dict[str, Any], key: str) -> float | None:
    value = parameter.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SdkError(f"'{key}' must be a whole number of milliseconds, at least 1", param=key)
    return value / 1000


def _text(parameter: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = parameter.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise SdkError(f"'{key}' must be a non-empty string", param=key)
    return value


def _model_on_disk(models: ModelService, name: str, domain: str) -> ListedModel:
    """The model ``name`` names (key, repo, file name or path) for a new load, of ``domain``."""
    resolved = resolve(models, Query(identifier=name), domain)
    key = resolved.instance.key if resolved.instance is not None else resolved.name
    model = next((m for m in models.listed() if m.key == key), None)
    if model is None:
        raise no_match(models, Query(identifier=name), domain)
    return model


# -- the endpoints, for one namespace


async def get_or_load(channel: Channel, parameter: Any, domain: str) -> None:
    models = _models(channel.state)
    parameter = _object(parameter, "creationParameter")
    specifier = parse_specifier(_text(parameter, "identifier"), "identifier")
    settings = load_settings(parameter.get("loadConfigStack"), domain)
    ttl = _ttl_seconds(parameter, "loadTtlMs")
    resolved = resolve(models, specifier, domain)
    if resolved.instance is not None:
        instance = await models.get_or_load(resolved.name)  # marks it used, as a request does
        await channel.send({"type": "alreadyLoaded", "info": instance_info(instance)})
        return
    model = _model_on_disk(models, resolved.name, domain)
    if not models.loads_just_in_time:  # as a REST request naming it: refused, before anything is announced
        raise no_match(models, specifier, domain, f"'{model.key}' is not loaded and this server loads no model "
                       f"just in time; load it first (client.{domain}.load_new_instance, or studiolo load)")
    for evicted in models.jit_evictions(model.key):
        await channel.send({"type": "unloadingOtherJITModel", "info": instance_info(evicted)})
    await channel.send({"type": "startLoading", "identifier": models.instance_id_for(model.key),
                        "info": model_info(model)})
    loading = asyncio.ensure_future(models.get_or_load(model.key, ttl=ttl, context_length=settings.context_length))
    loading.add_done_callback(_retrieved)  # the channel may be gone before it ends
    with models.watch_jit_load(model.key) as watch:
        await _send_progress(channel, "loadProgress", watch, loading)
    instance = await loading
    await channel.send({"type": "loadProgress", "progress": 1.0})
    await channel.send({"type": "loadSuccess", "info": instance_info(instance)})


async def load_model(channel: Channel, parameter: Any, domain: str) -> None:
    models = _models(channel.state)
    parameter = _object(parameter, "creationParameter")
    name = _text(parameter, "modelKey") or ""
    identifier = _text(parameter, "identifier", required=False)
    settings = load_settings(parameter.get("loadConfigStack"), domain)
    config = LoadConfig(context_length=settings.context_length, eval_batch_size=settings.eval_batch_size,
                        ttl=_ttl_seconds(parameter, "ttlMs"), identifier=identifier)
    model = _model_on_disk(models, name, domain)
    await channel.send({"type": "resolved", "info": model_info(model)})
    await channel.send({"type": "progress", "progress": 0.0})
    progress = LoadProgress()
    with progress.watch() as watch:
        instance = await _load_unless_cancelled(channel, models.load(model.key, config, progress), watch)
    await channel.send({"type": "progress", "progress": 1.0})
    await channel.send({"type": "success", "info": instance_info(instance)})


async def _send_progress(channel: Channel, packet: str, watch: Watch, work: asyncio.Future) -> None:
    """The load's fractions as ``packet`` packets until ``work`` is done (1.0 is the caller's, once
    the model is ready)."""
    async for fraction in watch.fractions_until(work):
        if 0.0 < fraction < 1.0:
            await channel.send({"type": packet, "progress": fraction})


def _retrieved(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()  # a failure nobody awaits any more is not an asyncio warning


async def _load_unless_cancelled(channel: Channel, loading: Coroutine[Any, Any, InstanceStatus],
                                 watch: Watch) -> InstanceStatus:
    """Runs the load, sending its progress; a ``cancel`` from the client meanwhile unloads what it
    loaded once it is done (llama.cpp's load cannot be stopped halfway) and ends the channel with
    LoadCancelled."""
    load = asyncio.ensure_future(loading)
    load.add_done_callback(_retrieved)
    cancel = asyncio.ensure_future(_cancel_asked(channel))
    either = asyncio.ensure_future(asyncio.wait({load, cancel}, return_when=asyncio.FIRST_COMPLETED))
    try:
        await _send_progress(channel, "progress", watch, either)
        await either
    finally:
        either.cancel()
        cancel.cancel()
    instance = await load
    if cancel.done() and not cancel.cancelled() and cancel.result():
        await _models(channel.state).unload(instance.id)
        raise LoadCancelled(f"the load of '{instance.key}' was cancelled; its instance is unloaded")
    return instance


async def _cancel_asked(channel: Channel) -> bool:
    """True once the client sends ``{type: "cancel"}`` (other messages are not the protocol's here)."""
    try:
        while True:
            if (await channel.receive()).get("type") == "cancel":
                return True
    except ChannelGone:
        return False


async def unload_model(call: Call, parameter: Any, domain: str) -> None:
    models = _models(call.state)
    parameter = _object(parameter, "parameter")
    specifier = parse_specifier(_text(parameter, "identifier"), "identifier")
    instance = find_loaded(models, specifier, domain)
    if instance is None:
        other = find_loaded(models, specifier, EMBEDDING if domain == LLM else LLM)
        if other is not None:
            raise domain_mismatch(other.key, other.path, domain_of(other.info), domain)
        raise no_match(models, specifier, domain)
    await models.unload(instance.id)


async def list_loaded(call: Call, parameter: Any, domain: str) -> list[dict[str, Any]]:
    return [instance_info(i) for i in _models(call.state).loaded() if domain_of(i.info) == domain]


async def get_model_info(call: Call, parameter: Any, domain: str) -> dict[str, Any] | None:
    models = _models(call.state)
    parameter = _object(parameter, "parameter")
    specifier = parse_specifier(parameter.get("specifier"))
    instance = find_loaded(models, specifier, domain)
    if instance is None:
        if parameter.get("throwIfNotFound", True) is False:
            return None  # the SDKs read an absent result as "no such model"
        raise no_match(models, specifier, domain)
    return instance_info(instance)


async def get_load_config(call: Call, parameter: Any, domain: str) -> dict[str, Any]:
    models = _models(call.state)
    specifier = parse_specifier(_object(parameter, "parameter").get("specifier"))
    return instance_load_config(loaded_instance(models, specifier, domain), domain)


def _join(domain: str) -> None:
    space = namespace(domain)

    # each endpoint bound to its namespace: the registry calls a handler with (call or channel, parameter)
    async def _get_or_load(channel: Channel, parameter: Any) -> None:
        await get_or_load(channel, parameter, domain)

    async def _load_model(channel: Channel, parameter: Any) -> None:
        await load_model(channel, parameter, domain)

    async def _unload_model(call: Call, parameter: Any) -> None:
        await unload_model(call, parameter, domain)

    async def _list_loaded(call: Call, parameter: Any) -> list[dict[str, Any]]:
        return await list_loaded(call, parameter, domain)

    async def _get_model_info(call: Call, parameter: Any) -> dict[str, Any] | None:
        return await get_model_info(call, parameter, domain)

    async def _get_load_config(call: Call, parameter: Any) -> dict[str, Any]:
        return await get_load_config(call, parameter, domain)

    space.channel("getOrLoad")(_get_or_load)
    space.channel("loadModel", Permission.models)(_load_model)
    space.rpc("unloadModel", Permission.models)(_unload_model)
    space.rpc("listLoaded")(_list_loaded)
    space.rpc("getModelInfo")(_get_model_info)
    space.rpc("getLoadConfig")(_get_load_config)


for _domain in (LLM, EMBEDDING):
    _join(_domain)


@namespace("system").rpc("listDownloadedModels")
async def list_downloaded_models(call: Call, parameter: Any) -> list[dict[str, Any]]:
    return [model_info(model) for model in _models(call.state).listed()]
