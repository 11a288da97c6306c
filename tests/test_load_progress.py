"""A model load's progress: llama.cpp's fractions from the loading thread (engine/llama.py), coalesced
to the event loop and shared by every watcher (models/load_progress.py), then streamed as /api/v1/chat's
``model_load.progress`` events and the SDK protocol's ``loadProgress`` / ``progress`` packets.

On a CPU with the file memory-mapped, llama.cpp's tensor pass (the part it reports) takes some tens of
milliseconds at the very end of the load, and the coalescing lets at most 20 updates a second through:
a client sees few fractions from a model this small, often just the final 1.0. So the end-to-end tests
check the order and the bounds of what comes (increasing, ending at 1.0 before model_load.end), and
the tests in-process check the count: the hundreds of fractions llama.cpp reports, and what the
coalescing makes of a steady stream of them.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from pathlib import Path

import httpx
import llama_cpp
import lmstudio
import pytest

from studiolo.engine.llama import LlamaModel, ModelLoadError
from studiolo.models.defaults import QWEN05, target_path
from studiolo.models.load_progress import MIN_INTERVAL, LoadBoard, LoadProgress
from tests.conftest import QWEN, SMOLLM, RunningServer, free_port, home_with_models, loaded_instances
from tests.test_sdk_models import channel

BROKEN = "broken/renamed-architecture"


def _callbacks_alive() -> int:
    """The llama.cpp progress callback objects Python holds now."""
    return sum(isinstance(o, llama_cpp.llama_progress_callback) for o in gc.get_objects())


def _renamed_architecture(source: Path, target: Path) -> Path:
    """A copy whose header passes studiolo's checks but names an architecture llama.cpp lacks."""
    data = bytearray(source.read_bytes())
    key = data.index(b"general.architecture") + len(b"general.architecture")
    start = key + 4 + 8  # the value's type, then its length
    length = int.from_bytes(data[key + 4:start], "little")
    data[start:start + length] = b"z" * length
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(bytes(data))
    return target


@pytest.fixture(scope="module")
def qwen_path() -> Path:
    path = target_path(QWEN05)
    if not path.exists():
        pytest.fail(f"{path} missing; run `make setup`")
    return path


# -- the engine: llama.cpp's callback


def test_llama_reports_increasing_fractions_to_one_and_lets_its_callback_go(qwen_path):
    seen: list[float] = []
    alive_during: list[int] = []

    def record(fraction: float) -> None:
        seen.append(fraction)
        if len(seen) == 2:
            alive_during.append(_callbacks_alive())

    model = LlamaModel(qwen_path, record)
    try:
        assert len(seen) > 100 and seen == sorted(seen)  # one a tensor, about
        assert seen[0] == 0.0 and seen[-1] == 1.0
        assert alive_during == [1] and _callbacks_alive() == 0  # kept for the load, not after
    finally:
        model.close()


def test_a_failing_progress_callback_neither_stops_the_load_nor_is_called_again(qwen_path):
    calls: list[float] = []

    def fail(fraction: float) -> None:
        calls.append(fraction)
        raise RuntimeError("a watcher's bug")

    model = LlamaModel(qwen_path, fail)  # returning false (what an escaping exception does) would abort it
    try:
        assert model.n_vocab > 0 and calls == [0.0]
    finally:
        model.close()
    assert _callbacks_alive() == 0


def test_a_load_llama_cpp_refuses_fails_cleanly_with_its_callback_gone(qwen_path, tmp_path):
    broken = _renamed_architecture(qwen_path, tmp_path / "broken.gguf")
    seen: list[float] = []
    with pytest.raises(ModelLoadError, match="could not load broken.gguf"):
        LlamaModel(broken, seen.append)
    assert seen == [] and _callbacks_alive() == 0  # refused before its tensors


# -- the coalescing, on an event loop


def _report_steadily(progress: LoadProgress, steps: int, pause: float) -> float:
    """Report ``steps`` fractions up to 1.0, ``pause`` apart, as a loading thread would; the seconds it took."""
    started = time.monotonic()
    for step in range(1, steps + 1):
        progress.report(step / steps)
        time.sleep(pause)
    return time.monotonic() - started


def test_a_steady_stream_reaches_every_watcher_coalesced():
    async def run() -> tuple[list[list[float]], float]:
        progress = LoadProgress()
        first = progress.watch()
        loading = asyncio.ensure_future(asyncio.to_thread(_report_steadily, progress, 100, 0.005))
        await asyncio.sleep(0.2)
        late = progress.watch()  # a second request for the same load, once it is under way
        seconds = await loading
        progress.end()
        never = asyncio.get_running_loop().create_future()
        return [[fraction async for fraction in watch.fractions_until(never)] for watch in (first, late)], seconds

    (first, late), seconds = asyncio.run(run())
    assert first == sorted(set(first)) and first[-1] == 1.0
    assert 5 <= len(first) <= seconds / MIN_INTERVAL + 2  # 100 reports in ~0.5 s: at most one update an interval
    assert late[0] > 0.1 and late == [f for f in first if f >= late[0]]  # where it was, then the same updates


def test_updates_are_spaced_and_a_watcher_stops_with_the_work_it_waits_for():
    async def run() -> list[float]:
        progress, stamps = LoadProgress(), []
        watch = progress.watch()
        loading = asyncio.ensure_future(asyncio.to_thread(_report_steadily, progress, 50, 0.005))
        async for _ in watch.fractions_until(loading):  # never ended: it stops once the thread is done
            stamps.append(time.monotonic())
        return stamps

    stamps = asyncio.run(asyncio.wait_for(run(), 10))
    gaps = [later - earlier for earlier, later in zip(stamps, stamps[1:], strict=False)]
    assert len(stamps) >= 3 and min(gaps) >= MIN_INTERVAL * 0.8  # loop timers may fire a little early


def test_a_board_shares_one_jit_load_and_forgets_watchers_of_loads_that_never_began():
    async def run() -> tuple[list[float], list[float], int, int]:
        board = LoadBoard()
        early = board.watch("m")  # waits behind an eviction: the load has not begun
        progress = board.begin("m")
        late = board.watch("m")
        progress.report(0.5)
        await asyncio.sleep(0.01)
        progress.report(1.0)
        board.end("m", progress)
        never = asyncio.get_running_loop().create_future()
        seen = [[f async for f in w.fractions_until(never)] for w in (early, late)]
        early.close()
        late.close()
        ended = len(board)
        with board.watch("other"):
            pass  # a request that found its model loaded after all
        return seen[0], seen[1], ended, len(board)

    early, late, ended, after = asyncio.run(run())
    assert early == late == [0.5, 1.0] and ended == 0 and after == 0


# -- end to end: a real server JIT-loading Qwen 0.5B


@pytest.fixture(scope="module")
def server(tmp_path_factory, qwen_path, chat_models):
    home = home_with_models(tmp_path_factory.mktemp("load-progress"), {**chat_models, QWEN: qwen_path})
    _renamed_architecture(qwen_path, home / "models" / BROKEN / "renamed-Q4_K_M.gguf")
    running = RunningServer(home, free_port(), ["--context-length", "512", "--parallel", "1"])
    yield running
    running.stop()


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=120) as session:
        for instance_id in loaded_instances(session):
            session.post("/api/v1/models/unload", json={"instance_id": instance_id})
        yield session


def _stream(client: httpx.Client, model: str) -> list[tuple[str, dict]]:
    body = {"model": model, "input": "Hi", "max_output_tokens": 2, "temperature": 0, "stream": True,
            "store": False}
    events, name = [], None
    with client.stream("POST", "/api/v1/chat", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    return events


def _load_progress(events: list[tuple[str, dict]]) -> list[float]:
    """The progress events between model_load.start and model_load.end (nothing else comes between)."""
    names = [name for name, _ in events]
    start, end = names.index("model_load.start"), names.index("model_load.end")
    assert set(names[start + 1:end]) == {"model_load.progress"}
    return [data["progress"] for _, data in events[start + 1:end]]


def _increasing_to_one(fractions: list[float]) -> bool:
    """Above 0, strictly increasing, the last 1.0 (how many: the tests in-process above)."""
    return fractions == sorted(set(fractions)) and fractions[-1] == 1.0 and 0.0 < fractions[0]


def test_a_streamed_chat_shows_its_load_s_progress(http):
    events = _stream(http, QWEN)
    assert [name for name, _ in events][:2] == ["chat.start", "model_load.start"]
    assert _increasing_to_one(_load_progress(events))
    assert events[-1][0] == "chat.end" and events[-1][1]["result"]["stats"]["model_load_time_seconds"] > 0


def test_two_requests_jit_loading_one_model_both_see_its_one_load(server, http):
    async def both() -> list[list[tuple[str, dict]]]:
        def one() -> list[tuple[str, dict]]:
            with httpx.Client(base_url=server.base_url, timeout=120) as session:
                return _stream(session, QWEN)
        return list(await asyncio.gather(asyncio.to_thread(one), asyncio.to_thread(one)))

    streams = asyncio.run(both())
    for events in streams:
        assert _increasing_to_one(_load_progress(events))
    assert list(loaded_instances(http)) == [QWEN]  # one load, watched twice


def test_a_load_that_fails_ends_its_stream_and_the_next_load_streams_again(http):
    events = _stream(http, BROKEN)
    names = [name for name, _ in events]
    assert names == ["chat.start", "model_load.start", "error", "chat.end"]
    assert events[2][1]["error"]["code"] == "model_load_failed"
    assert _increasing_to_one(_load_progress(_stream(http, QWEN)))


# -- the SDK protocol


def test_the_sdk_s_get_or_load_reports_increasing_progress(server, http):
    progress: list[float] = []
    with lmstudio.Client(f"127.0.0.1:{server.port}") as sdk:
        model = sdk.llm.model(QWEN, on_load_progress=progress.append)
    assert model.identifier == QWEN
    assert progress[0] == 0.0 and _increasing_to_one(progress[1:])  # the SDK's own 0.0 on startLoading


def test_get_or_load_packets_carry_the_fractions_then_one(server, http):
    packets = channel(server, "llm", "getOrLoad", {"identifier": QWEN, "loadConfigStack": {"layers": []}})
    kinds = [packet["type"] for packet in packets]
    assert kinds[0] == "startLoading" and kinds[-1] == "loadSuccess"
    assert set(kinds[1:-1]) == {"loadProgress"}
    assert _increasing_to_one([packet["progress"] for packet in packets[1:-1]])


def test_load_new_instance_reports_zero_the_fractions_then_one(server, http):
    progress: list[float] = []
    with lmstudio.Client(f"127.0.0.1:{server.port}") as sdk:
        model = sdk.llm.load_new_instance(QWEN, "qwen-progress", on_load_progress=progress.append)
        assert model.identifier == "qwen-progress"
    assert progress[0] == 0.0 and _increasing_to_one(progress[1:])


def test_a_model_loaded_already_streams_no_load(http):
    http.post("/api/v1/models/load", json={"model": SMOLLM})
    names = [name for name, _ in _stream(http, SMOLLM)]
    assert "model_load.start" not in names and "model_load.progress" not in names

