"""Fewer llama.cpp threads while other programs keep the cores busy (engine/cpu_share.py).

The unit tests feed CpuShare made-up tick counts; the last one runs the real engine beside real
CPU-bound processes and looks at the thread count its context was given (not at any timing).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time

import pytest

from studiolo.config import EngineSettings
from studiolo.domain.sampling import SamplingParams
from studiolo.engine import cpu_share
from studiolo.engine.cpu_share import SAMPLE_SECONDS, CpuShare
from studiolo.engine.engine import Engine
from studiolo.engine.llama import LlamaModel
from studiolo.engine.sequence import GenerationRequest, TokenEvent
from tests.conftest import SMOLLM
from tests.stress import burn

TICKS = cpu_share._CLOCK_TICKS


class FakeMachine:
    """Clock, machine-wide busy ticks and this process's ticks, advanced by hand."""

    def __init__(self, monkeypatch):
        self.now, self.busy, self.own = 1000.0, 0, 0
        monkeypatch.setattr(cpu_share.time, "monotonic", lambda: self.now)
        monkeypatch.setattr(cpu_share, "_machine_busy_ticks", lambda: self.busy)
        monkeypatch.setattr(cpu_share, "_own_ticks", lambda: self.own)

    def run(self, seconds: float, ours: float, others: float) -> None:
        """``seconds`` pass with this process using ``ours`` cores and the rest ``others``."""
        self.now += seconds
        self.own += round(ours * seconds * TICKS)
        self.busy += round((ours + others) * seconds * TICKS)


@pytest.fixture
def machine(monkeypatch):
    monkeypatch.setattr(cpu_share.os, "cpu_count", lambda: 2)
    return FakeMachine(monkeypatch)


def test_an_idle_machine_gets_every_configured_thread(machine):
    share = CpuShare()
    machine.run(1.0, ours=2.0, others=0.1)
    assert share.threads(2) == 2
    assert share.threads(1) == 1  # never more than configured


def test_a_busy_core_elsewhere_takes_a_thread_and_gives_it_back(machine):
    share = CpuShare()
    machine.run(1.0, ours=1.0, others=1.0)  # two threads sharing the cores with a busy program
    assert share.threads(2) == 1
    machine.run(1.0, ours=0.7, others=1.3)
    assert share.threads(2) == 1  # never fewer than one
    machine.run(1.0, ours=1.0, others=0.0)  # the other program ended
    assert share.threads(2) == 2


def test_the_load_is_read_again_only_after_the_sample_time(machine):
    share = CpuShare()
    machine.run(SAMPLE_SECONDS / 2, ours=0.0, others=2.0)
    assert share.threads(2) == 2  # too soon to look again
    machine.run(SAMPLE_SECONDS, ours=0.0, others=2.0)
    assert share.threads(2) == 1


def test_back_from_idle_the_last_estimate_holds_until_a_fresh_window(machine):
    share = CpuShare()
    machine.run(SAMPLE_SECONDS, ours=2.0, others=0.0)
    assert share.threads(2) == 2
    machine.run(3.0, ours=0.0, others=1.6)  # idle here while another program had its turn, now over
    assert share.threads(2) == 2  # not the idle window's load: the cores are free again
    machine.run(SAMPLE_SECONDS, ours=2.0, others=0.0)
    assert share.threads(2) == 2
    machine.run(SAMPLE_SECONDS, ours=1.0, others=1.0)  # a program busy now is seen within a window
    assert share.threads(2) == 1


def test_without_proc_stat_the_configured_threads_are_used(monkeypatch):
    monkeypatch.setattr(cpu_share, "_machine_busy_ticks", lambda: None)
    share = CpuShare()
    assert share.threads(2) == 2 and share.threads(3) == 3


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core leaves nothing to give up")
def test_the_engine_computes_with_one_thread_beside_busy_programs(default_models):
    model = LlamaModel(default_models[SMOLLM])
    engine = Engine(model, EngineSettings(context_length=512, parallel=1, threads=2))
    request = GenerationRequest(prompt=model.tokenize("Count to twenty:", add_special=True),
                                sampling=SamplingParams(temperature=0, repeat_penalty=1.0), max_tokens=24)

    async def generate() -> list[int]:
        return [event.token async for event in engine.submit(request) if isinstance(event, TokenEvent)]

    burners = [multiprocessing.Process(target=burn, daemon=True) for _ in range(os.cpu_count() or 2)]
    try:
        alone = asyncio.run(generate())
        for burner in burners:
            burner.start()
        time.sleep(2 * SAMPLE_SECONDS)
        # back from idle, the engine keeps its last estimate until it has computed a whole window beside them
        started = time.monotonic()
        while time.monotonic() - started < 3 * SAMPLE_SECONDS:
            assert asyncio.run(generate()) == alone  # the thread count never changes results
        assert engine.context.n_threads == 1
    finally:
        for burner in burners:
            burner.terminate()
        engine.close()
        model.close()
