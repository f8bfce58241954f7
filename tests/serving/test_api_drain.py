"""Draining in-process: readiness fails at once, new work is refused, probes and metrics still answer."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

from tests.serving.conftest import in_thread, wait_for
from tests.test_api_generate import assert_error


def test_draining_fails_readiness_and_refuses_new_work(serving_client: Callable[..., TestClient]) -> None:
    client = serving_client(step_delay_s=0.02)
    serving = client.app.state.serving  # type: ignore[attr-defined]
    running, result = in_thread(lambda: client.post("/generate", json={"prompt": "Hello", "max_new_tokens": 40}))
    wait_for(lambda: serving.drain.inflight == 1, what="a request in flight")
    serving.drain.begin()
    assert not serving.drain.finished()
    ready = client.get("/readyz")
    assert_error(ready, 503, "shutting_down")
    refused = client.post("/generate", json={"prompt": "Hello", "max_new_tokens": 2})
    assert_error(refused, 503, "shutting_down")
    assert refused.headers["retry-after"] == "1"
    assert client.get("/healthz").status_code == 200 and client.get("/metrics").status_code == 200
    running.join(30)
    assert result[0].status_code == 200  # the in-flight request finished normally
    assert serving.drain.inflight == 0 and serving.drain.finished()
