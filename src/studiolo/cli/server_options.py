"""``studiolo server start``'s options as server settings, and back as a command line.

Every option of ``start`` defaults to None, so "given" means typed on the command line: a given
option wins over the settings file's ``server`` section, which wins over ServerSettings' default
(server_settings.py). Both directions are generic over ``start``'s parameters: an option named as
a ServerSettings field needs no entry here, and every given option reaches the background child.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

import typer

from studiolo.config import ServerSettings

# option name -> ServerSettings field, where they differ
RENAMED = {"bind": "host", "jit": "jit_loading", "allow_image_urls": "image_url_hosts", "allow_hosts": "allowed_hosts"}
ENGINE_OPTIONS = ("parallel", "context_length", "threads")  # EngineSettings fields
NOT_SETTINGS = ("foreground",)  # how to run, not what to serve
LISTS = ("image_url_hosts", "cors_origins", "allowed_hosts")  # comma-separated on the command line


def given_settings(params: dict[str, Any]) -> dict[str, Any]:
    """The options that were given, as ServerSettings field values (``engine``: a dict)."""
    fields = set(ServerSettings.__dataclass_fields__)
    given: dict[str, Any] = {}
    engine: dict[str, Any] = {}
    for option, value in params.items():
        if value is None or option in NOT_SETTINGS:
            continue
        if option in ENGINE_OPTIONS:
            engine[option] = value
            continue
        name = RENAMED.get(option, option)
        if name not in fields:
            continue  # a command-line-only option (checked by its own command)
        given[name] = _setting_value(name, value)
    if engine:
        given["engine"] = engine
    return given


def _setting_value(name: str, value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):  # recorded in server.json and used by probes from other folders
        return str(value.expanduser().resolve())
    if name in LISTS and isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


def given_command_line(ctx: typer.Context) -> list[str]:
    """The given options, as arguments for the same command (the background server's re-exec)."""
    arguments: list[str] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if value is None or param.name in NOT_SETTINGS or param.param_type_name != "option":
            continue
        flag = max(param.opts, key=len)  # "--port", not "-p"
        is_flag = getattr(param, "is_flag", False)
        if is_flag and param.secondary_opts:
            arguments.append(flag if value else max(param.secondary_opts, key=len))
        elif is_flag:
            arguments += [flag] if value else []
        else:
            values = value if isinstance(value, list | tuple) else [value]
            for item in values:
                arguments += [flag, str(item.value if isinstance(item, Enum) else item)]
    return arguments
