"""Error messages without the server's folders: what a client reads names no absolute path on its disk.

Errors are made where they arise, and some of them name files (a settings file that does not parse, the
database on a full disk, a model file llama.cpp refused). Every API error's message passes through
``without_paths`` on its way out: a path inside STUDIOLO_HOME is shown relative to it
(``models/acme/m/m.gguf``, ``studiolo.db``), any other under the user's home folder from ``~/``. The
server's log keeps the full paths.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from studiolo.config import studiolo_home


def without_paths(message: str) -> str:
    if "/" not in message:
        return message
    for folder, shown in _folders():
        # the folder where a path starts (not /root in acme/root), followed by a path inside it or by the
        # end of the path (not /root in /rootfs)
        message = re.sub(r"(?<![\w.\-/~])" + re.escape(folder) + r"(/|(?![\w.\-]))", _replacement(shown), message)
    return message


def _replacement(shown: str) -> Callable[[re.Match[str]], str]:
    whole = shown.rstrip("/") or "the server's home folder"  # the folder itself, not a path inside it
    return lambda match: shown if match.group(1) else whole


def _folders() -> list[tuple[str, str]]:
    """(folder, what stands for it), longest first: STUDIOLO_HOME may lie inside the user's home."""
    home = studiolo_home()
    folders = {str(home): "", str(home.resolve()): ""}
    user = Path.home()
    folders.setdefault(str(user), "~/")
    folders.setdefault(str(user.resolve()), "~/")
    return sorted((item for item in folders.items() if item[0] not in ("", "/")), key=lambda item: -len(item[0]))
