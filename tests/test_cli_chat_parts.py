"""`studiolo chat`'s pieces, in-process: reading the stream, the conversation, what is printed
(the Markdown redraw, the waiting line, the stats), the model list. The command itself, against a
real server, is tests/test_cli_chat.py."""

from __future__ import annotations

import io
import json
import time

import pytest
from rich.console import Console

from studiolo.cli.chat_cmd import loaded_model, one_shot_text
from studiolo.cli.chat_session import Conversation
from studiolo.cli.chat_stream import Answer, Piece, _chunk, _pieces, request_body
from studiolo.cli.chat_view import (
    WAITING,
    AnswerPrinter,
    WaitingHint,
    looks_like_markdown,
    model_choices,
    picked,
    rows_taken,
    stats_lines,
)
from studiolo.cli.client import ServerError
from tests.test_cli_chat import plain


def test_one_shot_text_puts_the_piped_text_after_the_prompt():
    assert one_shot_text("Summarise", "Some text.\n") == "Summarise\n\nSome text."
    assert one_shot_text(None, "  just stdin\n") == "just stdin"
    assert one_shot_text("only -p", None) == "only -p"
    assert one_shot_text(None, "\n") is None
    assert one_shot_text("", None) is None


def test_chunks_are_read_into_the_answer():
    answer = Answer()
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"index": 0, "delta": {"reasoning_content": "Let me think."}}]},
        {"choices": [{"index": 0, "delta": {"content": "Hello"}}]},
        {"choices": [{"index": 0, "delta": {"content": " there"}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
         "stats": {"stop_reason": "eosFound", "tokens_per_second": 80.5, "time_to_first_token": 0.05}},
        {"choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 2, "total_tokens": 32}},
    ]
    pieces = [(piece.kind, piece.text) for chunk in chunks for piece in _pieces(chunk, answer)]
    assert pieces == [("reasoning", "Let me think."), ("content", "Hello"), ("content", " there")]
    assert (answer.content, answer.reasoning, answer.stop_reason) == ("Hello there", "Let me think.", "eosFound")
    assert stats_lines(answer) == [
        "Prediction Stats:", "  Stop Reason: eosFound", "  Tokens/Second: 80.50", "  Time to First Token: 0.050s",
        "  Prompt Tokens: 30", "  Predicted Tokens: 2", "  Total Tokens: 32",
    ]


def test_a_stopped_answer_says_so_and_shows_no_figures():
    answer = Answer(content="Hel", stopped=True)
    assert stats_lines(answer) == ["Prediction Stats:", "  Stop Reason: userStopped"]


def test_an_error_event_mid_stream_is_a_server_error():
    with pytest.raises(ServerError, match="engine failed"):
        _chunk(json.dumps({"error": {"message": "engine\nfailed", "type": "server_error"}}))
    with pytest.raises(ServerError, match="not JSON"):
        _chunk("{oops")


def test_request_body_tells_thinking_only_when_asked():
    messages = [{"role": "user", "content": "hi"}]
    body = request_body("m", messages, ttl=60, thinking=None)
    assert body == {"model": "m", "messages": messages, "stream": True, "stream_options": {"include_usage": True},
                    "ttl": 60}
    assert request_body("m", messages, ttl=None, thinking=False)["chat_template_kwargs"] == {"enable_thinking": False}


def test_the_conversation_keeps_turns_and_drops_one_stopped_before_any_text():
    conversation = Conversation("m", system_prompt="Be brief.")
    conversation.record("one", Answer(content="first"))
    conversation.record("two", Answer(stopped=True))
    conversation.record("three", Answer(content="par", stopped=True))
    assert conversation.messages("four") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one"}, {"role": "assistant", "content": "first"},
        {"role": "user", "content": "three"}, {"role": "assistant", "content": "par"},
        {"role": "user", "content": "four"},
    ]


def test_rows_count_wrapped_lines_as_a_terminal_does():
    assert rows_taken("abc", 10) == 1
    assert rows_taken("a" * 10, 10) == 1  # a full row: the cursor waits at its end
    assert rows_taken("a" * 11, 10) == 2
    assert rows_taken("one\ntwo\n", 10) == 3  # the cursor's row after the last newline counts
    assert rows_taken("\tx", 8) == 2  # a tab reaches the next stop
    assert rows_taken("日本語日本", 8) == 2  # wide characters take two cells


def test_only_markdown_is_redrawn():
    assert looks_like_markdown("```python\nprint(1)\n```")
    assert looks_like_markdown("1. one\n2. two")
    assert looks_like_markdown("Use **bold** here")
    assert not looks_like_markdown("Hello! How can I help you today?")


def terminal(width: int = 40, height: int = 20) -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=width, height=height, color_system="standard")


def test_a_markdown_answer_is_redrawn_in_place_once_it_ends():
    console = terminal()
    printer = AnswerPrinter(console)
    for text in ("Fruits:\n", "- apple\n", "- **pear**"):
        printer.write(Piece("content", text))
    printer.finish(Answer(content="Fruits:\n- apple\n- **pear**"))
    shown = console.file.getvalue()
    streamed, _, redrawn = shown.partition("\r\x1b[2A\x1b[J")  # up to the answer's first row, cleared below
    assert plain(streamed) == "Fruits:\n- apple\n- **pear**"
    assert plain(redrawn).split() == ["Fruits:", "•", "apple", "•", "pear"]


def test_an_answer_taller_than_the_terminal_stays_as_it_streamed():
    console = terminal(height=3)
    printer = AnswerPrinter(console)
    printer.write(Piece("content", "- one\n- two\n- three"))
    printer.finish(Answer(content="- one\n- two\n- three"))
    assert plain(console.file.getvalue()) == "- one\n- two\n- three\n"


def test_the_waiting_line_shows_after_a_while_and_the_first_text_erases_it():
    console = terminal()
    hint = WaitingHint(console, delay=0.01)
    deadline = time.monotonic() + 5
    while WAITING not in console.file.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    hint.clear()
    assert console.file.getvalue() == f"\x1b[2m{WAITING}\x1b[0m\r\x1b[2K"  # dimmed, then its row erased
    quick = terminal()
    WaitingHint(quick, delay=30).clear()  # text came first: nothing shown
    assert quick.file.getvalue() == ""
    piped = Console(file=io.StringIO())
    WaitingHint(piped, delay=0).clear()
    time.sleep(0.05)
    assert piped.file.getvalue() == ""  # not a terminal: it could not be erased


MODELS = [
    {"type": "llm", "key": "google/gemma-3-270m", "loaded_instances": []},
    {"type": "embedding", "key": "local/minilm", "loaded_instances": [{"id": "local/minilm"}]},
    {"type": "llm", "key": "huggingfacetb/smollm2-135m-instruct",
     "loaded_instances": [{"id": "huggingfacetb/smollm2-135m-instruct"},
                          {"id": "huggingfacetb/smollm2-135m-instruct:2"}]},
]


def test_models_to_pick_from_are_the_language_models_and_their_instances():
    choices = model_choices(MODELS, current="huggingfacetb/smollm2-135m-instruct:2")
    assert [label for _, label in choices] == [
        "google/gemma-3-270m",
        "huggingfacetb/smollm2-135m-instruct (loaded)",
        "huggingfacetb/smollm2-135m-instruct:2 (loaded) (current)",
    ]
    assert picked("1", choices) == "google/gemma-3-270m"
    assert picked(" 3 ", choices) == "huggingfacetb/smollm2-135m-instruct:2"
    assert picked("9", choices) == "9"  # not a number on the list: taken as a key, which the server checks
    assert picked("", choices) is None
    assert loaded_model(MODELS) == "huggingfacetb/smollm2-135m-instruct"
    assert loaded_model(MODELS[:1]) is None
