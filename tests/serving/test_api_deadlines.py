"""Deadlines through the API: 504 on expiry, the model stops, the client may only lower the limit."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.models.loaded import LoadedModel
from tests.serving.conftest import patched_forward, wait_for
from tests.test_api_generate import assert_error

LONG = {"prompt": "Hello", "max_new_tokens": 200, "temperature": 1.0, "seed": 1}


def model(client: TestClient) -> LoadedModel:
    lm: LoadedModel = client.app.state.registry.get("tiny")  # type: ignore[attr-defined]
    return lm


def test_timeout_header_gives_504_and_the_model_stops(serving_client: Callable[..., TestClient]) -> None:
    client = serving_client(step_delay_s=0.02)
    calls: list[float] = []

    def count(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        calls.append(time.monotonic())
        return forward(*args, **kwargs)

    with patched_forward(model(client), count):
        response = client.post("/generate", json=LONG, headers={"X-Request-Timeout-Ms": "300"})
        error = assert_error(response, 504, "timeout")
        assert "0.3 s" in error["message"]
        ended = time.monotonic()
        batcher = client.app.state.serving.scheduler(model(client)).batcher  # type: ignore[attr-defined]
        wait_for(lambda: batcher.running == 0, what="the row to leave the batch")
        time.sleep(0.1)
    assert 0 < len(calls) < 100  # it started, and stopped long before 200 tokens
    assert not [t for t in calls if t > ended + 0.05], "the model kept generating after the 504"


def test_client_cannot_raise_the_server_deadline(serving_client: Callable[..., TestClient]) -> None:
    client = serving_client(step_delay_s=0.02, request_timeout_s=0.3)
    response = client.post("/generate", json=LONG, headers={"X-Request-Timeout-Ms": "600000"})
    assert_error(response, 504, "timeout")


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1.5"])
def test_invalid_timeout_header_is_422(app_client: TestClient, value: str) -> None:
    response = app_client.post("/generate", json={"prompt": "x"}, headers={"X-Request-Timeout-Ms": value})
    assert_error(response, 422, "invalid_request", "X-Request-Timeout-Ms")


def test_stream_past_its_deadline_ends_with_a_timeout_error_event(serving_client: Callable[..., TestClient]) -> None:
    # 2 s: room for the first tokens on a busy machine; 200 tokens at >= 50 ms each cannot finish in it.
    client = serving_client(step_delay_s=0.05)
    request = {**LONG, "stream": True}
    with client.stream("POST", "/generate", json=request, headers={"X-Request-Timeout-Ms": "2000"}) as response:
        assert response.status_code == 200
        raw = "".join(response.iter_text()).replace("\r\n", "\n")
    blocks = [block for block in raw.split("\n\n") if block.strip()]
    last = dict(line.split(": ", 1) for line in blocks[-1].splitlines() if ": " in line)
    assert last["event"] == "error" and json.loads(last["data"])["error"]["type"] == "timeout"
    assert any("event: token" in block for block in blocks)  # tokens flowed before the deadline


def test_openapi_documents_the_timeout_header_and_serving_statuses(app_client: TestClient) -> None:
    operation = app_client.get("/openapi.json").json()["paths"]["/generate"]["post"]
    headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
    assert "X-Request-Timeout-Ms" in headers
    assert {"401", "429", "503", "504"} <= set(operation["responses"])
