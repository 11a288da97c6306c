"""The ``studiolo`` command, in the style of LM Studio's ``lms``.

Subcommands are imported when they are run (or listed by ``--help``), not when ``studiolo`` starts:
``convert`` alone brings in numpy and gguf, and scripts (and the tests) run many short commands.
"""

from __future__ import annotations

import importlib
from typing import Any

import typer
from typer.core import TyperGroup

from studiolo import __version__

# name -> (module, attribute): a Typer app (a group of subcommands) or a command function.
# In the order ``--help`` lists them.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "import": ("studiolo.cli.import_cmd", "import_command"),
    "get": ("studiolo.cli.get_cmd", "get_command"),
    "convert": ("studiolo.cli.convert_cmd", "convert_command"),
    "ls": ("studiolo.cli.models_cmd", "ls_command"),
    "ps": ("studiolo.cli.models_cmd", "ps_command"),
    "load": ("studiolo.cli.models_cmd", "load_command"),
    "unload": ("studiolo.cli.models_cmd", "unload_command"),
    "chat": ("studiolo.cli.chat_cmd", "chat_command"),
    "server": ("studiolo.cli.server", "app"),
    "log": ("studiolo.cli.log_cmd", "app"),
    "store": ("studiolo.cli.store_cmd", "app"),
    "preset": ("studiolo.cli.preset_cmd", "app"),
    "service": ("studiolo.cli.service_cmd", "app"),
    "token": ("studiolo.cli.token_cmd", "app"),
}


def _load_subcommand(name: str) -> Any:
    """The click command for one subcommand, importing its module now."""
    module, attribute = SUBCOMMANDS[name]
    target = getattr(importlib.import_module(module), attribute)
    command: Any
    if isinstance(target, typer.Typer):
        command = typer.main.get_group(target)  # as add_typer would: no completion options of its own
    else:
        single = typer.Typer(add_completion=False)
        single.command(name)(target)
        command = typer.main.get_command(single)  # one command and no callback: the command itself
    command.name = name
    return command


class LazyGroup(TyperGroup):
    """A Typer group whose subcommands in SUBCOMMANDS are imported on first use."""

    def list_commands(self, ctx: Any) -> list[str]:
        eager = [name for name in super().list_commands(ctx) if name not in SUBCOMMANDS]
        return [*SUBCOMMANDS, *eager]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in SUBCOMMANDS and cmd_name not in self.commands:
            self.add_command(_load_subcommand(cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)


app = typer.Typer(cls=LazyGroup, no_args_is_help=True, add_completion=False)


@app.callback()
def studiolo() -> None:
    """studiolo: a local LLM server."""  # a callback keeps Typer from making one command the program


@app.command()
def version() -> None:
    """Print studiolo's version."""
    typer.echo(__version__)


def main() -> None:
    app()
