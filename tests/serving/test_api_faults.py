"""Out-of-memory answers 503 for that request only; size budgets are refused before any model work."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from service.models.loaded import LoadedModel
from tests.serving.conftest import oom_when, patched_forward
from tests.test_api_generate import assert_error

MARKED = "Café, naïve, 東京"


def model(client: TestClient) -> LoadedModel:
    lm: LoadedModel = client.app.state.registry.get("tiny")  # type: ignore[attr-defined]
    return lm


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
        MemoryError(),
    ],
    ids=["device", "cpu-allocator", "host"],
)
def test_oom_is_503_for_that_request_and_the_next_one_works(
    serving_client: Callable[..., TestClient], error: BaseException
) -> None:
    client = serving_client()
    lm = model(client)
    marked = lm.tokenizer(MARKED)["input_ids"]

    def wrapper(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if kwargs["input_ids"].shape[-1] > 1 and kwargs["input_ids"][0].tolist() == marked:
            raise error
        return forward(*args, **kwargs)

    with patched_forward(lm, wrapper):
        response = client.post("/generate", json={"prompt": MARKED, "max_new_tokens": 4})
        err = assert_error(response, 503, "out_of_memory")
        assert "memory" in err["message"] and response.headers["retry-after"]
        assert client.post("/generate", json={"prompt": "Hello", "max_new_tokens": 4}).status_code == 200
    assert client.post("/generate", json={"prompt": MARKED, "max_new_tokens": 4}).status_code == 200


def test_oom_in_a_stream_is_an_error_event_and_the_next_stream_works(
    serving_client: Callable[..., TestClient],
) -> None:
    client = serving_client()
    armed = [True]

    def once(kwargs: dict[str, Any]) -> bool:
        hit = armed[0] and kwargs["input_ids"].shape[-1] == 1
        armed[0] = armed[0] and not hit
        return bool(hit)

    request = {"prompt": "Hello", "max_new_tokens": 6, "stream": True}
    with patched_forward(model(client), oom_when(once)):
        with client.stream("POST", "/generate", json=request) as response:
            failed = "".join(response.iter_text())
        with client.stream("POST", "/generate", json=request) as response:
            ok = "".join(response.iter_text())
    assert "event: error" in failed and "out_of_memory" in failed
    assert "event: done" in ok


def test_budgets_are_checked_before_any_model_work(serving_client: Callable[..., TestClient]) -> None:
    client = serving_client(max_prompt_tokens=8, max_new_tokens_limit=10)
    calls: list[int] = []

    def count(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return forward(*args, **kwargs)

    with patched_forward(model(client), count):
        long_prompt = client.post(
            "/generate", json={"prompt": "The Eiffel Tower was designed by Gustave Eiffel", "max_new_tokens": 4}
        )
        err = assert_error(long_prompt, 422, "budget_exceeded", "prompt")
        assert "limit of 8" in err["message"]
        too_many = client.post("/generate", json={"prompt": "Hi", "max_new_tokens": 11})
        assert_error(too_many, 422, "invalid_request", "max_new_tokens")
        streamed = client.post("/generate", json={"prompt": "Hi", "max_new_tokens": 11, "stream": True})
        assert_error(streamed, 422, "invalid_request", "max_new_tokens")
    assert calls == []
    assert client.app.state.serving.admission.load("tiny") == (0, 0)  # type: ignore[attr-defined]
