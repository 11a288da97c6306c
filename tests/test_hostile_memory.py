"""Hostile input against what holds memory: model loads asking for more than the limits allow,
and the routes of the memory figures and the log stream. Each is refused before anything is
allocated, with the field named; none leaves anything behind (``make soak`` replays them)."""

from __future__ import annotations

import pytest

from tests.conftest import SMOLLM
from tests.hostile import HostileCase, check

LOAD = "/api/v1/models/load"

CASES: list[HostileCase] = [
    HostileCase("load_parallel_past_the_maximum", "POST", LOAD, {"model": SMOLLM, "parallel": 65}, param="parallel"),
    HostileCase("load_parallel_huge", "POST", LOAD, {"model": SMOLLM, "parallel": 10**30}, param="parallel"),
    HostileCase("load_batch_past_the_maximum", "POST", LOAD, {"model": SMOLLM, "eval_batch_size": 8193},
                param="eval_batch_size"),
    HostileCase("load_context_below_the_minimum", "POST", LOAD, {"model": SMOLLM, "context_length": 1},
                param="context_length"),
    HostileCase("load_context_not_a_number", "POST", LOAD, {"model": SMOLLM, "context_length": "1e12"},
                param="context_length"),
    HostileCase("load_identifier_of_a_megabyte", "POST", LOAD, lambda: {"model": SMOLLM, "identifier": "x" * 2**20},
                param="identifier"),
    HostileCase("load_unknown_model_with_a_long_name", "POST", LOAD, lambda: {"model": "m" * 100_000},
                status=404, param="model"),
    HostileCase("memory_figures_posted_to", "POST", "/studiolo/memory", {"x": 1}, status=405),
    HostileCase("log_stream_unknown_source", "GET", "/studiolo/log/stream?source=" + "s" * 10_000, param="source"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hostile_memory_case(http, case):
    check(http, case)
