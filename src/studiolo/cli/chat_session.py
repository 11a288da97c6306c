"""The conversation of ``studiolo chat`` and its interactive loop: read a line, answer it or run a
slash command, until ``/exit``, Ctrl+D, or Ctrl+C twice at an empty prompt.

The conversation lives here, in the command, and every turn sends all of it again, as ``lms
chat`` does; the server's prefix cache makes the repeated part cheap. Ctrl+C during an answer
closes its stream (the server cancels the generation) and keeps what came so far, as LM Studio
does, so the session goes on. Lines typed are kept by the standard library's readline (arrow
keys, Ctrl+R) in ``STUDIOLO_HOME/chat-history``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from urllib.parse import quote

import httpx
from rich.console import Console
from rich.text import Text

from studiolo.cli.chat_stream import Answer, request_body, stream_answer
from studiolo.cli.chat_view import AnswerPrinter, model_choices, picked, print_choices, print_stats
from studiolo.cli.client import ServerError, StudioloClient
from studiolo.config import studiolo_home

readline: ModuleType | None
try:  # absent on some platforms (Windows); the chat works without history there
    import readline
except ImportError:  # pragma: no cover
    readline = None

PROMPT = "› "
HISTORY_LENGTH = 1000
COMMANDS = (
    ("/help", "Show this help"),
    ("/exit", "Leave the chat (also Ctrl+D, or Ctrl+C twice at an empty prompt)"),
    ("/model [key]", "Switch model; with no key, pick one from a list"),
    ("/clear", "Forget the conversation (the system prompt stays)"),
    ("/system-prompt [text]", "Replace the system prompt; with no text, show it"),
    ("/stats", "Show the stats of the last answer"),
    ("/reasoning [show|hide]", "Show or hide the reasoning (no argument: switch)"),
    ("/reasoning on|off|auto", "Ask the model to think, not to, or leave it to the model"),
)
ALIASES = {"/quit": "/exit", "/bye": "/exit", "/?": "/help"}


def history_file() -> Path:
    return studiolo_home() / "chat-history"


@dataclass
class Conversation:
    """What the next request sends: the model, the system prompt and the turns so far."""

    model: str
    system_prompt: str | None = None
    turns: list[dict[str, str]] = field(default_factory=list)
    show_reasoning: bool = True
    thinking: bool | None = None  # None: the model's default
    last: Answer | None = None

    def messages(self, text: str) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + self.turns + [{"role": "user", "content": text}]

    def record(self, text: str, answer: Answer) -> None:
        """Keep the turn; an answer stopped before any text leaves none (two user messages in a row
        would follow, which many chat templates refuse)."""
        self.last = answer
        if answer.stopped and not answer.content:
            return
        self.turns += [{"role": "user", "content": text}, {"role": "assistant", "content": answer.content}]


def ask(http: httpx.Client, conversation: Conversation, text: str, printer: AnswerPrinter,
        ttl: int | None) -> Answer:
    """Send ``text`` as the next user message and print the answer as it streams. Ctrl+C stops the
    answer (closing the stream cancels it on the server) and keeps what came. ServerError when the
    request fails; the conversation is then left as it was."""
    body = request_body(conversation.model, conversation.messages(text), ttl=ttl, thinking=conversation.thinking)
    answer = Answer()
    printer.start()
    try:
        with closing(stream_answer(http, body, answer)) as pieces:
            for piece in pieces:
                printer.write(piece)
    except KeyboardInterrupt:
        answer.stopped = True
    except ServerError:
        printer.finish(answer)
        raise
    printer.finish(answer)
    conversation.record(text, answer)
    return answer


def resolve_model(server: StudioloClient, name: str) -> str:
    """The id the server knows ``name`` by (a short name becomes its key); ServerError naming the
    model when there is none such."""
    found = server.request("GET", f"/api/v0/models/{quote(name.strip(), safe='/:@')}")
    model_id = found.get("id") if isinstance(found, dict) else None
    if not isinstance(model_id, str):
        raise ServerError(f"The server answered without the model's id for '{name}'.")
    if found.get("type") in ("embeddings", "reranker"):
        kind = "a reranker" if found["type"] == "reranker" else "an embedding model"
        raise ServerError(f"'{model_id}' is {kind}; it cannot chat. `studiolo ls --llm` lists the others.")
    return model_id


def pick_model(server: StudioloClient, console: Console, current: str | None) -> str | None:
    """Ask which model to chat with, from the server's list; None when there is none or no answer."""
    try:
        choices = model_choices(server.list_models(), current)
    except ServerError as error:
        console.print(Text(f"error: {error}", style="red"))
        return None
    if not choices:
        console.print("No language models found. Get one with `studiolo get` or `studiolo import`.")
        return None
    console.print(Text("Models (type a number or a key; Enter keeps the current one):" if current
                       else "Which model? (type a number or a key)"))
    print_choices(console, choices)
    lines = history_length()
    try:
        reply = input("model> ")
    except (EOFError, KeyboardInterrupt):
        console.print()
        return None
    forget_lines_after(lines)  # the history is for messages and commands, not for this reply
    return picked(reply, choices)


class ChatSession:
    """The interactive loop over one conversation."""

    def __init__(self, server: StudioloClient, conversation: Conversation, console: Console, *,
                 ttl: int | None, stats: bool):
        self.server = server
        self.conversation = conversation
        self.console = console
        self.ttl = ttl
        self.stats = stats
        self.commands: dict[str, Callable[[str], bool]] = {
            "/help": self._help, "/exit": self._exit, "/model": self._model, "/clear": self._clear,
            "/system-prompt": self._system_prompt, "/stats": self._stats, "/reasoning": self._reasoning,
        }

    def run(self) -> None:
        self.say(f"Chatting with {self.conversation.model}. Type /help for commands, /exit to leave.")
        with History(history_file(), sorted({name.split()[0] for name, _ in COMMANDS} | set(ALIASES))):
            while (line := self.read_line()) is not None:
                try:
                    if not self.handle(line.strip()):
                        return
                except KeyboardInterrupt:  # during a command's call to the server: the chat goes on
                    self.console.print()

    def read_line(self) -> str | None:
        """The next line typed; None to leave (Ctrl+D, or a second Ctrl+C in a row at an empty prompt).
        Ctrl+C with text typed only clears the line, as in a shell."""
        warned = False
        while True:
            try:
                return input(PROMPT)
            except EOFError:
                self.console.print()
                return None
            except KeyboardInterrupt:
                self.console.print()
                if typed_text():
                    warned = False
                elif warned:
                    return None
                else:
                    warned = True
                    self.say("(Ctrl+C again to leave, or type /exit)", style="dim")

    def handle(self, line: str) -> bool:
        """Answer or run one line; False to leave."""
        if not line:
            return True
        if line.startswith("/") and not line.startswith("//"):
            name, _, argument = line.partition(" ")
            command = self.commands.get(ALIASES.get(name, name))
            if command is None:
                self.say(f"Unknown command {name}; /help lists them (start a message with // to send a /).",
                         style="red")
                return True
            return command(argument.strip())
        self.send(line[1:] if line.startswith("//") else line)
        return True

    def send(self, text: str) -> None:
        self.console.print()
        printer = AnswerPrinter(self.console, show_reasoning=self.conversation.show_reasoning)
        try:
            answer = ask(self.server.http, self.conversation, text, printer, self.ttl)
        except ServerError as error:
            self.say(f"error: {error}", style="red")
            return
        if self.stats:
            print_stats(self.console, answer)
        self.console.print()

    def say(self, message: str, style: str = "") -> None:
        self.console.print(Text(message, style=style))

    # ---- slash commands: each returns False to leave ----

    def _help(self, _: str) -> bool:
        width = max(len(name) for name, _ in COMMANDS)
        for name, description in COMMANDS:
            self.say(f"  {name.ljust(width)}  {description}")
        self.say("  Ctrl+C stops an answer; up and down arrows go through the lines typed before.", style="dim")
        return True

    def _exit(self, _: str) -> bool:
        return False

    def _model(self, argument: str) -> bool:
        name = argument or self._pick_model()
        if name is None:
            return True
        try:
            self.conversation.model = resolve_model(self.server, name)
        except ServerError as error:
            self.say(f"error: {error}", style="red")
            return True
        self.say(f"Model: {self.conversation.model}")
        return True

    def _pick_model(self) -> str | None:
        return pick_model(self.server, self.console, self.conversation.model)

    def _clear(self, _: str) -> bool:
        self.conversation.turns.clear()
        self.conversation.last = None
        self.say("Cleared the conversation.")
        return True

    def _system_prompt(self, text: str) -> bool:
        if text:
            self.conversation.system_prompt = text
            self.say("System prompt set.")
        else:
            self.say(f"System prompt: {self.conversation.system_prompt or '(none)'}")
        return True

    def _stats(self, _: str) -> bool:
        if self.conversation.last is None:
            self.say("No answer yet.")
        else:
            print_stats(self.console, self.conversation.last)
        return True

    def _reasoning(self, argument: str) -> bool:
        modes = {"on": True, "off": False, "auto": None}
        choice = argument.lower()
        if choice in modes:
            self.conversation.thinking = modes[choice]
            self.say(f"Reasoning: {choice}")
            return True
        if choice not in ("", "show", "hide"):
            self.say("Usage: /reasoning [show|hide|on|off|auto]", style="red")
            return True
        self.conversation.show_reasoning = choice == "show" if choice else not self.conversation.show_reasoning
        self.say(f"Reasoning is {'shown' if self.conversation.show_reasoning else 'hidden'}.")
        return True


# ---- readline: history and completion of slash commands ----


def typed_text() -> str:
    """What the prompt held when Ctrl+C came."""
    return readline.get_line_buffer() if readline is not None else ""


def history_length() -> int:
    return readline.get_current_history_length() if readline is not None else 0


def forget_lines_after(length: int) -> None:
    """Drop what readline added to the history since it held ``length`` lines (it adds a line only
    when it is not empty and not the same as the last)."""
    while readline is not None and readline.get_current_history_length() > length:
        readline.remove_history_item(readline.get_current_history_length() - 1)


class History:
    """The lines typed in earlier chats, read at the start and written back at the end."""

    def __init__(self, path: Path, words: list[str]):
        self.path = path
        self.words = sorted(words)

    def __enter__(self) -> History:
        if readline is None:
            return self
        readline.clear_history()
        readline.set_history_length(HISTORY_LENGTH)
        try:
            readline.read_history_file(self.path)
        except OSError:
            pass  # no history yet, or unreadable: start without
        readline.set_completer_delims(" \t\n")
        readline.set_completer(self._complete)
        readline.parse_and_bind("tab: complete")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if readline is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(self.path)
        except OSError:
            pass  # a read-only home loses the history, not the chat

    def _complete(self, text: str, state: int) -> str | None:
        matches = [word for word in self.words if text.startswith("/") and word.startswith(text)]
        return matches[state] if state < len(matches) else None
