"""``studiolo token create|ls|revoke``: API tokens, made and revoked on the home's token file directly.

No server is needed (LM Studio makes tokens only in its GUI, its tracker #1674); a running server reads
the same file for every request, so a token made or revoked here counts on its next request. ``create``
prints the token once: only its hash is kept.
"""

from __future__ import annotations

import json
import time
from datetime import datetime

import typer

from studiolo.domain.auth import Permission
from studiolo.domain.errors import StudioloError
from studiolo.service.auth import TokenService

app = typer.Typer(help="Make, list and revoke API tokens (for `server start --require-auth`).",
                  no_args_is_help=True)


def _when(seconds: float | None) -> str:
    return "-" if seconds is None else datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M")


def _fail(error: StudioloError) -> typer.Exit:
    typer.echo(f"error: {error}", err=True)
    return typer.Exit(1)


@app.command()
def create(
    name: str = typer.Option(..., "--name", help="What the token is for (shown by `token ls`)."),
    permission: list[Permission] = typer.Option(
        [Permission.inference], "--permission", help="inference, models or admin; repeat for several."),
    expires_in: str | None = typer.Option(None, "--expires-in", metavar="DURATION",
                                          help="e.g. 30d, 12h, 90m (default: never)."),
) -> None:
    """Make a token and print it, once."""
    tokens = TokenService()
    try:
        made = tokens.create(name, [p.value for p in permission], expires_in)
    except StudioloError as error:
        raise _fail(error) from error
    finally:
        tokens.close()
    typer.echo(made.text)
    expiry = "never expires" if made.info.expires_at is None else f"expires {_when(made.info.expires_at)}"
    typer.echo(f"Token {made.info.id} ({', '.join(made.info.permissions)}; {expiry}). It is shown only now: "
               "keep it somewhere safe.", err=True)


@app.command("ls")
def ls(as_json: bool = typer.Option(False, "--json", help="Print the tokens as JSON.")) -> None:
    """List the tokens (never their secrets)."""
    tokens = TokenService()
    try:
        infos = tokens.list()
    finally:
        tokens.close()
    now = time.time()
    if as_json:
        typer.echo(json.dumps([info.listing(now) for info in infos], indent=2))
        return
    if not infos:
        typer.echo("No API tokens. Make one with `studiolo token create --name NAME`.")
        return
    typer.echo(f"{'ID':<10} {'NAME':<20} {'PERMISSIONS':<26} {'CREATED':<17} {'EXPIRES':<17} STATE")
    for info in infos:
        typer.echo(f"{info.id:<10} {info.name[:20]:<20} {','.join(info.permissions):<26} "
                   f"{_when(info.created_at):<17} {_when(info.expires_at):<17} {info.state(now)}")


@app.command()
def revoke(token_id: str = typer.Argument(..., metavar="ID", help="The token's id, as `token ls` shows.")) -> None:
    """Revoke a token: its next request fails, its open streams end."""
    tokens = TokenService()
    try:
        info = tokens.revoke(token_id.removeprefix("sk-lm-").split(":")[0])
    except StudioloError as error:
        raise _fail(error) from error
    finally:
        tokens.close()
    typer.echo(f"Revoked token {info.id} ({info.name}).")
