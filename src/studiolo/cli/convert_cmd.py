"""``studiolo convert <folder-or-zip>``: turn a BERT embedding checkpoint (or a BERT cross-encoder, which
becomes a reranker) into a GGUF model.

The checkpoint (a sentence-transformers or Hugging Face BERT folder with config.json,
tokenizer.json and model.safetensors, or a zip of one) is converted by
``models/bert_convert.py`` into a scratch folder inside the models folder, then moved into
place by the importer, as ``studiolo import`` would: ``--name publisher/repo`` is the key it
is listed under. Like ``import``, this needs no running server.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer

from studiolo.config import models_dir
from studiolo.models.bert_convert import ConversionRefused, FileType, Pooling, convert_bert, default_name
from studiolo.models.importer import ImportRefused, import_model, parse_user_repo


def convert_command(
    source: Path = typer.Argument(..., help="Checkpoint folder, or a zip of one (config.json, model.safetensors...)."),
    name: str | None = typer.Option(
        None, "--name", help="Key to file it under, as publisher/repo (default: local/<folder or zip name>)."
    ),
    outtype: FileType = typer.Option(FileType.F16, "--outtype", help="Weight type of the matrices."),
    pooling: Pooling | None = typer.Option(
        None, "--pooling",
        help="Pooling to record (default: the checkpoint's sentence-transformers pooling; rank for a cross-encoder).",
    ),
) -> None:
    """Convert a BERT embedding checkpoint (or cross-encoder: a reranker) to GGUF and put it in the models folder."""
    try:
        publisher, repo = parse_user_repo(name) if name is not None else ("local", _safe_stem(source))
        root = models_dir()
        root.mkdir(parents=True, exist_ok=True)
        file_name = f"{repo}-{outtype.value.upper()}.gguf"
        # Converted next to its destination, so the importer's move is a rename; the scratch
        # folder goes whatever happens, and the catalog never sees a half-written file.
        with tempfile.TemporaryDirectory(dir=root, prefix=".convert-") as scratch:
            converted = convert_bert(
                source, Path(scratch) / file_name, name=repo, file_type=outtype, pooling=pooling
            )
            result = import_model(converted.path, root, user_repo=f"{publisher}/{repo}", mode="move")
    except (ConversionRefused, ImportRefused) as error:
        typer.echo(f"Error: {str(error).replace('--user-repo', '--name')}", err=True)
        raise typer.Exit(code=1) from None
    pooled = f"{converted.pooling.value} pooling" if converted.pooling else "no pooling type (not an embedding model)"
    if converted.pooling is Pooling.RANK:
        pooled = "rank pooling: a reranker"
    typer.echo(
        f"Converted {source} to {result.target} as {result.key} "
        f"({converted.embedding_length} dimensions, {pooled}, {converted.file_type.value.upper()})"
    )


def _safe_stem(source: Path) -> str:
    stem = "".join(c if c.isalnum() or c in "._-" else "-" for c in default_name(source)).strip("-.")
    return stem or "model"
