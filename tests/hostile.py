"""Hostile input as data: each ``tests/test_hostile_*.py`` module lists its cases in ``CASES``.

A case is one request an attacker or an unlucky user could send, with the answer it must get:
a status, and for a 4xx the field the error names. ``check`` sends it and then asserts the
server still answers ``/health`` within a second, so a case that crashes or stalls the server
fails even when its own answer looks right. ``make soak`` replays every module's ``CASES`` under
load, so a case added here is also a soak case.

Bodies that are large to build are given as a function, called only when the case is sent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

HEALTH_DEADLINE_SECONDS = 1.0


@dataclass(frozen=True)
class HostileCase:
    name: str
    method: str
    path: str
    body: Any = None  # JSON-able value, or a function returning one (or raw bytes)
    status: int = 400
    param: str | None = None  # the error's ``param`` (checked when set)
    code: str | None = None  # the error's ``code`` (checked when set)
    timeout: float = 60.0

    def content(self) -> bytes | None:
        body = self.body() if callable(self.body) else self.body
        if body is None or isinstance(body, bytes):
            return body
        return json.dumps(body).encode()


def send(http: httpx.Client, case: HostileCase) -> httpx.Response:
    content = case.content()
    headers = {"content-type": "application/json"} if content is not None else {}
    return http.request(case.method, case.path, content=content, headers=headers, timeout=case.timeout)


def error_of(response: httpx.Response) -> dict:
    """The error object of either family's shape (OpenAI's and LM Studio v1's both nest it)."""
    try:
        return response.json().get("error") or {}
    except ValueError:
        return {}


def assert_healthy(http: httpx.Client) -> None:
    started = time.monotonic()
    response = http.get("/health", timeout=HEALTH_DEADLINE_SECONDS)
    assert response.status_code == 200, response.text
    assert time.monotonic() - started < HEALTH_DEADLINE_SECONDS


def check(http: httpx.Client, case: HostileCase, answer: Callable[[httpx.Response], None] | None = None) -> None:
    """Send ``case``, assert its status (and param, code), then that the server still answers."""
    response = send(http, case)
    assert response.status_code == case.status, f"{case.name}: {response.status_code} {response.text[:500]}"
    if case.status >= 400:
        error = error_of(response)
        if case.param is not None:
            assert error.get("param") == case.param, f"{case.name}: {error}"
        if case.code is not None:
            assert error.get("code") == case.code, f"{case.name}: {error}"
    if answer is not None:
        answer(response)
    assert_healthy(http)
