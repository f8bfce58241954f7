"""Every error status reaches the official client as its own exception class, and the client retries only
what a retry can fix (counted on the server, from the request metrics)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import openai
import pytest
import torch
from fastapi.testclient import TestClient
from openai.types.chat import ChatCompletion
from prometheus_client import REGISTRY

from service.models.loaded import LoadedModel
from tests.openai.conftest import CHAT, openai_client
from tests.serving.conftest import in_thread, oom_when, patched_forward, wait_for

ROUTE = "/v1/chat/completions"
JSON = {"Content-Type": "application/json"}
GREEDY = {"model": "tiny", "messages": CHAT, "max_tokens": 4, "temperature": 0}


def served(status: int) -> float:
    """Answers with ``status`` on the route, or before routing (auth, body limit and drain are middleware)."""
    total = 0.0
    for route in (ROUTE, "unmatched"):
        labels = {"endpoint": route, "status": str(status)}
        total += REGISTRY.get_sample_value("glassbox_requests_total", labels) or 0.0
    return total


def attempts(status: int, call: Callable[[], Any], error: type[Exception]) -> tuple[int, Exception]:
    """Run ``call`` (which must raise ``error``) and count the requests the server answered with ``status``."""
    before = served(status)
    with pytest.raises(error) as raised:
        call()
    return int(served(status) - before), raised.value


def lm_of(client: TestClient) -> LoadedModel:
    lm: LoadedModel = client.app.state.registry.get("tiny")  # type: ignore[attr-defined]
    return lm


def test_malformed_json_is_bad_request_not_retried(app_client: TestClient) -> None:
    oai = openai_client(app_client, max_retries=2)
    n, exc = attempts(
        400,
        lambda: oai.post(
            ROUTE.removeprefix("/v1"), cast_to=ChatCompletion, content=b"{not json", options={"headers": JSON}
        ),
        openai.BadRequestError,
    )
    assert n == 1 and isinstance(exc, openai.BadRequestError) and exc.code == "json_invalid"


def test_invalid_field_is_unprocessable_with_param(app_client: TestClient) -> None:
    oai = openai_client(app_client, max_retries=2)
    n, exc = attempts(
        422, lambda: oai.chat.completions.create(**{**GREEDY, "temperature": 5}), openai.UnprocessableEntityError
    )
    assert n == 1 and isinstance(exc, openai.APIStatusError)
    assert exc.body["param"] == "temperature" and exc.type == "invalid_request"  # type: ignore[index]


def test_unknown_model_is_not_found(app_client: TestClient) -> None:
    oai = openai_client(app_client, max_retries=2)
    n, exc = attempts(404, lambda: oai.chat.completions.create(**{**GREEDY, "model": "nope"}), openai.NotFoundError)
    assert n == 1 and "tiny" in str(exc) and exc.code is None and exc.type == "model_not_found"  # type: ignore[attr-defined]
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("nope")


def test_api_key_is_the_bearer_key(serving_client: Callable[..., TestClient]) -> None:
    client = serving_client(api_keys=hashlib.sha256(b"right-key").hexdigest())
    good = openai_client(client, api_key="right-key")
    assert [m.id for m in good.models.list()] == ["tiny"]
    bad = openai_client(client, api_key="wrong-key", max_retries=2)
    n, _ = attempts(401, lambda: bad.chat.completions.create(**GREEDY), openai.AuthenticationError)
    assert n == 1


def test_body_over_the_limit_is_413_not_retried(serving_client: Callable[..., TestClient]) -> None:
    client = serving_client(max_body_bytes=2048)
    oai = openai_client(client, max_retries=2)
    big = [{"role": "user", "content": "x" * 5000}]
    before = served(413)
    with pytest.raises(openai.APIStatusError) as raised:
        oai.chat.completions.create(**{**GREEDY, "messages": big})
    assert raised.value.status_code == 413
    assert served(413) - before == 1


def test_overload_is_rate_limit_with_retry_after_and_retried(serving_client: Callable[..., TestClient]) -> None:
    client = serving_client(step_delay_s=0.05, max_concurrency=1, max_queue=0)
    hold = {"model": "tiny", "messages": CHAT, "max_tokens": 60, "temperature": 1.0, "seed": 1}
    thread, _ = in_thread(lambda: client.post(ROUTE, json=hold))
    wait_for(lambda: client.app.state.serving.admission.load("tiny")[0] == 1, what="the slot to be taken")  # type: ignore[attr-defined]
    oai = openai_client(client, max_retries=1)
    raw = client.post(ROUTE, json=GREEDY)
    assert raw.status_code == 429 and int(raw.headers["retry-after"]) >= 1
    n, exc = attempts(429, lambda: oai.chat.completions.create(**GREEDY), openai.RateLimitError)
    assert n == 2 and isinstance(exc, openai.RateLimitError)  # one retry, as configured
    thread.join(30)


def test_not_ready_is_503_and_retried(serving_client: Callable[..., TestClient]) -> None:
    client = serving_client()
    client.app.state.serving.drain.begin()  # type: ignore[attr-defined]
    oai = openai_client(client, max_retries=2)
    before = served(503)
    with pytest.raises(openai.InternalServerError) as raised:
        oai.chat.completions.create(**GREEDY)
    assert raised.value.status_code == 503 and "x-should-retry" not in raised.value.response.headers
    assert served(503) - before == 3  # the first try and two retries


def test_out_of_memory_is_503_and_not_retried(serving_client: Callable[..., TestClient]) -> None:
    client = serving_client()
    oai = openai_client(client, max_retries=2)
    with patched_forward(lm_of(client), oom_when(lambda kwargs: True)):
        n, exc = attempts(503, lambda: oai.chat.completions.create(**GREEDY), openai.InternalServerError)
    assert n == 1 and isinstance(exc, openai.APIStatusError)
    assert exc.response.headers["x-should-retry"] == "false" and exc.type == "out_of_memory"  # type: ignore[attr-defined]


def test_deadline_is_504_and_not_retried(serving_client: Callable[..., TestClient]) -> None:
    client = serving_client(step_delay_s=0.05)
    oai = openai_client(client, max_retries=2)
    slow = {**GREEDY, "max_tokens": 50, "extra_headers": {"X-Request-Timeout-Ms": "200"}}
    n, exc = attempts(504, lambda: oai.chat.completions.create(**slow), openai.InternalServerError)
    assert n == 1 and isinstance(exc, openai.APIStatusError)
    assert exc.status_code == 504 and exc.response.headers["x-should-retry"] == "false"


def test_error_mid_stream_is_an_error_payload_then_done(serving_client: Callable[..., TestClient]) -> None:
    client = serving_client()
    armed = [True]

    def once(kwargs: dict[str, Any]) -> bool:  # the first decode step (one new token) runs out of memory
        hit = armed[0] and kwargs["input_ids"].shape[-1] == 1
        armed[0] = armed[0] and not hit
        return bool(hit)

    with patched_forward(lm_of(client), oom_when(once)):
        with client.stream("POST", ROUTE, json={**GREEDY, "stream": True}) as response:
            assert response.status_code == 200
            data = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data:")]
        assert data[-1] == "[DONE]" and json.loads(data[-2])["error"]["type"] == "out_of_memory"
        armed[0] = True
        oai = openai_client(client)
        with pytest.raises(openai.APIError) as raised:
            list(oai.chat.completions.create(**GREEDY, stream=True))  # type: ignore[call-overload]
        assert "memory" in raised.value.message


def test_stream_errors_before_the_first_token_keep_their_status(app_client: TestClient) -> None:
    oai = openai_client(app_client)
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(**{**GREEDY, "model": "nope"}, stream=True)  # type: ignore[call-overload]


_ = torch  # the OOM injection raises torch's own error type
