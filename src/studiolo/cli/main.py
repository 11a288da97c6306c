"""The ``studiolo`` command, in the style of LM Studio's ``lms``."""

from __future__ import annotations

import typer

from studiolo import __version__
from studiolo.cli import server

app = typer.Typer(help="studiolo: a local LLM server.", no_args_is_help=True, add_completion=False)
app.add_typer(server.app, name="server")


@app.command()
def version() -> None:
    """Print studiolo's version."""
    typer.echo(__version__)


def main() -> None:
    app()
