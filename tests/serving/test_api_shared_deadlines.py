"""Identical requests sharing one computation each keep their own deadline (issue 10)."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient

from service.models.loaded import LoadedModel
from tests.serving.conftest import patched_forward, wait_for
from tests.test_api_generate import assert_error

BODY: dict[str, Any] = {"prompt": "Hello", "max_new_tokens": 40, "temperature": 0.0}


def test_impatient_waiter_times_out_alone_and_the_patient_one_gets_the_answer(
    serving_client: Callable[..., TestClient],
) -> None:
    """Before: the shared work took the first caller's deadline, so both got 504 at the first's timeout."""
    client = serving_client(step_delay_s=0.02)
    lm: LoadedModel = client.app.state.registry.get("tiny")  # type: ignore[attr-defined]
    body = BODY
    calls: list[float] = []

    def count(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        calls.append(time.monotonic())
        return forward(*args, **kwargs)

    with patched_forward(lm, count), concurrent.futures.ThreadPoolExecutor(2) as pool:
        impatient = pool.submit(client.post, "/generate", json=body, headers={"X-Request-Timeout-Ms": "300"})
        wait_for(lambda: len(calls) >= 2, what="the shared generation to start")
        patient = pool.submit(client.post, "/generate", json=body)
        assert_error(impatient.result(), 504, "timeout")
        response = patient.result()
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] > 0
    # One computation served both: the patient request joined it rather than starting its own.
    assert response.headers["X-Cache"] == "miss"
    assert len(calls) <= body["max_new_tokens"] + 1
