"""The embedding engine in-process, on all-MiniLM-L6-v2: closing it under running work.

Its lifecycle is the generation engine's (engine/lifecycle.py); these tests make sure the
embedding engine keeps it: close waits for the pass in flight, and the interpreter's exit
closes an engine still computing before the process tears llama.cpp down.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

import studiolo
from studiolo.config import EngineSettings
from studiolo.engine.embedding import EmbeddingEngine
from studiolo.engine.engine import EngineClosed
from studiolo.engine.llama import LlamaModel
from tests.conftest import MINILM

SENTENCE = "a sentence to embed, one of very many in a request that keeps the engine busy " * 4
MANY = 3000  # about a minute of passes on two cores: far more than a test waits for


@pytest.fixture(scope="module")
def model(default_models):
    loaded = LlamaModel(default_models[MINILM])
    yield loaded
    loaded.close()


def test_closing_under_an_embedding_fails_it_and_frees_the_context_after_the_pass(model):
    engine = EmbeddingEngine(model, EngineSettings())
    inputs = [model.tokenize(SENTENCE, add_special=True)] * MANY

    async def go():
        embedding = asyncio.create_task(engine.embed(inputs))
        while not engine.busy():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # passes are running
        await asyncio.to_thread(engine.close)
        with pytest.raises(EngineClosed):
            await embedding

    asyncio.run(go())
    assert not engine.busy() and not engine.ready()
    engine.close()  # closing twice is harmless

    async def after():
        with pytest.raises(EngineClosed):
            await engine.embed(inputs[:1])

    asyncio.run(after())


# Run as a script: an embedding is under way on the compute thread when the interpreter exits.
# ``report`` is registered before studiolo is imported, so it runs after studiolo's exit guard
# (atexit runs its hooks last in, first out) and tells what the guard did.
_EXIT_WHILE_EMBEDDING = """
import asyncio, atexit, sys, threading, time
from pathlib import Path

running = {}


def report():
    try:
        running["embedding"].result(timeout=10)
        print("finished")
    except TimeoutError:
        print("still running")
    except Exception as exc:
        print(type(exc).__name__)
    print("freed" if running["engine"].context._handle is None else "not freed")


atexit.register(report)

from studiolo.config import EngineSettings
from studiolo.engine.embedding import EmbeddingEngine
from studiolo.engine.llama import LlamaModel

model = LlamaModel(Path(sys.argv[1]))
engine = EmbeddingEngine(model, EngineSettings())
loop = asyncio.new_event_loop()
threading.Thread(target=loop.run_forever, daemon=True).start()
inputs = [model.tokenize(sys.argv[2], add_special=True)] * int(sys.argv[3])
running.update(engine=engine, embedding=asyncio.run_coroutine_threadsafe(engine.embed(inputs), loop))
while not engine.busy():
    time.sleep(0.01)
time.sleep(0.3)  # passes are running: the interpreter exits under one
"""


def test_the_exit_guard_closes_an_embedding_engine_still_computing(default_models):
    """Without the guard, the exit leaves the compute thread in llama.cpp as the process tears its state
    down (a crash, at times), and nothing ever ends the request."""
    src = str(Path(studiolo.__file__).parents[1])
    done = subprocess.run(
        [sys.executable, "-c", _EXIT_WHILE_EMBEDDING, str(default_models[MINILM]), SENTENCE, str(MANY)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": src},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["EngineClosed", "freed"], done.stdout + done.stderr
