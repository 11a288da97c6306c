"""The server's settings from three places: an option given on the command line, else the
``"server"`` section of ``STUDIOLO_HOME/settings.json``, else ServerSettings' default.

The section is read generically: each key is a ServerSettings field name, checked against the
field's declared type (a field added to ServerSettings can be set in the file with no change here);
an unknown name or a value of the wrong type is an error that names the key. ``engine`` takes an
object of EngineSettings fields the same way. ``limits`` and ``budgets`` have their own sections.

    {"server": {"port": 8080, "host": "0.0.0.0", "require_auth": true, "jit_ttl": 600,
                "engine": {"parallel": 2}}, "limits": {...}, "budgets": {...}}
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from typing import Any

from pydantic import TypeAdapter, ValidationError

from studiolo.config import EngineSettings, ServerSettings, settings_file

SECTION = "server"
# fields the section may not set: they have their own sections, or belong to one process
NOT_IN_SECTION = {"limits": "its own \"limits\" section", "budgets": "its own \"budgets\" section",
                  "instance_id": "each server process making its own"}
# fields whose value is one of a few words
CHOICES = {"reasoning_output": ("reasoning_content", "reasoning", "content")}


class SettingsError(ValueError):
    """The server settings cannot be used (settings.json, or options that do not go together); the
    message names the file and the key."""


def load_server_settings(given: dict[str, Any] | None = None) -> ServerSettings:
    """ServerSettings from the file's server section, with ``given`` (field name -> value, e.g. what
    the command line was given; ``engine`` as a dict of EngineSettings fields) over it."""
    section = read_section()
    given = given or {}
    engine = {**section.pop("engine", {}), **given.get("engine", {})}
    values = {**section, **{name: value for name, value in given.items() if name != "engine"}}
    settings = ServerSettings(engine=EngineSettings(**engine), **values)
    _check_tls(settings)
    return settings


def _check_tls(settings: ServerSettings) -> None:
    """Both or neither, and readable: uvicorn's own failure would come after the port is taken."""
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise SettingsError("--tls-cert and --tls-key (tls_cert and tls_key) go together: give both or neither")
    for name in ("tls_cert", "tls_key"):
        path = getattr(settings, name)
        if path is not None and not os.access(path, os.R_OK):
            raise SettingsError(f"{name}: cannot read {path}")


def read_section() -> dict[str, Any]:
    """The checked ``server`` section ({} without a file or a section); ``engine`` stays a dict."""
    path = settings_file()
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise SettingsError(f"{path} is not a JSON object: {exc}") from exc
    if not isinstance(document, dict):
        raise SettingsError(f"{path} is not a JSON object")
    section = document.get(SECTION, {})
    if not isinstance(section, dict):
        raise SettingsError(f"{path}: '{SECTION}' must be an object")
    checked = {}
    for name, value in section.items():
        if name == "engine":
            checked[name] = checked_fields(EngineSettings, value, f"{SECTION}.engine")
        else:
            checked[name] = _checked_value(ServerSettings, name, value, SECTION)
    return checked


def checked_fields(cls: type, value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SettingsError(f"{settings_file()}: '{where}' must be an object")
    return {name: _checked_value(cls, name, item, where) for name, item in value.items()}


def _checked_value(cls: type, name: str, value: Any, where: str) -> Any:
    key = f"{where}.{name}"
    if name in NOT_IN_SECTION:
        raise SettingsError(f"{settings_file()}: '{key}' cannot be set here: it is {NOT_IN_SECTION[name]}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    if name not in known or name == "engine":
        raise SettingsError(f"{settings_file()}: '{key}' is not a known setting (known: {', '.join(sorted(known))})")
    converted = _as_type(hints[name], value)
    if converted is _WRONG:
        raise SettingsError(f"{settings_file()}: '{key}' must be {_describe(hints[name])}, not {json.dumps(value)}")
    if name in CHOICES and converted not in CHOICES[name]:
        raise SettingsError(f"{settings_file()}: '{key}' must be one of {', '.join(CHOICES[name])}")
    return converted


_WRONG = object()


def _as_type(hint: Any, value: Any) -> Any:
    """``value`` (decoded JSON) as a ``hint``-typed field's value, or _WRONG: pydantic's strict JSON
    mode (no "8080" for a port, no 1 for true; a JSON list for a tuple), numbers non-negative."""
    try:
        converted = TypeAdapter(hint).validate_json(json.dumps(value), strict=True)
    except ValidationError:
        return _WRONG
    negative = isinstance(converted, int | float) and not isinstance(converted, bool) and converted < 0
    return _WRONG if negative else converted


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in args)
    if origin in (tuple, list):
        return f"a list (each item {_describe(args[0])})"
    if origin is typing.Literal:
        return "one of " + ", ".join(json.dumps(arg) for arg in args)
    names = {bool: "true or false", int: "a non-negative integer", float: "a non-negative number",
             str: "a string", type(None): "null"}
    return names.get(hint, str(hint))
