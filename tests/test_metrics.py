"""``GET /metrics``: Prometheus' text format, parsed with prometheus_client's own parser, moving with
real traffic to the real server (SmolLM2, greedy). Other tests share the server, so each test
compares a scrape after its requests with one before them."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from studiolo.config import EngineSettings
from studiolo.models.catalog import Catalog
from studiolo.models.manager import ModelManager
from studiolo.service.metrics import ServerMetrics
from tests.conftest import GREEDY, SMOLLM

Samples = dict[tuple[str, frozenset], float]
QUESTION = [{"role": "user", "content": "Name three colors."}]


def parse(text: str) -> Samples:
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def scrape(http: httpx.Client) -> Samples:
    response = http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_a_chat_completion_moves_the_request_token_and_latency_metrics(http, client):
    client.chat.completions.create(model=SMOLLM, messages=QUESTION, max_tokens=1)  # loaded: no load in the TTFT
    before = scrape(http)
    result = client.chat.completions.create(model=SMOLLM, messages=QUESTION, max_tokens=8, temperature=0,
                                            extra_body=GREEDY)
    after = scrape(http)
    usage = result.usage
    assert usage.completion_tokens == 8 and usage.prompt_tokens > 0
    assert moved(before, after, "studiolo_prompt_tokens_total", model=SMOLLM) == usage.prompt_tokens
    assert moved(before, after, "studiolo_completion_tokens_total", model=SMOLLM) == usage.completion_tokens
    chat_route = {"method": "POST", "route": "/v1/chat/completions", "status": "200"}
    assert moved(before, after, "studiolo_http_requests_total", **chat_route) == 1
    assert moved(before, after, "studiolo_time_to_first_token_seconds_count", model=SMOLLM) == 1
    assert moved(before, after, "studiolo_time_per_output_token_seconds_count", model=SMOLLM) == 1
    assert 0 < moved(before, after, "studiolo_time_to_first_token_seconds_sum", model=SMOLLM) < 60
    # the scrape before this one is counted too, as a GET of /metrics
    assert moved(before, after, "studiolo_http_requests_total", method="GET", route="/metrics", status="200") == 1
    instance = {"model": SMOLLM, "instance": SMOLLM}
    assert value(after, "studiolo_loaded_instances", model=SMOLLM) == 1
    assert value(after, "studiolo_running_sequences", **instance) == 0
    assert value(after, "studiolo_queued_sequences", **instance) == 0
    settings = EngineSettings()
    assert value(after, "studiolo_kv_cells", **instance) == settings.parallel * settings.context_length
    # the finished chat's prompt and output stay in its slot for the next turn to reuse
    assert value(after, "studiolo_kv_cells_used", **instance) >= usage.prompt_tokens


def test_a_stream_is_counted_once_it_ends(http, client):
    before = scrape(http)
    stream = client.chat.completions.create(model=SMOLLM, messages=QUESTION, max_tokens=4, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    after = scrape(http)
    assert chunks[-1].usage.completion_tokens == 4
    chat_route = {"method": "POST", "route": "/v1/chat/completions", "status": "200"}
    assert moved(before, after, "studiolo_http_requests_total", **chat_route) == 1
    assert moved(before, after, "studiolo_completion_tokens_total", model=SMOLLM) == 4


def test_routes_are_labelled_by_their_template_never_the_raw_path(http):
    before = scrape(http)
    for response_id in ("resp_" + "a" * 32, "resp_" + "b" * 32):
        assert http.get(f"/v1/responses/{response_id}").status_code == 404
    assert http.get("/no/such/route/123").status_code == 404
    text = http.get("/metrics").text
    after = parse(text)
    template = {"method": "GET", "route": "/v1/responses/{response_id}", "status": "404"}
    assert moved(before, after, "studiolo_http_requests_total", **template) == 2
    assert moved(before, after, "studiolo_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert "resp_aaaa" not in text and "/no/such" not in text


def test_loads_and_unloads_are_counted_with_the_reason(http):
    before = scrape(http)
    loaded = http.post("/api/v1/models/load", json={"model": SMOLLM, "identifier": "metrics-probe"})
    assert loaded.status_code == 200, loaded.text
    during = scrape(http)
    assert http.post("/api/v1/models/unload", json={"instance_id": "metrics-probe"}).status_code == 200
    after = scrape(http)
    assert moved(before, after, "studiolo_model_loads_total", model=SMOLLM) == 1
    assert moved(before, after, "studiolo_model_unloads_total", model=SMOLLM, reason="request") == 1
    probe = {"model": SMOLLM, "instance": "metrics-probe"}
    assert value(during, "studiolo_kv_cells", **probe) > 0 and value(after, "studiolo_kv_cells", **probe) == 0


def test_speculative_drafts_and_acceptances_are_counted(http, client):
    plain = client.chat.completions.create(model=SMOLLM, messages=QUESTION, max_tokens=16, temperature=0,
                                           extra_body=GREEDY)
    before = scrape(http)
    # the greedy output itself as the predicted output: its drafts are accepted
    predicted = client.chat.completions.create(
        model=SMOLLM, messages=QUESTION, max_tokens=16, temperature=0, extra_body=GREEDY,
        prediction={"type": "content", "content": plain.choices[0].message.content})
    after = scrape(http)
    accepted = predicted.usage.completion_tokens_details.accepted_prediction_tokens
    assert accepted > 0
    assert moved(before, after, "studiolo_speculative_accepted_tokens_total", model=SMOLLM) == accepted
    assert moved(before, after, "studiolo_speculative_drafted_tokens_total", model=SMOLLM) >= accepted


def test_each_server_has_its_own_registry(tmp_path):
    """Two servers in one process (as tests build apps) count apart, and never clash on names."""
    first, second = (ServerMetrics(ModelManager(Catalog(tmp_path), EngineSettings())) for _ in range(2))
    first.request_done("GET", "/health", 200, 0.01)
    first.choice_finished("m", 5, 3, 0.2, 0.02, None)
    one, other = parse(first.exposition().decode()), parse(second.exposition().decode())
    labels = {"method": "GET", "route": "/health", "status": "200"}
    assert value(one, "studiolo_http_requests_total", **labels) == 1
    assert value(other, "studiolo_http_requests_total", **labels) == 0
    assert value(one, "studiolo_time_per_output_token_seconds_sum", model="m") == pytest.approx(0.01)
    assert value(one, "studiolo_prompt_tokens_total", model="m") == 5
