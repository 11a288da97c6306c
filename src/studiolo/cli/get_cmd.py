"""``studiolo get``: download a GGUF model from Hugging Face, as ``lms get`` does.

Unlike the other commands, this one does not talk to a server: it downloads in this
process, straight into ``STUDIOLO_HOME/models``, so it works whether a server runs or not
(a running server sees the new model at its next request). Progress and questions go to
stderr; stdout gets only the model's key, so ``KEY=$(studiolo get -y owner/repo)`` works.
An interrupted download (Ctrl+C, a cut connection) resumes when the command is run again.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

if TYPE_CHECKING:
    from studiolo.service.downloads import DownloadPlan


def get_command(
    model: str = typer.Argument(
        ..., help="Hugging Face repo id (owner/repo, or owner/repo@Q4_K_M) or the URL of a repo or .gguf file."
    ),
    quantization: str | None = typer.Option(
        None, "--quantization", "-q", help="Which GGUF file to take, e.g. Q4_K_M (matched in the file names)."
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before downloading."),
) -> None:
    """Download a GGUF model from Hugging Face into the models folder (no server needed)."""
    # imported here: huggingface_hub takes a noticeable time to import, other commands need not wait for it
    from studiolo.service.downloads import DownloadError

    try:
        key = _get(model, quantization, ask=not yes and _can_ask())
    except DownloadError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("download interrupted; run the same command again to resume it")
    typer.echo(key)


def _can_ask() -> bool:
    return sys.stdin.isatty()


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _get(model: str, quantization: str | None, *, ask: bool) -> str:
    from rich.filesize import decimal

    from studiolo.service.downloads import check_folder_free, is_downloaded, resolve

    plan = resolve(model, quantization)
    if is_downloaded(plan):
        typer.echo(f"Already downloaded: {plan.target}", err=True)
        return plan.key
    check_folder_free(plan)
    size = decimal(plan.size) if plan.size is not None else "unknown size"
    question = f"Download {plan.filename} ({size}) from {plan.repo_id}?"
    if ask and not typer.confirm(question, default=True, err=True):
        _fail("download cancelled; nothing was downloaded")
    path = _download_with_progress_bar(plan)
    typer.echo(f"Saved {path}", err=True)
    return plan.key


def _download_with_progress_bar(plan: DownloadPlan) -> Path:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from studiolo.service.downloads import download

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task(plan.filename, total=plan.size)

        def show(downloaded: int, total: int | None) -> None:
            progress.update(task, completed=downloaded, total=total)

        return download(plan, on_progress=show)
