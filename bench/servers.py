"""Starting and stopping the three servers, one at a time, on the same GGUF and settings.

- studiolo: ``studiolo server start --foreground`` with its own STUDIOLO_HOME holding the model;
- llama-server: llama.cpp's own server, embedded in the ``xllamacpp`` package (bench/llama_server.py);
- llama-cpp-python's packaged server: ``python -m llama_cpp.server`` (one request at a time:
  it has no parallel slots; told to queue requests rather than interrupt the running one).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.config import BenchConfig

BENCH_DIR = Path(__file__).parent
START_TIMEOUT = 180.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited while starting; log:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"server did not come up; log:\n{log.read_text()[-3000:]}")


@contextmanager
def _running(command: list[str], ready_path: str, port: int, log: Path, env: dict | None = None):
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_until_up(process, f"http://127.0.0.1:{port}{ready_path}", log)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def studiolo(model_key: str, model_path: Path, config: BenchConfig, logs: Path,
             more_models: dict[str, Path] | None = None, projector: Path | None = None):
    """``more_models``: other models in its home by key (a draft model, say); ``projector``: a vision
    projector beside the model, as LM Studio lays a vision model out."""
    port = _free_port()
    with tempfile.TemporaryDirectory() as home:
        for key, path in {model_key: model_path, **(more_models or {})}.items():
            link = Path(home) / "models" / key / path.name
            link.parent.mkdir(parents=True)
            link.symlink_to(path)
        if projector is not None:
            (Path(home) / "models" / model_key / projector.name).symlink_to(projector)
        env = {**os.environ, "STUDIOLO_HOME": home}
        command = [sys.executable, "-m", "studiolo", "server", "start", "--foreground", "--port", str(port)]
        command += ["--parallel", str(config.slots), "--context-length", str(config.context)]
        command += ["--threads", str(config.threads)]
        with _running(command, "/health", port, logs / f"studiolo-{model_path.stem}.log", env) as url:
            yield url, model_key


@contextmanager
def llama_server(model_key: str, model_path: Path, config: BenchConfig, logs: Path,
                 speculation: list[str] | None = None, projector: Path | None = None):
    """``speculation``: bench/llama_server.py's flags for it (``--draft-model PATH``, ``--ngram``);
    ``projector``: its ``--mmproj``."""
    port = _free_port()
    command = [sys.executable, str(BENCH_DIR / "llama_server.py"), "--model", str(model_path), "--port", str(port)]
    command += ["--parallel", str(config.slots), "--context", str(config.context)]
    command += ["--threads", str(config.threads), "--batch", str(config.batch), *(speculation or [])]
    command += ["--mmproj", str(projector)] if projector is not None else []
    suffix = "-ngram" if "--ngram" in (speculation or []) else "-draft" if speculation else ""
    suffix += "-vision" if projector is not None else ""
    with _running(command, "/health", port, logs / f"llama-server-{model_path.stem}{suffix}.log") as url:
        yield url, "bench"


@contextmanager
def llama_server_embeddings(model_key: str, model_path: Path, config: BenchConfig, logs: Path):
    """llama-server serving embeddings (bench/embeddings.py) as studiolo's EmbeddingEngine does: as many
    slots as studiolo packs inputs into one pass, a batch as large as its pass, mean pooling."""
    port = _free_port()
    command = [sys.executable, str(BENCH_DIR / "llama_server.py"), "--model", str(model_path), "--port", str(port)]
    command += ["--parallel", str(config.embedding_slots), "--context", str(config.embedding_context)]
    command += ["--threads", str(config.threads), "--batch", str(config.embedding_batch_tokens)]
    command += ["--ubatch", str(config.embedding_batch_tokens), "--embedding", "--pooling", "mean"]
    with _running(command, "/health", port, logs / f"llama-server-{model_path.stem}.log") as url:
        yield url, "bench"


@contextmanager
def llama_cpp_python(model_key: str, model_path: Path, config: BenchConfig, logs: Path):
    port = _free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--port", str(port)]
    command += ["--host", "127.0.0.1", "--model_alias", "bench", "--n_ctx", str(config.context)]
    command += ["--n_threads", str(config.threads), "--n_threads_batch", str(config.threads)]
    command += ["--n_batch", str(config.batch), "--verbose", "False"]
    command += ["--interrupt_requests", "False"]  # by default a new request cuts the running one off
    with _running(command, "/v1/models", port, logs / f"llama-cpp-python-{model_path.stem}.log") as url:
        yield url, "bench"


SERVERS = {
    "studiolo": studiolo,
    "llama-server": llama_server,
    "llama-cpp-python": llama_cpp_python,
}
