"""``studiolo store check`` and ``studiolo store recover``: the response database (stateful chats).

Both work on the file itself, not through a server (a server cannot answer for a file it cannot
open). ``check`` only reads; ``recover`` writes a new file and keeps the old one, so it wants the
server stopped when the new file is to take the old one's place.
"""

from __future__ import annotations

from pathlib import Path

import typer

from studiolo.cli.server import read_state
from studiolo.store import recovery
from studiolo.store.responses import default_path

app = typer.Typer(help="Check the stored responses' database, and recover what can be read of a damaged one.",
                  no_args_is_help=True)

FILE_OPTION = typer.Option(None, "--file", help="The database (default: STUDIOLO_HOME/responses.sqlite3).")
OUTPUT_OPTION = typer.Option(None, "--output", help="Write the recovered database here; leave the old file in place.")


@app.command()
def check(file: Path | None = FILE_OPTION) -> None:
    """Say whether the database is sound and what it holds; exit 1 if it is not sound."""
    path = file or default_path()
    report = recovery.check(path)
    typer.echo(f"{path}: {report.size_bytes / 2**20:.1f} MiB, schema version {report.schema_version}")
    typer.echo(f"responses: {report.responses} (and {report.deleted} deleted, kept for their later turns)")
    typer.echo(f"saved KV states: {report.states}, {report.state_bytes / 2**20:.1f} MiB")
    if report.ok:
        typer.echo("ok")
        return
    for problem in report.problems:
        typer.echo(f"problem: {problem}", err=True)
    typer.echo("Run `studiolo store recover` with the server stopped: it copies what can be read into a new "
               "file and keeps this one.", err=True)
    raise typer.Exit(1)


@app.command()
def recover(
    file: Path | None = FILE_OPTION,
    output: Path | None = OUTPUT_OPTION,
) -> None:
    """Copy every response that can be read into a new database; the old file is kept, renamed."""
    path = file or default_path()
    if output is None and read_state() is not None:
        typer.echo("The server is running: stop it first (`studiolo server stop`), or give --output.", err=True)
        raise typer.Exit(1)
    try:
        report = recovery.recover(path, output)
    except OSError as exc:
        typer.echo(f"Could not recover {path}: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"recovered {report.recovered} responses into {report.output}")
    if report.unreadable_regions or report.bad_rows:
        typer.echo(f"lost: {report.unreadable_regions} unreadable region(s) of the file, "
                   f"{report.bad_rows} row(s) that did not decode")
    if report.rerooted:
        typer.echo(f"{report.rerooted} response(s) whose earlier turn was lost now start their own conversation")
    if report.states_dropped:
        typer.echo(f"{report.states_dropped} saved KV state(s) left behind: those conversations will prefill")
    if report.kept_as is not None:
        typer.echo(f"the old file is kept as {report.kept_as}")
