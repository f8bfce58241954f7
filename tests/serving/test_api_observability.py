"""Metrics, request ids, JSON logs and tracing through the API."""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from service.observability.logging import JsonFormatter, RequestIdFilter, request_id_var
from service.settings import Settings

REQUEST = {"prompt": "Hello", "max_new_tokens": 5, "temperature": 1.0, "seed": 3}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def counters() -> dict[str, float]:
    return {
        "ok": sample("glassbox_requests_total", endpoint="/generate", status="200"),
        "latency": sample("glassbox_request_duration_seconds_count", endpoint="/generate", status="200"),
        "queue": sample("glassbox_queue_wait_seconds_count", model="tiny"),
        "ttft": sample("glassbox_time_to_first_token_seconds_count", model="tiny"),
        "tpot": sample("glassbox_time_per_output_token_seconds_count", model="tiny"),
        "prompt": sample("glassbox_tokens_total", model="tiny", kind="prompt"),
        "completion": sample("glassbox_tokens_total", model="tiny", kind="completion"),
        "validation": sample("glassbox_request_failures_total", endpoint="/generate", reason="validation"),
    }


def test_metrics_cover_requests_queue_tokens_latency_and_failures(app_client: TestClient) -> None:
    before = counters()
    body = app_client.post("/generate", json=REQUEST).json()
    app_client.post("/generate", json={"prompt": ""})
    after = counters()
    assert after["ok"] == before["ok"] + 1 and after["latency"] == before["latency"] + 1
    assert after["queue"] == before["queue"] + 1 and after["ttft"] == before["ttft"] + 1
    assert after["prompt"] == before["prompt"] + body["usage"]["prompt_tokens"]
    assert after["completion"] == before["completion"] + body["usage"]["completion_tokens"]
    if body["usage"]["completion_tokens"] > 1:
        assert after["tpot"] == before["tpot"] + 1
    assert after["validation"] == before["validation"] + 1
    text = app_client.get("/metrics").text
    for name in (
        'glassbox_queue_depth{model="tiny"}',
        'glassbox_inflight_requests{model="tiny"}',
        "glassbox_batch_size_bucket",
        "glassbox_cache_misses_total",
    ):
        assert name in text, name
    assert re.search(r'glassbox_model_info\{[^}]*model="tiny"[^}]*\} 1\.0', text)


def test_unknown_paths_share_one_metrics_label(app_client: TestClient) -> None:
    before = sample("glassbox_requests_total", endpoint="unmatched", status="404")
    app_client.get("/no/such/path/123")
    app_client.get("/another-unknown")
    assert sample("glassbox_requests_total", endpoint="unmatched", status="404") == before + 2


def test_request_id_is_echoed_or_generated(app_client: TestClient) -> None:
    given = app_client.post("/generate", json=REQUEST, headers={"X-Request-Id": "client-id.42"})
    assert given.headers["x-request-id"] == "client-id.42"
    fresh = app_client.get("/healthz").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", fresh)
    unsafe = app_client.get("/healthz", headers={"X-Request-Id": "bad id\twith spaces" + "x" * 200})
    assert re.fullmatch(r"[0-9a-f]{32}", unsafe.headers["x-request-id"])
    assert app_client.get("/nope").headers["x-request-id"]  # errors carry it too


def test_access_log_is_json_with_the_request_id(app_client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="glassbox.access"):
        app_client.post("/generate", json=REQUEST, headers={"X-Request-Id": "log-me-1"})
    [record] = [r for r in caplog.records if r.name == "glassbox.access" and getattr(r, "path", "") == "/generate"]
    entry = json.loads(JsonFormatter().format(record))
    assert entry["request_id"] == "log-me-1" and entry["status"] == 200 and entry["method"] == "POST"
    assert entry["duration_ms"] > 0 and entry["level"] == "info" and entry["logger"] == "glassbox.access"


def test_log_records_inside_a_request_carry_its_id() -> None:
    record = logging.LogRecord("service.x", logging.WARNING, __file__, 1, "inside %s", ("work",), None)
    token = request_id_var.set("req-7")
    try:
        RequestIdFilter().filter(record)
        entry = json.loads(JsonFormatter().format(record))
    finally:
        request_id_var.reset(token)
    assert entry["message"] == "inside work" and entry["request_id"] == "req-7" and entry["level"] == "warning"


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()

    def provider(settings: Settings) -> TracerProvider:
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        return tracer_provider

    monkeypatch.setattr("service.api.app.build_tracer_provider", provider)
    yield exporter


def test_tracing_continues_the_callers_trace_with_child_spans(
    serving_client: Callable[..., TestClient], spans: InMemorySpanExporter
) -> None:
    client = serving_client()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    assert client.post("/generate", json=REQUEST, headers=headers).status_code == 200
    finished = [s for s in spans.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id]
    names = {s.name for s in finished}
    assert {"POST /generate", "glassbox.admission", "glassbox.tokenize", "glassbox.generate"} <= names
    [server] = [s for s in finished if s.name == "POST /generate"]
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 200
    assert server.attributes["http.route"] == "/generate"


def test_tracing_to_a_hung_collector_costs_no_latency(serving_client: Callable[..., TestClient]) -> None:
    with socket.socket() as hung:  # accepts connections (kernel backlog) and never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        endpoint = f"http://127.0.0.1:{hung.getsockname()[1]}/v1/traces"
        client = serving_client(otlp_endpoint=endpoint)
        started = time.perf_counter()
        for i in range(30):
            assert client.post("/generate", json={**REQUEST, "seed": i, "max_new_tokens": 2}).status_code == 200
        elapsed = time.perf_counter() - started
        time.sleep(1.5)  # at least one export attempt is now hanging on the collector
        started = time.perf_counter()
        assert client.get("/healthz").status_code == 200
        probe = time.perf_counter() - started
    assert elapsed < 10, f"30 small requests took {elapsed:.1f} s with an unreachable collector"
    assert probe < 0.5
