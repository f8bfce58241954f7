"""Admission through the API: 429 past the queue, cache hits served while saturated, probes stay fast."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from service.usecases import generate as usecase
from tests.serving.conftest import in_thread, wait_for
from tests.test_api_generate import assert_error

SLOW = {"prompt": "Hello", "max_new_tokens": 60, "temperature": 1.0, "seed": 1}


def load(client: TestClient) -> tuple[int, int]:
    running, waiting = client.app.state.serving.admission.load("tiny")  # type: ignore[attr-defined]
    return running, waiting


def failures(reason: str) -> float:
    labels = {"endpoint": "/generate", "reason": reason}
    return REGISTRY.get_sample_value("glassbox_request_failures_total", labels) or 0.0


def test_overload_is_429_with_retry_after_then_work_resumes(serving_client: Callable[..., TestClient]) -> None:
    client = serving_client(step_delay_s=0.02, max_concurrency=1, max_queue=1)
    before = failures("overloaded")
    running, first = in_thread(lambda: client.post("/generate", json=SLOW))
    wait_for(lambda: load(client) == (1, 0), what="the first request to hold the slot")
    queued, second = in_thread(lambda: client.post("/generate", json={**SLOW, "seed": 2}))
    wait_for(lambda: load(client) == (1, 1), what="the second request to queue")
    response = client.post("/generate", json={**SLOW, "seed": 3})
    error = assert_error(response, 429, "overloaded")
    assert "1 running, 1 waiting" in error["message"]
    assert int(response.headers["retry-after"]) >= 1 and response.headers["x-request-id"]
    assert failures("overloaded") == before + 1
    running.join(30)
    queued.join(30)
    assert first[0].status_code == 200 and second[0].status_code == 200
    assert second[0].json()["timings"]["queue_ms"] > 0  # it waited for the slot
    assert client.post("/generate", json={**SLOW, "max_new_tokens": 2}).status_code == 200
    assert load(client) == (0, 0)


def test_cache_hits_are_served_while_the_model_is_saturated(serving_client: Callable[..., TestClient]) -> None:
    client = serving_client(step_delay_s=0.02, max_concurrency=1, max_queue=0)
    cached = {"prompt": "Glassbox explains", "max_new_tokens": 4}
    assert client.post("/generate", json=cached).headers["x-cache"] == "miss"
    busy, _ = in_thread(lambda: client.post("/generate", json=SLOW))
    wait_for(lambda: load(client) == (1, 0), what="the model to be saturated")
    hit = client.post("/generate", json=cached)
    assert hit.status_code == 200 and hit.headers["x-cache"] == "hit"
    assert_error(client.post("/generate", json={**cached, "max_new_tokens": 5}), 429, "overloaded")
    busy.join(30)


def test_streaming_request_holds_its_slot_until_the_stream_ends(serving_client: Callable[..., TestClient]) -> None:
    client = serving_client(step_delay_s=0.01, max_concurrency=1, max_queue=0)
    with client.stream("POST", "/generate", json={**SLOW, "max_new_tokens": 20, "stream": True}) as response:
        assert response.status_code == 200
        body = "".join(response.iter_text())
    assert "event: done" in body
    wait_for(lambda: load(client) == (0, 0), what="the stream's slot to be released")
    assert client.post("/generate", json={**SLOW, "max_new_tokens": 2}).status_code == 200


def test_healthz_stays_fast_while_the_model_is_busy(serving_client: Callable[..., TestClient]) -> None:
    client = serving_client(step_delay_s=0.05)
    busy, _ = in_thread(lambda: client.post("/generate", json={**SLOW, "max_new_tokens": 40}))
    wait_for(lambda: load(client)[0] == 1, what="generation to start")
    slowest = 0.0
    for _ in range(10):
        started = time.perf_counter()
        assert client.get("/healthz").status_code == 200
        slowest = max(slowest, time.perf_counter() - started)
    assert load(client)[0] == 1, "the model finished before the probes: the test proves nothing"
    assert slowest < 0.5, f"/healthz took {slowest:.3f} s while the model was busy"
    busy.join(30)


def test_explain_takes_a_slot_too(serving_client: Callable[..., TestClient]) -> None:
    client = serving_client(step_delay_s=0.02, max_concurrency=1, max_queue=0)
    body = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "target": "Paris."}
    assert client.post("/explain", json=body).status_code == 200
    busy, _ = in_thread(lambda: client.post("/generate", json=SLOW))
    wait_for(lambda: load(client) == (1, 0), what="the model to be saturated")
    assert_error(client.post("/explain", json={**body, "target": "Lyon."}), 429, "overloaded")  # not a cache hit
    busy.join(30)
    assert load(client) == (0, 0)


def test_the_slot_is_taken_before_tokenizing(
    serving_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = serving_client(step_delay_s=0.02, max_concurrency=1, max_queue=0)
    tokenized: list[str] = []
    real = usecase.build_prompt

    def counting(*args: Any, **kwargs: Any) -> Any:
        tokenized.append(kwargs.get("prompt") or "")
        return real(*args, **kwargs)

    monkeypatch.setattr(usecase, "build_prompt", counting)
    busy, _ = in_thread(lambda: client.post("/generate", json=SLOW))
    wait_for(lambda: load(client) == (1, 0), what="the model to be saturated")
    refused = client.post("/generate", json={"prompt": "never tokenized " * 1000, "max_new_tokens": 4})
    assert_error(refused, 429, "overloaded")
    assert all("never tokenized" not in text for text in tokenized)
    busy.join(30)
