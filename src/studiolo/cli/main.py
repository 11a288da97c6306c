"""The ``studiolo`` command, in the style of LM Studio's ``lms``."""

from __future__ import annotations

import typer

from studiolo import __version__
from studiolo.cli import log_cmd, models_cmd, preset_cmd, server, service_cmd, store_cmd, token_cmd
from studiolo.cli.chat_cmd import chat_command
from studiolo.cli.convert_cmd import convert_command
from studiolo.cli.get_cmd import get_command
from studiolo.cli.import_cmd import import_command

app = typer.Typer(help="studiolo: a local LLM server.", no_args_is_help=True, add_completion=False)
app.add_typer(server.app, name="server")
app.add_typer(log_cmd.app, name="log")
app.add_typer(store_cmd.app, name="store")
app.add_typer(preset_cmd.app, name="preset")
app.add_typer(service_cmd.app, name="service")
app.add_typer(token_cmd.app, name="token")
app.command("import")(import_command)
app.command("get")(get_command)
app.command("convert")(convert_command)
app.command("ls")(models_cmd.ls_command)
app.command("ps")(models_cmd.ps_command)
app.command("load")(models_cmd.load_command)
app.command("unload")(models_cmd.unload_command)
app.command("chat")(chat_command)


@app.command()
def version() -> None:
    """Print studiolo's version."""
    typer.echo(__version__)


def main() -> None:
    app()
