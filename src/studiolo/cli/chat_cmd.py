"""``studiolo chat [model]``: talk to a model in the terminal, as ``lms chat`` does.

Interactive in a terminal (cli/chat_session.py); one answer to stdout with ``-p``, or when text
is piped in (``echo hi | studiolo chat m -p "summarise"`` sends the prompt, a blank line, then
the piped text). Like the other model commands it finds the running server, or starts one on
this machine, and talks to it over HTTP (cli/chat_stream.py).

With no model named it chats with a loaded one; when none is loaded it asks which (in a
terminal) or refuses (piped). ``--ttl`` goes with every request: it is the idle time to live of
a model that the chat's request loads (JIT), an hour by default as in ``lms chat``.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import typer
from rich.console import Console

from studiolo.cli.chat_session import ChatSession, Conversation, ask, pick_model, resolve_model
from studiolo.cli.chat_stream import Answer
from studiolo.cli.chat_view import AnswerPrinter, chat_models, print_stats
from studiolo.cli.client import TOKEN_ENV, ServerError, StudioloClient
from studiolo.cli.models_cmd import HOST_OPTION, server_for

DEFAULT_TTL_SECONDS = 3600  # lms chat's
INTERRUPTED_EXIT = 130  # a shell's status for a command ended by Ctrl+C


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def one_shot_text(prompt: str | None, piped: str | None) -> str | None:
    """The message of a one-shot chat: ``-p``'s prompt, then a blank line and the piped text."""
    parts = [part for part in (prompt, piped.strip() if piped is not None else None) if part]
    return "\n\n".join(parts) or None


def loaded_model(models: list[dict]) -> str | None:
    """The first loaded language model's instance, which a chat naming no model talks to."""
    for model in chat_models(models):
        for instance in model.get("loaded_instances") or []:
            return str(instance.get("id"))
    return None


def chosen_model(server: StudioloClient, name: str | None, console: Console, interactive: bool) -> str:
    """The model to chat with: the one named, else a loaded one, else one picked from a list."""
    try:
        if name:
            return resolve_model(server, name)
        loaded = loaded_model(server.list_models())
        if loaded is not None:
            return loaded
        if not interactive:
            fail("No model is loaded: name one (`studiolo chat <model>`; `studiolo ls` lists them).")
        picked = pick_model(server, console, None)
        if picked is None:
            fail("No model chosen.")
        return resolve_model(server, picked)
    except ServerError as error:
        fail(str(error))


def chat_command(
    model: str | None = typer.Argument(None, help="The model's key, or a shorter name (default: a loaded model)."),
    prompt: str | None = typer.Option(
        None, "--prompt", "-p", help="Send this prompt, print the answer to stdout and exit. Text piped to "
        "stdin is added after it (piped text alone is sent as the prompt)."),
    system_prompt: str | None = typer.Option(None, "--system-prompt", "-s", help="The system prompt of the chat."),
    stats: bool = typer.Option(False, "--stats", help="Show the prediction stats after each answer."),
    ttl: int = typer.Option(DEFAULT_TTL_SECONDS, "--ttl", min=1,
                            help="Seconds a model the chat loads stays loaded once idle."),
    host: str = HOST_OPTION,
    port: int | None = typer.Option(None, "--port", min=1, max=65535,
                                    help="Port of the server (default: the running server's, else 1234)."),
    token: str | None = typer.Option(None, "--api-token", "--token", envvar=TOKEN_ENV, show_default=False,
                                     show_envvar=True, help="API token for a server started with --require-auth."),
) -> None:
    """Chat with a model in the terminal; /help in the chat lists its commands."""
    piped = None if sys.stdin.isatty() else sys.stdin.read()
    text = one_shot_text(prompt, piped)
    if piped is not None and text is None:
        fail("Nothing to send: give a prompt with -p, or pipe some text in.", code=2)
    console = Console(highlight=False)
    with server_for(host, port, token) as server:
        conversation = Conversation(chosen_model(server, model, console, interactive=text is None),
                                    system_prompt=system_prompt or None)
        if text is not None:
            answer_once(server, conversation, text, ttl=ttl, stats=stats)
        else:
            ChatSession(server, conversation, console, ttl=ttl, stats=stats).run()


def answer_once(server: StudioloClient, conversation: Conversation, text: str, *, ttl: int, stats: bool) -> None:
    """``-p``: the answer alone on stdout, as it streams; reasoning and stats on stderr."""
    errors = Console(stderr=True, highlight=False)
    printer = AnswerPrinter(Console(highlight=False), errors, markdown=False)
    try:
        answer: Answer = ask(server.http, conversation, text, printer, ttl)
    except ServerError as error:
        fail(str(error))
    if stats:
        print_stats(errors, answer)
    if answer.stopped:  # the printer said so on stderr
        raise typer.Exit(INTERRUPTED_EXIT)
