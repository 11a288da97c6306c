"""``studiolo import <file>``: put a GGUF file into the models folder, as ``lms import`` does.

Unlike the other commands this one needs no running server: it only places a file in
``STUDIOLO_HOME/models``, and a running server's catalog sees it on its next scan.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from studiolo.config import models_dir
from studiolo.models.importer import ImportResult, import_model

_PAST = {"move": "Moved", "copy": "Copied", "hard-link": "Hard-linked", "symbolic-link": "Linked"}
_PRESENT = {"move": "move", "copy": "copy", "hard-link": "hard-link", "symbolic-link": "symbolically link"}


def import_command(
    file: Path = typer.Argument(..., help="The .gguf model file to import."),
    user_repo: str | None = typer.Option(
        None, "--user-repo", help="Key to file it under, as publisher/repo (default: local/<file name>)."
    ),
    copy: bool = typer.Option(False, "--copy", "-c", help="Copy the file instead of moving it."),
    hard_link: bool = typer.Option(False, "--hard-link", "-L", help="Hard-link the file instead of moving it."),
    symbolic_link: bool = typer.Option(
        False, "--symbolic-link", "-l", help="Symbolically link the file instead of moving it."
    ),
    mmproj: Path | None = typer.Option(
        None, "--mmproj", help="The vision projector to import with the model (default: any mmproj*.gguf beside it)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check and say what would be done; change nothing."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Import a GGUF model file into the models folder (moves it unless told otherwise)."""
    mode = _mode(copy=copy, hard_link=hard_link, symbolic_link=symbolic_link)
    root = models_dir()
    try:
        plan = import_model(file, root, user_repo=user_repo, mode=mode, dry_run=True, mmproj=mmproj)
        if dry_run:
            typer.echo(f"Would {_plan_text(plan)} (dry run: nothing changed)")
            return
        if not yes and _stdin_is_interactive() and not typer.confirm(_question(plan)):
            _fail("import cancelled; nothing was changed")
        result = import_model(file, root, user_repo=user_repo, mode=mode, mmproj=mmproj)
    except ValueError as error:  # ImportRefused and InvalidModelFile: the message says it all
        _fail(str(error))
    typer.echo(_done_text(result))


def _mode(*, copy: bool, hard_link: bool, symbolic_link: bool) -> str:
    flags = {"copy": copy, "hard-link": hard_link, "symbolic-link": symbolic_link}
    chosen = [mode for mode, flag in flags.items() if flag]
    if len(chosen) > 1:
        _fail("choose at most one of --copy, --hard-link and --symbolic-link")
    return chosen[0] if chosen else "move"


def _stdin_is_interactive() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def _plan_text(plan: ImportResult) -> str:
    return f"{_PRESENT[plan.mode]} {plan.source.name} to {plan.target} as {plan.key}{_projectors_text(plan)}"


def _question(plan: ImportResult) -> str:
    text = _plan_text(plan)
    return text[0].upper() + text[1:] + "?"  # not str.capitalize(): it lower-cases the file name


def _done_text(result: ImportResult) -> str:
    return f"{_PAST[result.mode]} {result.source.name} to {result.target} as {result.key}{_projectors_text(result)}"


def _projectors_text(result: ImportResult) -> str:
    count = len(result.projectors)
    if not count:
        return ""
    return f", with its vision projector{'s' if count > 1 else ''} ({', '.join(p.name for p in result.projectors)})"


def _fail(message: str) -> None:
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code=1)
