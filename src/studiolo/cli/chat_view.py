"""What ``studiolo chat`` prints: an answer as it streams, its stats, the model list.

An answer streams as plain text, since Markdown cannot be rendered from half of it. Once it has
ended, an answer that uses Markdown (code fences, lists, headings, ...) is redrawn by rich in
place of the plain text, when the terminal still shows all of it (the cursor cannot reach lines
that scrolled away; such an answer stays as it streamed). Reasoning is shown dimmed, apart from
the answer, or replaced by one line when hidden (``/reasoning``).
"""

from __future__ import annotations

import math
import re
import threading
from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.markdown import Markdown
from rich.text import Text

from studiolo.cli.chat_stream import Answer, Piece
from studiolo.cli.log_cmd import visible

# what makes an answer worth redrawing as Markdown; plain prose would only be re-wrapped
_MARKDOWN = re.compile(
    r"^\s*(```|~~~|#{1,6}\s|[-*+]\s|\d+[.)]\s|>\s?|\|)"  # fences, headings, lists, quotes, tables
    r"|\*\*[^*\n]+\*\*|__[^_\n]+__|`[^`\n]+`|\[[^\]\n]+\]\([^)\n]+\)",  # bold, inline code, links
    re.MULTILINE,
)
TAB_SIZE = 8  # where terminals put their tab stops
REASONING_HIDDEN = "(reasoning hidden: /reasoning shows it)"
WAITING = "Waiting for the model… (Ctrl+C stops)"
WAITING_AFTER_SECONDS = 1.0  # a loaded model answers sooner; a load or a long prompt takes longer
ERASE_ROW = "\r\x1b[2K"


def looks_like_markdown(text: str) -> bool:
    return _MARKDOWN.search(text) is not None


def rows_taken(text: str, width: int) -> int:
    """How many terminal rows ``text`` covers when written from the start of a row, wrapped at
    ``width`` cells, counting the row the cursor ends on."""
    return sum(max(1, math.ceil(cell_len(line.expandtabs(TAB_SIZE)) / width)) for line in text.split("\n"))


class WaitingHint:
    """A dim line shown while nothing has come for a second (the model loading, a long prompt being
    read), erased by the first text. Shown only on a terminal, which can erase it."""

    def __init__(self, console: Console, delay: float = WAITING_AFTER_SECONDS):
        self.console = console
        self._lock = threading.Lock()
        self._shown = self._done = False
        self._timer: threading.Timer | None = None
        if console.is_terminal and not console.is_dumb_terminal:
            self._timer = threading.Timer(delay, self._show)
            self._timer.daemon = True
            self._timer.start()

    def _show(self) -> None:
        with self._lock:
            if not self._done:
                self.console.print(Text(WAITING, style="dim"), end="", soft_wrap=True)
                self._shown = True

    def clear(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
            if self._timer is not None:
                self._timer.cancel()
            if self._shown:
                self.console.file.write(ERASE_ROW)
                self.console.file.flush()


class AnswerPrinter:
    """Writes one answer as it streams: the answer's text on ``console``, its reasoning (dimmed)
    on ``reasoning_console``, which is the same console in a chat and stderr for ``-p``."""

    def __init__(self, console: Console, reasoning_console: Console | None = None, *,
                 show_reasoning: bool = True, markdown: bool = True):
        self.console = console
        self.reasoning_console = reasoning_console or console
        self.show_reasoning = show_reasoning
        self.markdown = markdown
        self.shown = ""  # the answer's text as written, what a redraw must erase
        self._reasoning_started = False
        self._waiting: WaitingHint | None = None

    def start(self) -> None:
        """The request is sent: say so if the model keeps us waiting."""
        self._waiting = WaitingHint(self.reasoning_console)

    def _end_waiting(self) -> None:
        if self._waiting is not None:
            self._waiting.clear()

    def write(self, piece: Piece) -> None:
        self._end_waiting()
        if piece.kind == "reasoning":
            self._write_reasoning(piece.text)
            return
        if not self.shown:
            self._end_reasoning()
        text = visible(piece.text)
        self.shown += text
        self.console.print(Text(text), end="", soft_wrap=True)

    def _write_reasoning(self, text: str) -> None:
        first = not self._reasoning_started
        self._reasoning_started = True
        if self.show_reasoning:
            self.reasoning_console.print(Text(visible(text), style="dim"), end="", soft_wrap=True)
        elif first:
            self.reasoning_console.print(Text(REASONING_HIDDEN, style="dim"), end="", soft_wrap=True)

    def _end_reasoning(self) -> None:
        """Close the reasoning's block: the answer starts on a row of its own, a blank row below."""
        if not self._reasoning_started:
            return
        self._reasoning_started = False
        # in a chat a blank row follows; with `-p` the reasoning is on stderr, and its row just ends
        self.reasoning_console.print("\n" if self.reasoning_console is self.console else "")

    def finish(self, answer: Answer) -> None:
        """End the answer: redraw it as Markdown where that helps, end its row, say if it was stopped."""
        self._end_waiting()
        if self._reasoning_started and not self.shown:
            self.reasoning_console.print()
            self._reasoning_started = False
        if self.shown and not self._redraw_as_markdown() and not self.shown.endswith("\n"):
            self.console.print()
        if answer.stopped:
            self.reasoning_console.print(Text("Stopped (Ctrl+C).", style="dim"))

    def _redraw_as_markdown(self) -> bool:
        console = self.console
        if not (self.markdown and console.is_terminal and not console.is_dumb_terminal):
            return False
        if not looks_like_markdown(self.shown):
            return False
        rows = rows_taken(self.shown, console.width)
        if rows >= console.height:
            return False
        up = f"\x1b[{rows - 1}A" if rows > 1 else ""
        console.file.write("\r" + up + "\x1b[J")  # back to the answer's first row, and clear below
        console.print(Markdown(self.shown))
        return True


# ---- stats, as LM Studio shows them after an answer ----


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def stats_lines(answer: Answer) -> list[str]:
    """``lms chat --stats``'s block: stop reason, tokens per second, time to first token, tokens.
    Figures the server did not send (an answer stopped early has none) are left out."""
    stats, usage = answer.stats, answer.usage
    lines = ["Prediction Stats:", f"  Stop Reason: {answer.stop_reason or 'unknown'}"]
    if answer.stopped:
        return lines
    speed, first = _number(stats.get("tokens_per_second")), _number(stats.get("time_to_first_token"))
    if speed is not None:
        lines.append(f"  Tokens/Second: {speed:.2f}")
    if first is not None:
        lines.append(f"  Time to First Token: {first:.3f}s")
    for label, name in (("Prompt Tokens", "prompt_tokens"), ("Predicted Tokens", "completion_tokens"),
                        ("Total Tokens", "total_tokens")):
        if isinstance(usage.get(name), int):
            lines.append(f"  {label}: {usage[name]}")
    return lines


def print_stats(console: Console, answer: Answer) -> None:
    console.print()
    for line in stats_lines(answer):
        console.print(Text(line))


# ---- the models one can chat with ----


def chat_models(models: list[dict]) -> list[dict]:
    """The language models of ``GET /api/v1/models`` (embedding models cannot chat)."""
    return [model for model in models if model.get("type") == "llm" and isinstance(model.get("key"), str)]


def model_choices(models: list[dict], current: str | None) -> list[tuple[str, str]]:
    """(key, label) of each model to pick from: loaded instances named by their id, each marked."""
    choices = []
    for model in chat_models(models):
        instances = [str(instance.get("id")) for instance in model.get("loaded_instances") or []]
        for name in instances or [model["key"]]:
            marks = (["loaded"] if instances else []) + (["current"] if name == current else [])
            choices.append((name, name + "".join(f" ({mark})" for mark in marks)))
    return choices


def print_choices(console: Console, choices: list[tuple[str, str]]) -> None:
    for number, (_, label) in enumerate(choices, start=1):
        console.print(Text(f"  {number}. {label}"))


def picked(answer: str, choices: list[tuple[str, str]]) -> str | None:
    """The model a reply to the list names: its number, or a key typed out; None for an empty reply."""
    reply = answer.strip()
    if not reply:
        return None
    if reply.isdigit() and 1 <= int(reply) <= len(choices):
        return choices[int(reply) - 1][0]
    return reply
