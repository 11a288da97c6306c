"""Continuous batching end to end: no cross-talk, and client disconnects free their sequences.

A greedy stream run beside seven others must return what the same request returns alone, up
to rounding: batching changes where a sequence's cells sit in the shared KV cache and which
kernel paths a batch takes, so a batched stream may part from its solo run at a near-tie
(tests/batching.py says how near, and why). That the engine itself never lets one sequence
see another's words is shown bit for bit in test_engine.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx

from tests.batching import assert_same_or_parted_at_a_near_tie
from tests.conftest import NO_PENALTY, SMOLLM

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a land far away,",
    "def fibonacci(n):",
    "The three primary colors are",
    "In 1969, astronauts",
    "Water boils at",
    "My favourite recipe for pancakes",
    "The quick brown fox",
]

# If a cancelled sequence leaked, it would run to the end of its 4096-token context and
# hold its slot for minutes; a follow-up request finishing well inside this shows it did not.
FOLLOW_UP_LIMIT_SECONDS = 60.0


async def _stream_tokens(client, prompt: str) -> list[tuple[str, dict[str, float]]]:
    """The streamed tokens, each with its top-5 alternatives (a near-tie may hold more than two)."""
    stream = await client.completions.create(
        model=SMOLLM, prompt=prompt, max_tokens=48, temperature=0, stream=True, logprobs=5, extra_body=NO_PENALTY
    )
    tokens = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].logprobs:
            logprobs = chunk.choices[0].logprobs
            tokens.extend(zip(logprobs.tokens, logprobs.top_logprobs))
    return tokens


def test_eight_concurrent_greedy_streams_match_their_solo_runs(async_client):
    async def run():
        alone = [await _stream_tokens(async_client, prompt) for prompt in PROMPTS]
        together = await asyncio.gather(*(_stream_tokens(async_client, prompt) for prompt in PROMPTS))
        return alone, together

    alone, together = asyncio.run(run())
    firsts = [tuple(token for token, _ in tokens[:4]) for tokens in alone]
    assert len(set(firsts)) == len(PROMPTS)  # distinct openings, so a swap could not go unseen
    for prompt, solo, batched in zip(PROMPTS, alone, together):
        assert_same_or_parted_at_a_near_tie(prompt, solo, batched)


ENDLESS = {"model": SMOLLM, "max_tokens": -1, "ignore_eos": True, "temperature": 0}


def _follow_up_finishes_promptly(http: httpx.Client) -> None:
    started = time.monotonic()
    body = {"model": SMOLLM, "prompt": "Hello", "max_tokens": 4, "temperature": 0}
    response = http.post("/v1/completions", json=body, timeout=FOLLOW_UP_LIMIT_SECONDS)
    assert response.status_code == 200
    assert time.monotonic() - started < FOLLOW_UP_LIMIT_SECONDS


def _live_sequences(http: httpx.Client) -> int:
    """Sequences running or queued on every loaded instance (/studiolo/memory)."""
    instances = http.get("/studiolo/memory").json()["instances"]
    return sum(instance["running_sequences"] + instance["queued_sequences"] for instance in instances)


def _no_sequence_is_left(http: httpx.Client) -> None:
    """Every cancelled sequence gave its slot back: none runs or waits. A leaked one (endless) would
    hold its slot until its 4096-token context is full, minutes; this waits only for the server to
    notice the last hang-up."""
    deadline = time.monotonic() + FOLLOW_UP_LIMIT_SECONDS / 2
    while _live_sequences(http) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _live_sequences(http) == 0


def test_aborted_streams_leave_the_server_free(server, http):
    """100 streams, each cut after its first chunk; then not one sequence may be left (an exact
    check: a single leak fails it, where the follow-up alone needs the 4 slots all leaked)."""
    with httpx.Client(base_url=server.base_url, timeout=30) as session:
        for i in range(100):
            body = {**ENDLESS, "prompt": f"Story number {i}:", "stream": True}
            with session.stream("POST", "/v1/completions", json=body) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        break  # one chunk, then hang up
    _follow_up_finishes_promptly(http)
    _no_sequence_is_left(http)


def test_abandoned_non_streaming_requests_are_cancelled(server, http):
    for i in range(6):  # more than the 4 parallel slots
        body = {**ENDLESS, "prompt": f"Endless tale {i}:"}
        try:
            httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=0.5)
        except httpx.TimeoutException:
            pass
    _follow_up_finishes_promptly(http)


def test_disconnect_during_a_long_prefill(server, http):
    body = {**ENDLESS, "prompt": "lorem ipsum " * 1500, "stream": True}
    for _ in range(5):
        try:
            with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=0.3) as response:
                for _ in response.iter_lines():
                    pass
        except httpx.TimeoutException:
            pass
    _follow_up_finishes_promptly(http)


def _send_and_hang_up(base_url: str, path: str, body: dict) -> None:
    """Send a whole request on a raw socket and close it at once, before any byte of the answer."""
    url = httpx.URL(base_url)
    payload = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(payload)}\r\n\r\n").encode()
    with socket.create_connection((url.host, url.port)) as connection:
        connection.sendall(head + payload)


def test_streams_abandoned_before_their_first_chunk_are_cancelled(server, http):
    for i in range(6):  # more than the 4 parallel slots
        _send_and_hang_up(server.base_url, "/v1/completions", {**ENDLESS, "prompt": f"Saga {i}:", "stream": True})
        chat = {**ENDLESS, "messages": [{"role": "user", "content": f"Tell saga {i}"}], "stream": True}
        _send_and_hang_up(server.base_url, "/v1/chat/completions", chat)
        response = {"model": SMOLLM, "input": f"Tell saga {i}", "stream": True, "temperature": 0, "store": False}
        _send_and_hang_up(server.base_url, "/v1/responses", response)
    _follow_up_finishes_promptly(http)
