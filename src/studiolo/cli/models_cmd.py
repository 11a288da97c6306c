"""``studiolo ls``, ``ps``, ``load``, ``unload``: the models on disk and in memory, as ``lms`` shows them.

Each command calls a running server's LM Studio REST API (``/api/v1/models``, ``.../load``,
``.../unload``) through ``cli.client``, which starts a local server first when none answers.
``ps`` also reads studiolo's memory figures (``/studiolo/memory``), when the server has them.
Tables are for people (rich); ``--json`` prints one plain JSON document for scripts, and
notices (such as a server being started) go to stderr so that stdout stays parseable.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.filesize import decimal
from rich.table import Table

from studiolo.cli.client import TOKEN_OPTION, ServerError, StudioloClient, connect
from studiolo.config import DEFAULT_BIND, MAX_PARALLEL, MIN_CONTEXT

NONE = "—"
# piped output is for grep and awk: keep each row on one line instead of folding at 80 columns
PIPE_WIDTH = 250

HOST_OPTION = typer.Option(DEFAULT_BIND, "--host", help="Host of the server.")
PORT_OPTION = typer.Option(
    None, "--port", "-p", min=1, max=65535, help="Port of the server (default: the running server's, else 1234)."
)


# ---- helpers: pure, so they are tested without a server ----


def human_size(size_bytes: Any) -> str:
    """Bytes in decimal units, as disk sizes are usually given: ``253.1 MB``."""
    return decimal(size_bytes) if isinstance(size_bytes, int) and size_bytes >= 0 else NONE


def format_duration(seconds: Any) -> str:
    """A time left as ``1h 0m 5s``, ``59m 58s`` or ``7s``; ``—`` when there is none (no TTL)."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return NONE
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def cell(value: Any) -> str:
    return NONE if value is None or value == "" else str(value)


def filter_models(models: list[dict], *, llm: bool, embedding: bool) -> list[dict]:
    """The models of the type asked for (``--llm``, ``--embedding``), or all of them."""
    if llm:
        return [model for model in models if model.get("type") == "llm"]
    if embedding:
        return [model for model in models if model.get("type") == "embedding"]
    return models


def instances_of(models: list[dict]) -> list[dict]:
    """Every loaded instance, flattened out of the models list, as ``ps --json`` prints them."""
    return [
        {
            "identifier": instance.get("id"),
            "model_key": model.get("key"),
            "config": instance.get("config", {}),
            "status": instance.get("status", {}),
        }
        for model in models
        for instance in model.get("loaded_instances") or []
    ]


def load_request(
    model: str, *, ttl: int | None, context_length: int | None, parallel: int | None, identifier: str | None,
    draft_model: str | None = None,
) -> dict:
    """The body of ``POST /api/v1/models/load``: options the user left out are left to the server."""
    optional = {"ttl": ttl, "context_length": context_length, "parallel": parallel, "identifier": identifier,
                "draft_model": draft_model}
    return {"model": model, **{name: value for name, value in optional.items() if value is not None}}


def loaded_line(model: str, answer: dict) -> str:
    seconds = answer.get("load_time_seconds")
    took = f" in {seconds:.2f} s" if isinstance(seconds, (int, float)) else ""
    return f"Loaded {model} as {answer.get('instance_id')}{took}"


def drafts_cell(config: dict, status: dict) -> str:
    """An instance's drafts: its load-time default first ("ngram" included), then the draft models
    requests attached to it."""
    names = [config["draft_model"]] if config.get("draft_model") else []
    names += [key for key in status.get("draft_models") or [] if key not in names]
    return ", ".join(names) or NONE


def models_table(title: str, models: list[dict]) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold")
    for header in ("Model", "Params", "Arch", "Quant", "Size", "Max context", "Loaded"):
        table.add_column(header, justify="right" if header in ("Size", "Max context") else "left")
    for model in models:
        quantization = model.get("quantization") or {}
        loaded = ", ".join(str(instance.get("id")) for instance in model.get("loaded_instances") or [])
        table.add_row(
            cell(model.get("key")), cell(model.get("params_string")), cell(model.get("architecture")),
            cell(quantization.get("name")), human_size(model.get("size_bytes")),
            cell(model.get("max_context_length")), loaded,
        )
    return table


def instances_table(instances: list[dict]) -> Table:
    table = Table()
    for header in ("Identifier", "Model", "Context", "Parallel", "TTL left", "Running", "Queued", "Draft", "JIT"):
        table.add_column(header, justify="left" if header in ("Identifier", "Model", "JIT", "Draft") else "right")
    for instance in instances:
        config, status = instance["config"], instance["status"]
        table.add_row(
            cell(instance["identifier"]), cell(instance["model_key"]), cell(config.get("context_length")),
            cell(config.get("parallel")), format_duration(status.get("ttl_remaining_seconds")),
            cell(status.get("running_requests")), cell(status.get("queued_requests")),
            drafts_cell(config, status), "yes" if status.get("jit_loaded") else "no",
        )
    return table


MEMORY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_memory(size_bytes: Any) -> str:
    """Bytes of memory in binary units, as budgets are set (``prompt_cache_mib``): ``2.0 GiB``."""
    if not isinstance(size_bytes, int) or isinstance(size_bytes, bool) or size_bytes < 0:
        return NONE
    size, unit = float(size_bytes), 0
    while size >= 1024 and unit < len(MEMORY_UNITS) - 1:
        size, unit = size / 1024, unit + 1
    return f"{size_bytes} B" if unit == 0 else f"{size:.1f} {MEMORY_UNITS[unit]}"


def with_memory(instances: list[dict], figures: dict | None) -> list[dict]:
    """Each instance with its memory figures (weights, KV cache, compute, live sequences) added."""
    by_id = {figure.get("id"): {name: value for name, value in figure.items() if name not in ("id", "model_key")}
             for figure in (figures or {}).get("instances", [])}
    return [{**instance, "memory": by_id[instance["identifier"]]} if instance["identifier"] in by_id else instance
            for instance in instances]


def instance_memory_table(instances: list[dict]) -> Table:
    table = Table(title="Memory", title_justify="left", title_style="bold")
    for header in ("Identifier", "Weights", "KV cache", "Compute", "Sequences"):
        table.add_column(header, justify="left" if header == "Identifier" else "right")
    for instance in instances:
        memory = instance.get("memory") or {}
        sequences = [memory.get("running_sequences"), memory.get("queued_sequences")]
        table.add_row(
            cell(instance["identifier"]), human_memory(memory.get("weights_bytes")),
            human_memory(memory.get("kv_cache_bytes")), human_memory(memory.get("compute_bytes")),
            NONE if None in sequences else f"{sequences[0]} running, {sequences[1]} queued",
        )
    return table


def caches_table(caches: dict[str, dict]) -> Table:
    table = Table()
    for header in ("Cache", "Used", "Budget"):
        table.add_column(header, justify="left" if header == "Cache" else "right")
    for name, figure in caches.items():
        table.add_row(name, human_memory(figure.get("used_bytes")), human_memory(figure.get("budget_bytes")))
    return table


def resident_line(figures: dict) -> str:
    return (f"Resident memory: {human_memory(figures.get('resident_bytes'))} "
            f"(peak {human_memory(figures.get('peak_resident_bytes'))})")


def models_summary(models: list[dict]) -> str:
    total = sum(model["size_bytes"] for model in models if isinstance(model.get("size_bytes"), int))
    noun = "model" if len(models) == 1 else "models"
    return f"You have {len(models)} {noun}, taking up {decimal(total)} of disk space."


# ---- output ----


def table_console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=PIPE_WIDTH)
    return console


def print_json(document: Any) -> None:
    typer.echo(json.dumps(document, indent=2, ensure_ascii=False))


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def memory_figures(server: StudioloClient) -> dict | None:
    """``GET /studiolo/memory``, or None from a server that has no such route or fails to answer it:
    the figures are extra, ``ps`` shows the instances without them."""
    try:
        answer = server.request("GET", "/studiolo/memory")
    except ServerError:
        return None
    return answer if isinstance(answer, dict) else None


def server_for(host: str, port: int | None, token: str | None = None) -> StudioloClient:
    try:
        return connect(host, port, token)
    except ServerError as error:
        fail(str(error))


# ---- commands ----


def ls_command(
    llm: bool = typer.Option(False, "--llm", help="Show only language models."),
    embedding: bool = typer.Option(False, "--embedding", help="Show only embedding models."),
    as_json: bool = typer.Option(False, "--json", help="Print the models as the server lists them, as JSON."),
    host: str = HOST_OPTION,
    port: int | None = PORT_OPTION,
    token: str | None = TOKEN_OPTION,
) -> None:
    """List the models on disk, and which of them are loaded."""
    if llm and embedding:
        fail("--llm and --embedding exclude each other; give one, or neither for all models", code=2)
    with server_for(host, port, token) as server:
        try:
            models = filter_models(server.list_models(), llm=llm, embedding=embedding)
        except ServerError as error:
            fail(str(error))
    if as_json:
        print_json(models)
    elif not models:
        typer.echo("No models found. Get one with `studiolo get` or `studiolo import`.")
    else:
        print_models(models)


def print_models(models: list[dict]) -> None:
    console = table_console()
    console.print(models_summary(models))
    for title, kind in (("LLM", "llm"), ("Embedding", "embedding"), ("Reranker", "reranker")):
        of_kind = [model for model in models if model.get("type") == kind]
        if of_kind:
            console.print()
            console.print(models_table(title, of_kind))


def ps_command(
    as_json: bool = typer.Option(False, "--json", help="Print the loaded instances as JSON."),
    host: str = HOST_OPTION,
    port: int | None = PORT_OPTION,
    token: str | None = TOKEN_OPTION,
) -> None:
    """List the loaded models (instances), their settings, TTL and requests."""
    with server_for(host, port, token) as server:
        try:
            instances = instances_of(server.list_models())
        except ServerError as error:
            fail(str(error))
        figures = memory_figures(server) if instances else None
    instances = with_memory(instances, figures)
    if as_json:
        print_json(instances)
    elif not instances:
        typer.echo("No models are loaded. Load one with `studiolo load <model>`.")
    else:
        print_instances(instances, figures)


def print_instances(instances: list[dict], figures: dict | None) -> None:
    console = table_console()
    console.print(instances_table(instances))
    if figures is None:  # a server without studiolo's memory figures (LM Studio, an older studiolo)
        return
    console.print()
    console.print(instance_memory_table(instances))
    console.print(caches_table(figures.get("caches") or {}))
    console.print(resident_line(figures))


def load_command(
    model: str = typer.Argument(..., help="The model's key (publisher/repo), or a shorter name that is unambiguous."),
    ttl: int | None = typer.Option(None, "--ttl", min=1, help="Unload after this many idle seconds (default: never)."),
    context_length: int | None = typer.Option(
        None, "--context-length", "-c", min=MIN_CONTEXT, help="Context per sequence, in tokens (default: the server's)."
    ),
    parallel: int | None = typer.Option(
        None, "--parallel", min=1, max=MAX_PARALLEL, help="Sequences decoded together (default: the server's)."
    ),
    identifier: str | None = typer.Option(None, "--identifier", help="Name the instance (default: the model's key)."),
    draft_model: str | None = typer.Option(
        None, "--draft-model", help="Draft with this model for its requests that name none (speculative decoding); "
        "'ngram' drafts without a model, 'none' overrides the model's settings file."
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Accepted for lms parity; there is nothing to confirm."),
    host: str = HOST_OPTION,
    port: int | None = PORT_OPTION,
    token: str | None = TOKEN_OPTION,
) -> None:
    """Load a model into memory. Flags left out take the model's settings file's values
    (STUDIOLO_HOME/model-settings/<publisher>/<repo>.json; see `studiolo preset model`)."""
    body = load_request(model, ttl=ttl, context_length=context_length, parallel=parallel, identifier=identifier,
                        draft_model=draft_model)
    with server_for(host, port, token) as server:
        try:
            answer = server.load_model(body)
        except ServerError as error:
            fail(str(error))
    typer.echo(loaded_line(model, answer))


def unload_command(
    identifier: str | None = typer.Argument(None, help="The instance to unload (see `studiolo ps`)."),
    unload_all: bool = typer.Option(False, "--all", "-a", help="Unload every loaded instance."),
    host: str = HOST_OPTION,
    port: int | None = PORT_OPTION,
    token: str | None = TOKEN_OPTION,
) -> None:
    """Unload one loaded instance, or all of them."""
    if (identifier is not None) == unload_all:
        # neither or both: there is no interactive picker (as lms has) to fall back on
        fail("give the identifier of an instance to unload (see `studiolo ps`), or --all", code=2)
    with server_for(host, port, token) as server:
        try:
            targets = [identifier] if identifier else [i["identifier"] for i in instances_of(server.list_models())]
            if not targets:
                typer.echo("No models are loaded.")
            for target in targets:
                unloaded = server.unload_instance(target)
                typer.echo(f"Unloaded {unloaded.get('instance_id', target)}")
        except ServerError as error:
            fail(str(error))
