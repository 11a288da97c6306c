"""Which model an SDK call means: LM Studio's model specifiers resolved to a loaded instance or a model.

The SDKs name a model in these forms:

- ``{"type": "query", "query": {identifier?, path?, domain?, vision?, deviceIdentifier?}}``: an
  ``identifier`` is an instance's identifier or anything a request's ``model`` may name (a model key,
  its repo, its file name); a ``path`` is the model's file as ``path`` in its info gives it
  (publisher/repo/file.gguf); an empty query means any loaded model of the namespace.
- ``{"type": "instanceReference", "instanceReference": ...}``: one load of one instance, as its info
  gave it (model_info.py); once that instance is unloaded, the reference matches nothing.
- a bare string (``getOrLoad``'s ``identifier``, ``unloadModel``'s): a query by identifier; a bare
  query object without ``type`` is taken as a query.

A query matches loaded instances first; ``resolve`` also gives a model on disk, by key, for the
service to load as a request's ``model`` would (JIT). Nothing matching is LM Studio's
``generic.noModelMatchingQuery`` (the Python SDK raises LMStudioModelNotFoundError for it); a model of
the other namespace (an embedding model asked of ``llm``) is ``generic.domainMismatch``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from studiolo.api.lmstudio_sdk.endpoints import SdkError
from studiolo.api.lmstudio_sdk.handlers.model_info import domain_of, instance_reference
from studiolo.domain.errors import NotFound
from studiolo.service.models import InstanceStatus, ModelService

LOADED_SAMPLE = 10  # loaded identifiers named in a noModelMatchingQuery error's displayData


class NoModelMatching(SdkError):
    code = "model_not_found"


class DomainMismatch(SdkError):
    code = "model_domain_mismatch"


@dataclass(frozen=True)
class Query:
    identifier: str | None = None
    path: str | None = None
    vision: bool | None = None

    def wire(self) -> dict[str, Any]:
        """The query as LM Studio echoes it in its errors' displayData."""
        fields = {"identifier": self.identifier, "path": self.path, "vision": self.vision}
        return {key: value for key, value in fields.items() if value is not None}

    def describe(self) -> str:
        named = [f"{key} '{value}'" for key, value in self.wire().items()]
        return " and ".join(named) if named else "any loaded model"


@dataclass(frozen=True)
class Reference:
    instance_reference: str


Specifier = Query | Reference


@dataclass(frozen=True)
class Resolved:
    """What a specifier names: ``name`` is what the service takes as a request's ``model`` (an
    instance's identifier, or a model's key when none of its instances is loaded: the service then
    JIT-loads it); ``instance`` the loaded instance it runs on now, if any."""

    name: str
    instance: InstanceStatus | None


def parse_specifier(raw: Any, field: str = "specifier") -> Specifier:
    """The specifier the client sent, checked; an SdkError naming ``field`` when it is not one."""
    if isinstance(raw, str):
        return Query(identifier=_key_text(raw, f"{field}"))
    if not isinstance(raw, dict):
        raise SdkError(f"'{field}' must be a model specifier: {{type: 'query', query}} or "
                       "{type: 'instanceReference', instanceReference}", param=field)
    kind = raw.get("type")
    if kind == "instanceReference":
        reference = raw.get("instanceReference")
        if not isinstance(reference, str) or not reference:
            raise SdkError(f"'{field}.instanceReference' must be a string", param=f"{field}.instanceReference")
        return Reference(reference)
    if kind == "query":
        query = raw.get("query", {})
        return _query(query, f"{field}.query")
    if kind is None:
        return _query(raw, field)
    raise SdkError(f"'{field}.type' must be 'query' or 'instanceReference', not {kind!r}", param=f"{field}.type")


def _query(raw: Any, field: str) -> Query:
    if not isinstance(raw, dict):
        raise SdkError(f"'{field}' must be an object", param=field)
    identifier, path, vision = raw.get("identifier"), raw.get("path"), raw.get("vision")
    if vision is not None and not isinstance(vision, bool):
        raise SdkError(f"'{field}.vision' must be a boolean", param=f"{field}.vision")
    return Query(
        identifier=None if identifier is None else _key_text(identifier, f"{field}.identifier"),
        path=None if path is None else _key_text(path, f"{field}.path"),
        vision=vision,
    )


def _key_text(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 1024:
        raise SdkError(f"'{field}' must be a non-empty string of at most 1024 characters", param=field)
    return value


# -- resolution


def find_loaded(models: ModelService, specifier: Specifier, domain: str) -> InstanceStatus | None:
    """The loaded instance of ``domain`` the specifier names; None when none is loaded (DomainMismatch for
    a reference to an instance of the other namespace)."""
    loaded = models.loaded()
    if isinstance(specifier, Reference):
        found = next((i for i in loaded if instance_reference(i) == specifier.instance_reference), None)
        if found is not None and domain_of(found.info) != domain:
            raise domain_mismatch(found.key, found.path, domain_of(found.info), domain)
        return found
    candidates = [i for i in loaded if domain_of(i.info) == domain]
    if specifier.vision is not None:
        candidates = [i for i in candidates if i.info.has_vision == specifier.vision]
    if specifier.identifier is not None:
        candidates = _named_by(models, candidates, specifier.identifier)
    if specifier.path is not None:
        candidates = _named_by(models, candidates, specifier.path)
    return candidates[0] if candidates else None


def _named_by(models: ModelService, instances: list[InstanceStatus], name: str) -> list[InstanceStatus]:
    """The instances ``name`` names: the one with that identifier; else the instances of the model it
    names (by key, repo, file name, or path), the one a request would run on first."""
    wanted = name.strip().lower()
    exact = [i for i in instances if i.id == name or i.id == wanted]
    if exact:
        return exact
    key = _model_key(models, name)
    if key is None:
        return []
    of_model = [i for i in instances if i.key == key]
    preferred = models.instance_id_for(key) if of_model else None
    return sorted(of_model, key=lambda i: i.id != preferred)


def _model_key(models: ModelService, name: str) -> str | None:
    """The key of the model on disk (or loaded) that ``name`` names; None: none does."""
    wanted = name.strip().lower()
    for model in models.listed():
        if model.path.lower() == wanted or model.key == wanted:
            return model.key
    try:
        return models.find(name).key
    except NotFound:
        return None


def loaded_instance(models: ModelService, specifier: Specifier, domain: str) -> InstanceStatus:
    """The loaded instance the specifier names; NoModelMatching (or its unloaded reference) otherwise."""
    found = find_loaded(models, specifier, domain)
    if found is None:
        raise no_match(models, specifier, domain)
    return found


def resolve(models: ModelService, specifier: Specifier, domain: str) -> Resolved:
    """The loaded instance the specifier names, or the model on disk it names (by key) for the service
    to load; NoModelMatching or DomainMismatch otherwise."""
    found = find_loaded(models, specifier, domain)
    if found is not None:
        return Resolved(found.id, found)
    if isinstance(specifier, Reference) or (specifier.identifier is None and specifier.path is None):
        raise no_match(models, specifier, domain)
    key = _model_key(models, specifier.path or specifier.identifier or "")
    model = next((m for m in models.listed() if m.key == key), None)
    if model is None:
        raise no_match(models, specifier, domain)
    if domain_of(model.info) != domain:
        raise domain_mismatch(model.key, model.path, domain_of(model.info), domain)
    if specifier.vision is not None and model.info.has_vision != specifier.vision:
        raise no_match(models, specifier, domain)
    return Resolved(model.key, None)


def no_match(models: ModelService, specifier: Specifier, domain: str, message: str | None = None) -> SdkError:
    """LM Studio's error for a specifier nothing loaded matches; ``message``: why, when not the default."""
    loaded = [i.id for i in models.loaded() if domain_of(i.info) == domain]
    if isinstance(specifier, Reference):
        return NoModelMatching("the model instance this handle refers to has been unloaded; get the model again "
                               "(client.llm.model(key))", display_code="generic.specificModelUnloaded")
    return NoModelMatching(
        message or f"no {'embedding model' if domain == 'embedding' else 'LLM'} matches {specifier.describe()}",
        display_code="generic.noModelMatchingQuery",
        display_data={"query": specifier.wire(), "loadedModelsSample": loaded[:LOADED_SAMPLE],
                      "totalLoadedModels": len(loaded)},
    )


def domain_mismatch(key: str, path: str, actual: str, expected: str) -> SdkError:
    return DomainMismatch(
        f"'{key}' is {'an embedding model' if actual == 'embedding' else 'an LLM'}, not "
        f"{'an embedding model' if expected == 'embedding' else 'an LLM'}: use client.{actual} for it",
        display_code="generic.domainMismatch",
        display_data={"path": path, "actualDomain": actual, "expectedDomain": expected},
    )
