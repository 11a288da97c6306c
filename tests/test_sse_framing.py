"""The raw bytes of a stream: SSE `data:` events, JSON chunks, `[DONE]` last."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SMOLLM


def raw_events(http, path: str, body: dict) -> tuple[str, list[str]]:
    with http.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        content_type = response.headers["content-type"]
        raw = b"".join(response.iter_bytes()).decode()
    assert raw.endswith("\n\n")
    return content_type, raw[:-2].split("\n\n")


@pytest.mark.parametrize(
    ("path", "body", "object_name"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}, "chat.completion.chunk"),
        ("/v1/completions", {"prompt": "Hi"}, "text_completion"),
    ],
)
def test_stream_is_data_events_then_done(http, path, body, object_name):
    request = {"model": SMOLLM, "max_tokens": 5, "temperature": 0, "stream": True, **body}
    content_type, events = raw_events(http, path, {**request, "stream_options": {"include_usage": True}})
    assert content_type.startswith("text/event-stream")
    assert all(event.startswith("data: ") and "\n" not in event for event in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(event[len("data: ") :]) for event in events[:-1]]
    assert {chunk["object"] for chunk in chunks} == {object_name}
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert all("usage" in chunk for chunk in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]][-1] == "length"

    _, plain = raw_events(http, path, request)
    assert all("usage" not in json.loads(event[len("data: ") :]) for event in plain[:-1])
