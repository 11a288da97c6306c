"""Stop strings and UTF-8 across token boundaries, without a model."""

from __future__ import annotations

from studiolo.service.text import TextAssembler, overlap_with_stop_prefix
from studiolo.service.types import TokenInfo


def run(pieces: list[bytes], stops: tuple[str, ...] = ()) -> tuple[list[str], str, bool]:
    assembler = TextAssembler(stops)
    released = []
    for piece in pieces:
        if assembler.stopped:
            break
        text, _ = assembler.feed(piece)
        released.append(text)
    tail, _ = assembler.finish()
    released.append(tail)
    return released, "".join(released), assembler.stopped


def test_without_stops_text_is_released_as_it_comes():
    released, text, stopped = run([b"Hello", b",", b" world"])
    assert released == ["Hello", ",", " world", ""]
    assert text == "Hello, world" and not stopped


def test_stop_string_split_across_tokens_is_caught_and_not_shown():
    released, text, stopped = run([b"The answer", b" is 4", b"2.\n", b"Done"], stops=("42.",))
    assert text == "The answer is "
    assert stopped
    assert all("4" not in chunk for chunk in released)


def test_text_that_only_looks_like_a_stop_prefix_is_released_later():
    released, text, stopped = run([b"a <", b"b", b"> c"], stops=("<end>",))
    assert text == "a <b> c" and not stopped
    assert released[0] == "a "  # "<" waits: it could begin "<end>"


def test_earliest_of_several_stops_wins():
    _, text, _ = run([b"one two three"], stops=("three", "two"))
    assert text == "one "


def test_multibyte_character_split_over_tokens_is_never_broken():
    euro = "€".encode()  # three bytes
    released, text, _ = run([b"price ", euro[:1], euro[1:2], euro[2:], b"5"])
    assert text == "price €5"
    assert "\ufffd" not in text
    assert released[1] == "" and released[2] == "" and released[3] == "€"


def test_invalid_bytes_become_replacement_characters_at_the_end():
    _, text, _ = run([b"ok", b"\xe2\x82"])
    assert text == "ok\ufffd"


def test_tokens_travel_with_their_text_and_a_stop_keeps_the_straddling_token():
    infos = [TokenInfo(i, t, t.encode(), -0.1) for i, t in enumerate(["Hi", " the", "re", " end"])]
    assembler = TextAssembler(("there",))
    collected = []
    for info in infos:
        _, tokens = assembler.feed(info.bytes, info)
        collected.extend(t.text for t in tokens)
        if assembler.stopped:
            break
    # " the" starts before the stop string begins (" " is shown), "re" does not
    assert collected == ["Hi", " the"]


def test_overlap_with_stop_prefix():
    assert overlap_with_stop_prefix("abc<e", ("<end>",)) == 2
    assert overlap_with_stop_prefix("abc", ("<end>",)) == 0
    assert overlap_with_stop_prefix("x\n\n", ("\n\nUser:",)) == 2


def test_the_stop_found_is_named():
    """Anthropic's ``stop_sequence``: the stop that matched first in the text; of two found at the same
    place, the first listed."""
    for stops, found in [(("world", "o, w"), "o, w"), (("lo", "llo"), "llo"), (("He", "Hel"), "He")]:
        assembler = TextAssembler(stops)
        for piece in (b"Hel", b"lo, wor", b"ld"):
            assembler.feed(piece)
        assert assembler.stopped and assembler.stop_found == found
    assert TextAssembler(("x",)).stop_found is None
