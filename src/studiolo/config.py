"""Where studiolo keeps its files, and the server's defaults.

Everything lives under STUDIOLO_HOME (default ``~/.studiolo``), laid out as LM Studio
lays out ``~/.lmstudio``: ``models/<publisher>/<repo>/<file>.gguf``, plus the server's
pid file and logs.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field, fields
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


def settings_file() -> Path:
    """Optional JSON with ``limits``, ``budgets`` and ``server`` sections overriding the defaults below."""
    return studiolo_home() / "settings.json"


def server_state_file() -> Path:
    """Where a server writes its pid, port and instance id (cli/server.py)."""
    return studiolo_home() / "server.json"


@dataclass
class EngineSettings:
    """How an engine is created for a loaded model (LM Studio's load options)."""

    context_length: int = 4096  # per sequence, as LM Studio's default context
    parallel: int = 4  # sequences decoded together ("Max Concurrent Predictions")
    batch_size: int = 512  # tokens per llama_decode: bounds chunked prefill
    threads: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    # each engine's cap on its RAM prompt cache; a server's manager sets it from the one setting,
    # Budgets.prompt_cache_mib (which also bounds all engines' caches together)
    prompt_cache_mib: int = field(default_factory=lambda: Budgets().prompt_cache_mib)


@dataclass
class RequestLimits:
    """Bounds checked before any large work starts; a request over one gets a 400 naming the field
    and the limit. Each can be set in ``settings.json`` under ``"limits"`` (docs/API.md, "Limits")."""

    # a request body, before it is parsed; parsing holds the GIL: a 63 MiB body of token ids blocked
    # the event loop 1.4 s, a 31 MiB one 0.6 s, while 32 MiB still holds max_prompt_chars as \uXXXX escapes
    max_body_mib: int = 32
    max_json_depth: int = 200  # nesting of the body and of any JSON inside it (arguments, schemas)
    max_messages: int = 10_000  # chat messages or Responses input items
    max_prompt_chars: int = 4_000_000  # all the text of one request's prompt(s), before tokenizing
    max_sequences: int = 256  # prompts x n of one request
    max_schema_bytes: int = 1_000_000  # a JSON schema, as JSON text
    max_schema_refs: int = 1_000  # $ref uses in one schema
    max_grammar_bytes: int = 100_000  # a regex, GBNF or Lark grammar, or all choices (0.3-0.6 s to compile)
    max_grammar_rules: int = 1_000  # rules of a GBNF or Lark grammar (a chain of 3,000 crashed llguidance)
    max_choices: int = 1_000  # guided_choice strings: llguidance follows at most 2,000 alternatives at once
    # entries of any one list or map in a JSON schema (properties, required, anyOf, enum, ...):
    # llguidance's time grows faster than their number, and 42,500 required names crashed it
    max_schema_entries: int = 1_000
    # objects and arrays in one body, counted before it is parsed: parsing and validating each costs
    # ~5 us on the event loop (1,000,000 content parts: 5.5 s), whatever the body's size in bytes
    max_json_containers: int = 200_000
    # images (docs/API.md "Images"): per request, and each one's bytes (after base64) and pixels
    max_images: int = 16
    max_image_mib: int = 20
    max_image_pixels: int = 7680 * 4320  # 8K UHD: a small PNG can claim 10 Gpx
    # a model's queue (docs/API.md "Limits"): sequences waiting for one of its parallel slots; past it a
    # request is a 429 with Retry-After. Above max_sequences, so that one request of many choices fits
    max_queued_per_model: int = 512
    # how long a request may wait in that queue before it is refused (503 with Retry-After); 0: no deadline
    queue_timeout_seconds: int = 600
    max_tools: int = 128  # tools one request offers (each one's schema is compiled into the call grammar)
    max_stop_strings: int = 16  # stop strings (each is matched against the output at every token)
    max_stop_chars: int = 1_000  # characters of one stop string
    max_n: int = 16  # choices per prompt (also bounded with the prompts by max_sequences)
    # MCP tools the server calls (service/mcp.py): seconds one call may take before it fails (the
    # model reads the failure), and characters of its output the model gets (the rest is cut, marked)
    mcp_call_timeout_seconds: int = 30
    mcp_max_output_chars: int = 32_000
    mcp_max_rounds: int = 8  # rounds of one turn that may call MCP tools; the one after answers


@dataclass
class Budgets:
    """Bytes each cache that grows with traffic may hold; set in ``settings.json`` under ``"budgets"``."""

    prompt_cache_mib: int = 2048  # RAM for cached prompt prefixes moved out of the KV cache
    stored_state_mib: int = 2048  # KV states kept with stored responses, further bounded by free disk
    grammar_cache_mib: int = 256  # compiled grammars kept for reuse
    # the response database file in all (responses and KV states); 0: no cap but the disk. Past it
    # storing answers 507 storage_full, as on a full disk (a shared disk's quota; tests use it too)
    stored_file_mib: int = 0
    # `studiolo log stream` events not read yet, all readers together (a
    # reader that falls behind loses its oldest ones); a model input event carries the whole prompt
    log_queue_mib: int = 64


def _overridden(section: str, value):
    """``value`` with the fields named in ``settings.json``'s ``section``; unknown names are an error."""
    try:
        overrides = json.loads(settings_file().read_text()).get(section, {})
    except FileNotFoundError:
        return value
    except (OSError, ValueError, AttributeError) as exc:
        raise ValueError(f"{settings_file()} is not a JSON object: {exc}") from exc
    known = {f.name for f in fields(value)}
    for name, number in overrides.items():
        if name not in known or not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise ValueError(f"{settings_file()}: '{section}.{name}' is not a known non-negative integer setting")
        setattr(value, name, number)
    return value


def _top_level(key: str, default):
    """A top-level key of ``settings.json``, read on each call (edits apply to the next request)."""
    try:
        document = json.loads(settings_file().read_text())
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as exc:
        raise ValueError(f"{settings_file()} is not a JSON object: {exc}") from exc
    if not isinstance(document, dict):
        raise ValueError(f"{settings_file()} is not a JSON object")
    return document.get(key, default)


def allow_per_request_mcp() -> bool:
    """LM Studio's "Allow per-request MCPs": ``"allow_per_request_mcp": true`` in ``settings.json`` lets
    a ``/api/v1/chat`` request name remote MCP servers for the server to call (off by default: the
    server then makes HTTP requests where a client says)."""
    return _top_level("allow_per_request_mcp", False) is True


def allow_mcp_json() -> bool:
    """LM Studio's "Allow calling servers from mcp.json": ``"allow_mcp_json": true`` in ``settings.json``
    lets a request name the servers of ``STUDIOLO_HOME/mcp.json`` (``"mcp/<name>"``). Off by default;
    honoured only when the server requires auth (service/mcp_integrations.py), as in LM Studio: those
    servers are programs of this machine's user."""
    return _top_level("allow_mcp_json", False) is True


def mcp_allowed_hosts() -> tuple[str, ...]:
    """Hosts (``"host"`` or ``"host:port"``; ``"*"``: any) that per-request MCP servers may be on:
    ``"mcp_allowed_hosts"`` in ``settings.json``. Absent: loopback only (the server makes the requests,
    so a client could otherwise point it at any machine of its network)."""
    hosts = _top_level("mcp_allowed_hosts", [])
    if not isinstance(hosts, list) or not all(isinstance(host, str) for host in hosts):
        raise ValueError(f"{settings_file()}: 'mcp_allowed_hosts' must be a list of host names")
    return tuple(host.strip().lower() for host in hosts if host.strip())


def mcp_json_file() -> Path:
    """MCP servers in the Cursor / LM Studio notation (service/mcp_json.py)."""
    return studiolo_home() / "mcp.json"


def load_limits() -> RequestLimits:
    return _overridden("limits", RequestLimits())


def load_budgets() -> Budgets:
    return _overridden("budgets", Budgets())


@dataclass
class ServerSettings:
    host: str = DEFAULT_BIND
    port: int = DEFAULT_PORT
    cors: bool = False
    jit_loading: bool = True
    auto_evict: bool = True  # at most one JIT-loaded model at a time
    engine: EngineSettings = field(default_factory=EngineSettings)
    limits: RequestLimits = field(default_factory=load_limits)
    budgets: Budgets = field(default_factory=load_budgets)
    # where /v1/chat/completions puts a reasoning model's reasoning (docs/API.md "Reasoning"), as LM
    # Studio's developer setting: "reasoning_content", "reasoning" (the field gpt-oss clients read),
    # or "content" (left in the content as <think>...</think>)
    reasoning_output: str = "reasoning_content"
    # hosts ("host" or "host:port") image URLs may be fetched from; empty: remote image URLs are refused
    image_url_hosts: tuple[str, ...] = ()
    # seconds a just-in-time loaded model may stay idle before it unloads (a request's ttl wins);
    # None: never. LM Studio's default is an hour
    jit_ttl: float | None = 3600.0
    # model keys loaded when the server starts (no idle TTL): /ready answers 503 until they are
    preload_models: tuple[str, ...] = ()
    # serve HTTPS with this certificate chain and key (PEM files), both or neither
    tls_cert: str | None = None
    tls_key: str | None = None
    # a random name for this server process, on /health and in server.json: the command line checks
    # that the server answering on a port is the one it started (not the pid: an internal)
    instance_id: str = field(default_factory=lambda: secrets.token_hex(16))
    # every route but /health needs an API token with the route's permission (docs/SECURITY.md)
    require_auth: bool = False
    # serve beyond loopback without require_auth (refused otherwise)
    insecure_no_auth: bool = False
    # origins whose pages may call the server ("https://app.example"; api/browser.py); any turns CORS on
    cors_origins: tuple[str, ...] = ()
    # Host names answered besides the loopback ones (api/hosts.py: the DNS rebinding check)
    allowed_hosts: tuple[str, ...] = ()
