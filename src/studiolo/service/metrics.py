"""What ``GET /metrics`` reports, in Prometheus' terms (prometheus_client).

Two kinds of figures:

- state that already exists in the server (loaded models, their running and queued sequences,
  KV cells in use, loads and unloads counted by the manager) is read when Prometheus scrapes, by
  ``LiveState``, a custom collector: nothing is kept twice and nothing can drift;
- events that leave no state behind (a request answered, a choice's tokens and timings, its drafts)
  are counted where they happen, through the few methods of ``ServerMetrics``.

Each server has its own registry (not prometheus_client's global one), so several servers, or
several apps in one test process, never share or clash over metrics. Labels are bounded: a
request's route is its template (``/api/v1/chats/{chat_id}``, not the id), models are catalog keys.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from studiolo.engine.engine import Engine
from studiolo.engine.speculation import DraftStats
from studiolo.models.manager import ModelManager

PREFIX = "studiolo"
# a first token comes from a prefill: milliseconds for a short cached prompt, a minute for a long one
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# each later token: a few ms on a small model alone, hundreds of ms for a large one in a full batch
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class ServerMetrics:
    """One server's registry: the event counters below, and ``LiveState`` over the manager."""

    def __init__(self, manager: ModelManager):
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(f"{PREFIX}_http_requests", "HTTP requests answered, by route template and status",
                                ["method", "route", "status"], registry=registry)
        self.request_seconds = Histogram(f"{PREFIX}_http_request_duration_seconds",
                                         "From a request's arrival to the end of its answer (a stream's last byte)",
                                         ["method", "route"], buckets=REQUEST_BUCKETS, registry=registry)
        self.prompt_tokens = Counter(f"{PREFIX}_prompt_tokens", "Prompt tokens of finished generations (cached "
                                     "ones included)", ["model"], registry=registry)
        self.completion_tokens = Counter(f"{PREFIX}_completion_tokens", "Tokens generated", ["model"],
                                         registry=registry)
        self.time_to_first_token = Histogram(f"{PREFIX}_time_to_first_token_seconds",
                                             "From a request's sequences reaching the engine to its choice's first "
                                             "token: the wait for a slot and the prefill", ["model"],
                                             buckets=TTFT_BUCKETS, registry=registry)
        self.time_per_token = Histogram(f"{PREFIX}_time_per_output_token_seconds",
                                        "Mean time between a choice's tokens after the first, one sample per choice",
                                        ["model"], buckets=TOKEN_BUCKETS, registry=registry)
        self.drafted = Counter(f"{PREFIX}_speculative_drafted_tokens", "Draft tokens proposed by speculative "
                               "decoding (a draft model, n-grams or a prediction)", ["model"], registry=registry)
        self.accepted = Counter(f"{PREFIX}_speculative_accepted_tokens", "Draft tokens the model produced too",
                                ["model"], registry=registry)
        registry.register(LiveState(manager))

    def request_done(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.request_seconds.labels(method, route).observe(seconds)

    def choice_finished(self, model: str, prompt_tokens: int, completion_tokens: int, first_token_seconds: float,
                        decode_seconds: float, drafts: DraftStats | None) -> None:
        """One choice ended: its tokens (prompt tokens once per prompt: 0 for a prompt's later choices)."""
        self.prompt_tokens.labels(model).inc(prompt_tokens)
        self.completion_tokens.labels(model).inc(completion_tokens)
        if completion_tokens > 0:
            self.time_to_first_token.labels(model).observe(max(0.0, first_token_seconds))
        if completion_tokens > 1:
            self.time_per_token.labels(model).observe(decode_seconds / (completion_tokens - 1))
        if drafts is not None:
            self.drafted.labels(model).inc(drafts.drafted)
            self.accepted.labels(model).inc(drafts.accepted)

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)


class LiveState(Collector):
    """Loaded models and their engines, read at scrape time (on the event loop, where the manager
    changes them; engine figures are snapshots of the compute thread's state, at most a step old)."""

    def __init__(self, manager: ModelManager):
        self._manager = manager

    def describe(self) -> list[Metric]:
        return []  # families are built at collect time; an empty describe keeps the registry from calling it

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "instance"]
        loaded = GaugeMetricFamily(f"{PREFIX}_loaded_instances", "Loaded model instances", labels=["model"])
        running = GaugeMetricFamily(f"{PREFIX}_running_sequences", "Sequences holding a KV slot", labels=labels)
        queued = GaugeMetricFamily(f"{PREFIX}_queued_sequences", "Sequences waiting for a slot", labels=labels)
        cells = GaugeMetricFamily(f"{PREFIX}_kv_cells_used", "KV cache cells the slots' tokens hold (cells "
                                  "shared by a common prefix count once per slot)", labels=labels)
        capacity = GaugeMetricFamily(f"{PREFIX}_kv_cells", "KV cache cells of the instance (slots x context)",
                                     labels=labels)
        per_model: dict[str, int] = {}
        for instance in self._manager.loaded():
            names = [instance.key, instance.id]
            per_model[instance.key] = per_model.get(instance.key, 0) + 1
            now_running, now_queued = instance.engine.request_counts()
            running.add_metric(names, now_running)
            queued.add_metric(names, now_queued)
            engine = instance.engine
            if isinstance(engine, Engine):
                cells.add_metric(names, sum(len(slot.tokens) for slot in list(engine.slots.slots)))
                capacity.add_metric(names, engine.parallel * engine.context_length)
        for key, count in per_model.items():
            loaded.add_metric([key], count)
        yield from (loaded, running, queued, cells, capacity)
        yield from self._load_counts()

    def _load_counts(self) -> Iterator[Metric]:
        loads = CounterMetricFamily(f"{PREFIX}_model_loads", "Model instances loaded", labels=["model"])
        for key, count in self._manager.load_counts.items():
            loads.add_metric([key], count)
        unloads = CounterMetricFamily(f"{PREFIX}_model_unloads", "Model instances unloaded, by why: request "
                                      "(an unload call), auto_evict (a JIT load made room), ttl (idle)",
                                      labels=["model", "reason"])
        for (key, reason), count in self._manager.unload_counts.items():
            unloads.add_metric([key, reason], count)
        yield loads
        yield unloads
