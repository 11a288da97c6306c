"""Preset files and per-model settings files, in LM Studio's KV-config format, read from STUDIOLO_HOME.

- ``presets/<name>.preset.json``: a preset as LM Studio exports it, kept byte for byte:
  ``{"identifier": "@local:name", "name": ..., "operation": {"fields": [{"key": ..., "value": ...}]},
  "load": {"fields": [...]}}``.
- ``model-settings/<publisher>/<repo>.json``: a model's defaults, the same shape plus ``"preset"``
  (the preset its requests get when they name none): load keys in ``load.fields``, prediction
  defaults in ``operation.fields``.

Keys are LM Studio's (``llm.prediction.temperature``, ``llm.load.contextLength``, ...); a value may
be LM Studio's ``{"checked": bool, "value": ...}``, where unchecked turns the setting off. Keys
studiolo does not apply are kept in the file and listed as ignored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from studiolo.config import studiolo_home
from studiolo.domain.presets import NO_LIMIT, ModelDefaults, Preset, Settings

PRESET_SUFFIX = ".preset.json"
MAX_FILE_BYTES = 4 * 2**20  # a preset is a few kilobytes; a system prompt may be long, not this long
SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]+")


class InvalidSettingsFile(ValueError):
    """A preset or settings file that is not LM Studio's format (its path and why are in the message)."""


def presets_dir() -> Path:
    return studiolo_home() / "presets"


def model_settings_file(model_key: str) -> Path:
    """Where a model's settings live: its catalog key (publisher/repo) as a path."""
    return studiolo_home() / "model-settings" / f"{model_key}.json"


# --- presets -------------------------------------------------------------------------


def list_presets() -> list[Preset | InvalidSettingsFile]:
    """Every preset file, read (or why it cannot be), in name order."""
    found: list[Preset | InvalidSettingsFile] = []
    for path in sorted(presets_dir().glob(f"*{PRESET_SUFFIX}")):
        try:
            found.append(read_preset_file(path))
        except InvalidSettingsFile as exc:
            found.append(exc)
    return found


def find_preset(name: str) -> Preset | None:
    """The preset called ``name`` (its file name, its ``name`` or LM Studio ``identifier``, any case)."""
    wanted = name.strip().lower()
    direct = presets_dir() / f"{_file_stem(name)}{PRESET_SUFFIX}"
    if direct.is_file():
        return read_preset_file(direct)
    for path in sorted(presets_dir().glob(f"*{PRESET_SUFFIX}")):
        try:
            preset = read_preset_file(path)
        except InvalidSettingsFile:
            continue  # another preset's broken file must not hide this one (`preset ls` shows it)
        if wanted in {preset.name.lower(), (preset.identifier or "").lower()}:
            return preset
    return None


def import_preset(source: Path) -> tuple[Preset, Path]:
    """Copy an exported preset file into ``presets/`` (as it is), named after its preset; it replaces
    a preset of the same name."""
    preset = read_preset_file(source)
    presets_dir().mkdir(parents=True, exist_ok=True)
    target = presets_dir() / f"{_file_stem(preset.name)}{PRESET_SUFFIX}"
    temporary = target.with_suffix(".tmp")
    temporary.write_bytes(source.read_bytes())
    temporary.replace(target)
    return preset, target


def read_preset_file(path: Path) -> Preset:
    document = _read_json(path)
    name = document.get("name")
    stem = path.name.removesuffix(PRESET_SUFFIX).removesuffix(".json")
    if name is not None and not isinstance(name, str):
        raise InvalidSettingsFile(f"{path}: 'name' must be a string")
    identifier = document.get("identifier")
    ignored: list[str] = []
    settings = _prediction(path, _fields(path, document, "operation"), ignored)
    load = _fields(path, document, "load")
    context = load.pop("llm.load.contextLength", None)
    ignored.extend(load)
    settings = Settings(**{**settings.given(), "context_length": _context(path, context)})
    return Preset(name or stem, settings, identifier if isinstance(identifier, str) else None, tuple(ignored))


def _file_stem(name: str) -> str:
    """A preset's name as a file name: LM Studio's "@local:" prefix off, path characters out."""
    bare = name.strip().removeprefix("@local:")
    return SAFE_NAME.sub("-", bare).strip(" .") or "preset"


# --- per-model settings --------------------------------------------------------------

LOAD_KEYS: dict[str, tuple[str, Callable[[Any], bool]]] = {  # LM Studio key -> ModelDefaults field, check
    "llm.load.contextLength": ("context_length", lambda v: _is_int(v) and v > 0),
    "llm.load.numParallelSessions": ("parallel", lambda v: _is_int(v) and v > 0),
    "studiolo.load.ttl": ("ttl", lambda v: _is_number(v) and v > 0),  # LM Studio has no load key for it
    "llm.prediction.speculativeDecoding.draftModel": ("draft_model", lambda v: isinstance(v, str)),
}


def read_model_defaults(model_key: str) -> ModelDefaults:
    """A model's settings file, or no defaults when it has none."""
    path = model_settings_file(model_key)
    if not path.is_file():
        return ModelDefaults()
    document = _read_json(path)
    ignored: list[str] = []
    prediction = _fields(path, document, "operation")
    draft = prediction.pop("llm.prediction.speculativeDecoding.draftModel", None)
    values: dict[str, Any] = {}
    for key, value in _fields(path, document, "load").items():
        if key not in LOAD_KEYS:
            ignored.append(key)
            continue
        name, valid = LOAD_KEYS[key]
        value = _unchecked_is_none(value)
        if value is not None and not valid(value):
            raise InvalidSettingsFile(f"{path}: '{key}' has an invalid value {value!r}")
        values[name] = value
    if isinstance(draft, str) and draft:
        values["draft_model"] = draft
    preset = document.get("preset")
    if preset is not None and not isinstance(preset, str):
        raise InvalidSettingsFile(f"{path}: 'preset' must be a preset's name")
    settings = _prediction(path, prediction, ignored)
    return ModelDefaults(**values, preset=preset or None, prediction=settings, ignored=tuple(ignored))


# --- LM Studio's KV fields -----------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise InvalidSettingsFile(f"{path}: larger than {MAX_FILE_BYTES // 2**20} MiB")
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidSettingsFile(f"{path}: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidSettingsFile(f"{path}: not a JSON object")
    return document


def _fields(path: Path, document: dict[str, Any], section: str) -> dict[str, Any]:
    """``document[section].fields`` as {key: value}; a missing section has none."""
    part = document.get(section) or {}
    entries = part.get("fields", []) if isinstance(part, dict) else None
    if not isinstance(entries, list):
        raise InvalidSettingsFile(f"{path}: '{section}.fields' must be a list of {{key, value}}")
    found = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            raise InvalidSettingsFile(f"{path}: each of '{section}.fields' needs a string 'key'")
        found[entry["key"]] = entry.get("value")
    return found


def _unchecked_is_none(value: Any) -> Any:
    """LM Studio's ``{"checked": false}`` is off, i.e. unset here; ``{"checked": true, "value": v}`` is v."""
    if isinstance(value, dict) and "checked" in value:
        return value.get("value") if value["checked"] else None
    return value


def _switch(value: Any, off: Any) -> Any:
    """A switchable sampler: unchecked is turned off (``off``), which a preset sets, not leaves unset."""
    if isinstance(value, dict) and "checked" in value:
        return value.get("value") if value["checked"] else off
    return value


PREDICTION_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {  # LM Studio key -> Settings field, reader
    "llm.prediction.systemPrompt": ("system_prompt", lambda v: v if isinstance(v, str) else _bad(v)),
    "llm.prediction.temperature": ("temperature", lambda v: _number(v, 0, 2)),
    "llm.prediction.topPSampling": ("top_p", lambda v: _number(_switch(v, 1.0), 0, 1)),
    "llm.prediction.topKSampling": ("top_k", lambda v: _integer(_switch(v, 0), -1)),
    "llm.prediction.minPSampling": ("min_p", lambda v: _number(_switch(v, 0.0), 0, 1)),
    "llm.prediction.repeatPenalty": ("repeat_penalty", lambda v: _number(_switch(v, 1.0), 0.0001, 10)),
    "llm.prediction.maxPredictedTokens": ("max_tokens", lambda v: _integer(_switch(v, NO_LIMIT), NO_LIMIT)),
    "llm.prediction.stopStrings": ("stop", lambda v: tuple(v) if _strings(v) else _bad(v)),
    "llm.prediction.structured": ("json_schema", lambda v: _structured(v)),
    # studiolo's own (LM Studio has no reasoning budget): reasoning tokens before studiolo closes it
    "studiolo.prediction.reasoningBudget": ("reasoning_budget", lambda v: _integer(v, 0)),
}


def _prediction(path: Path, values: dict[str, Any], ignored: list[str]) -> Settings:
    settings: dict[str, Any] = {}
    for key, value in values.items():
        if key not in PREDICTION_KEYS:
            ignored.append(key)
            continue
        name, read = PREDICTION_KEYS[key]
        try:
            settings[name] = read(value)
        except ValueError:
            raise InvalidSettingsFile(f"{path}: '{key}' has an invalid value {value!r}") from None
    if settings.get("system_prompt") == "":
        settings["system_prompt"] = None  # LM Studio writes "" for no system prompt
    return Settings(**settings)


def _context(path: Path, value: Any) -> int | None:
    value = _unchecked_is_none(value)
    if value is not None and not (_is_int(value) and value > 0):
        raise InvalidSettingsFile(f"{path}: 'llm.load.contextLength' has an invalid value {value!r}")
    return value


def _structured(value: Any) -> dict[str, Any] | None:
    """``{"type": "json", "jsonSchema": {...}}``: the schema; ``{"type": "none"}``: no structured output."""
    if not isinstance(value, dict) or value.get("type") not in ("json", "none"):
        raise ValueError
    if value["type"] == "none":
        return None
    schema = value.get("jsonSchema")
    if not isinstance(schema, dict):
        raise ValueError
    return schema


def _number(value: Any, low: float, high: float) -> float:
    if not _is_number(value) or not low <= value <= high:
        raise ValueError
    return float(value)


def _integer(value: Any, low: int) -> int:
    if not _is_int(value) or value < low:
        raise ValueError
    return int(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _bad(value: Any) -> Any:
    raise ValueError
