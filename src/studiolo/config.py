"""Where studiolo keeps its files, and the server's defaults.

Everything lives under STUDIOLO_HOME (default ``~/.studiolo``), laid out as LM Studio
lays out ``~/.lmstudio``: ``models/<publisher>/<repo>/<file>.gguf``, plus the server's
pid file and logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PORT = 1234
DEFAULT_BIND = "127.0.0.1"
MIN_CONTEXT = 64  # tokens per sequence: less cannot hold a chat template's frame
MAX_PARALLEL = 64  # every decoding sequence takes one of the batch's 512 places each step


def studiolo_home() -> Path:
    """The root folder; read from the environment each call so tests can point it elsewhere."""
    env = os.environ.get("STUDIOLO_HOME")
    return Path(env).expanduser() if env else Path.home() / ".studiolo"


def models_dir() -> Path:
    return studiolo_home() / "models"


def logs_dir() -> Path:
    return studiolo_home() / "logs"


def server_state_file() -> Path:
    """Where a background server writes its pid and port."""
    return studiolo_home() / "server.json"


@dataclass
class EngineSettings:
    """How an engine is created for a loaded model (LM Studio's load options)."""

    context_length: int = 4096  # per sequence, as LM Studio's default context
    parallel: int = 4  # sequences decoded together ("Max Concurrent Predictions")
    batch_size: int = 512  # tokens per llama_decode: bounds chunked prefill
    threads: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    prompt_cache_mib: int = 2048  # RAM for cached prompt prefixes moved out of the KV cache


@dataclass
class ServerSettings:
    host: str = DEFAULT_BIND
    port: int = DEFAULT_PORT
    cors: bool = False
    jit_loading: bool = True
    auto_evict: bool = True  # at most one JIT-loaded model at a time
    engine: EngineSettings = field(default_factory=EngineSettings)
