"""``studiolo preset ls | show <name> | import <file>``: the presets in STUDIOLO_HOME/presets.

A preset is a file in LM Studio's format (store/settings_files.py): one exported from LM Studio
(``~/.lmstudio/config-presets/*.preset.json``) imports as it is. Requests name a preset in their
``preset`` field. These commands read and write the files themselves: no server is needed, and a
running server sees a new preset at its next request.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from studiolo.domain.presets import NO_LIMIT, Preset, Settings
from studiolo.store.settings_files import (
    InvalidSettingsFile,
    import_preset,
    list_presets,
    model_settings_file,
    presets_dir,
    read_model_defaults,
)

app = typer.Typer(help="List, show and import presets (named settings a request takes with `preset`).",
                  no_args_is_help=True)

NONE = "—"
SYSTEM_PROMPT_PREVIEW = 60  # characters of a system prompt in the list


def settings_rows(settings: Settings) -> list[tuple[str, str]]:
    """(setting, value) for each setting ``settings`` sets, as people read them."""
    rows = []
    for name, value in settings.given().items():
        if name == "max_tokens" and value == NO_LIMIT:
            value = "no limit"
        elif name == "json_schema":
            name, value = "structured output", json.dumps(value)
        elif name == "stop":
            value = json.dumps(list(value))
        rows.append((name.replace("_", " "), str(value)))
    return rows


def _summary(preset: Preset) -> str:
    rows = [f"{name}={value}" for name, value in settings_rows(preset.settings) if name != "system prompt"]
    return ", ".join(rows) or NONE


def _system_preview(settings: Settings) -> str:
    prompt = settings.system_prompt
    if not prompt:
        return NONE
    flat = " ".join(prompt.split())
    return flat if len(flat) <= SYSTEM_PROMPT_PREVIEW else flat[: SYSTEM_PROMPT_PREVIEW - 1] + "…"


@app.command("ls")
def ls_command(as_json: bool = typer.Option(False, "--json", help="Print the presets as JSON.")) -> None:
    """List the presets."""
    found = list_presets()
    if as_json:
        typer.echo(json.dumps([_as_json(p) if isinstance(p, Preset) else {"error": str(p)} for p in found], indent=2))
        return
    if not found:
        typer.echo(f"No presets in {presets_dir()}; import one with `studiolo preset import <file>`.")
        return
    table = Table(title=f"Presets ({presets_dir()})")
    for header in ("Name", "System prompt", "Settings"):
        table.add_column(header)
    for preset in found:
        if isinstance(preset, InvalidSettingsFile):
            table.add_row("[red]unreadable[/red]", NONE, str(preset))
        else:
            table.add_row(preset.name, _system_preview(preset.settings), _summary(preset))
    Console(width=None).print(table)


@app.command("show")
def show_command(
    name: str = typer.Argument(..., help="The preset's name (or LM Studio identifier, e.g. @local:name)."),
    as_json: bool = typer.Option(False, "--json", help="Print the preset's settings as JSON."),
) -> None:
    """Show a preset's settings, in full."""
    preset = _find(name)
    if as_json:
        typer.echo(json.dumps(_as_json(preset), indent=2))
        return
    table = Table(title=f"Preset {preset.name}" + (f" ({preset.identifier})" if preset.identifier else ""))
    table.add_column("Setting")
    table.add_column("Value", overflow="fold")
    for setting, value in settings_rows(preset.settings):
        table.add_row(setting, value)
    Console().print(table)
    if preset.ignored:
        typer.echo(f"Not applied by studiolo: {', '.join(preset.ignored)}")


@app.command("import")
def import_command(file: Path = typer.Argument(..., help="A preset file, as LM Studio exports it.")) -> None:
    """Import a preset file (LM Studio's format); it replaces a preset of the same name."""
    try:
        preset, target = import_preset(file)
    except (InvalidSettingsFile, OSError) as exc:
        typer.echo(f"Cannot import {file}: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"Imported preset '{preset.name}' into {target}; requests use it with \"preset\": \"{preset.name}\".")
    if preset.ignored:
        typer.echo(f"Not applied by studiolo: {', '.join(preset.ignored)}")


@app.command("model")
def model_command(model: str = typer.Argument(..., help="The model's key (publisher/repo).")) -> None:
    """Show a model's defaults (its settings file), which presets and requests override."""
    path = model_settings_file(model.strip().lower())
    try:
        defaults = read_model_defaults(model.strip().lower())
    except InvalidSettingsFile as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    table = Table(title=f"Defaults of {model} ({path}{'' if path.is_file() else ', none'})")
    table.add_column("Setting")
    table.add_column("Value", overflow="fold")
    loads = {"context length": defaults.context_length, "parallel": defaults.parallel, "ttl": defaults.ttl,
             "draft model": defaults.draft_model, "preset": defaults.preset}
    for setting, value in loads.items():
        if value is not None:
            table.add_row(setting, str(value))
    for setting, text in settings_rows(defaults.prediction):
        table.add_row(setting, text)
    Console().print(table)


def _find(name: str) -> Preset:
    try:
        preset = next((p for p in list_presets() if isinstance(p, Preset)
                       and name.lower() in {p.name.lower(), (p.identifier or "").lower()}), None)
    except InvalidSettingsFile as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    if preset is None:
        typer.echo(f"No preset named '{name}' (see `studiolo preset ls`).", err=True)
        raise typer.Exit(1)
    return preset


def _as_json(preset: Preset) -> dict:
    return {"name": preset.name, "identifier": preset.identifier, "settings": preset.settings.given(),
            "ignored": list(preset.ignored)}
