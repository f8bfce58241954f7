"""/explain through the cache and /generate's `explain` field, on the tiny model."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.api.routes import generate as generate_route
from service.settings import Settings
from service.usecases import explain_cached
from tests.conftest import wait_ready

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def client(tiny_settings: Settings) -> Iterator[TestClient]:
    """A fresh app (and so an empty in-process cache) per test."""
    with TestClient(create_app(tiny_settings)) as client:
        wait_ready(client)
        yield client


def test_generate_with_explain_explains_exactly_what_it_generated(client: TestClient) -> None:
    request = {"messages": CHAT, "max_new_tokens": 5, "explain": {"methods": ["saliency", "attention"]}}
    body = client.post("/generate", json=request).json()
    explanation = body["explanation"]
    assert explanation["text"] == body["text"]
    assert [t["id"] for t in explanation["target_tokens"]] == [t["id"] for t in body["tokens"]]
    assert {"saliency", "attention"} <= set(explanation["methods"])
    assert "generate" not in explanation["provenance"]["timings_ms"]  # no second generation


def test_generate_explain_options_are_validated(client: TestClient) -> None:
    response = client.post("/generate", json={"prompt": "hi", "explain": {"methods": ["telepathy"]}})
    assert response.status_code == 422 and "explain" in response.json()["error"]["param"]


def test_generate_stream_with_explain_puts_it_in_done(client: TestClient) -> None:
    request = {
        "prompt": "Hello",
        "max_new_tokens": 4,
        "temperature": 1.0,
        "seed": 3,
        "stream": True,
        "explain": {"methods": ["input_x_gradient"]},
    }
    with client.stream("POST", "/generate", json=request) as response:
        raw = "".join(response.iter_text())
    done = [b for b in raw.replace("\r\n", "\n").split("\n\n") if b.startswith("event: done")]
    assert len(done) == 1
    final = json.loads(done[0].split("data: ", 1)[1])
    assert final["explanation"]["text"] == final["text"]


def test_explain_is_cached(client: TestClient) -> None:
    request = {"messages": CHAT, "target": " Paris.", "methods": ["saliency"]}
    first = client.post("/explain", json=request)
    second = client.post("/explain", json=request)
    assert first.status_code == 200 and first.headers["x-cache"] == "miss"
    assert second.headers["x-cache"] == "hit" and second.json()["cache"] == "hit"
    strip = lambda body: {k: v for k, v in body.items() if k != "cache"}  # noqa: E731
    assert strip(first.json()) == strip(second.json())


def test_explain_reuses_a_cached_generate(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def counting(real):  # type: ignore[no-untyped-def]
        async def count(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(1)
            return await real(*args, **kwargs)

        return count

    monkeypatch.setattr(explain_cached, "generate_admitted", counting(explain_cached.generate_admitted))  # /explain's
    monkeypatch.setattr(generate_route, "generate_once", counting(generate_route.generate_once))  # /generate's
    generated = client.post("/generate", json={"messages": CHAT, "max_new_tokens": 6})
    assert generated.headers["x-cache"] == "miss"
    explained = client.post("/explain", json={"messages": CHAT, "max_new_tokens": 6, "methods": ["saliency"]})
    body = explained.json()
    assert body["text"] == generated.json()["text"]
    assert [t["id"] for t in body["target_tokens"]] == [t["id"] for t in generated.json()["tokens"]]
    assert len(calls) == 1  # the /generate ran the model; /explain took its answer from the cache


def test_explain_generation_is_stored_for_generate(client: TestClient) -> None:
    client.post("/explain", json={"prompt": "Hello", "max_new_tokens": 4, "methods": ["saliency"]})
    assert client.post("/generate", json={"prompt": "Hello", "max_new_tokens": 4}).headers["x-cache"] == "hit"


def test_explain_unseeded_sampling_is_not_cached(client: TestClient) -> None:
    request = {"prompt": "Hello", "max_new_tokens": 3, "temperature": 1.0, "methods": ["saliency"]}
    assert client.post("/explain", json=request).headers["x-cache"] == "bypass"
    assert client.post("/explain", json=request).headers["x-cache"] == "bypass"


def test_explain_over_budget_is_refused_before_generating(tiny_settings: Settings) -> None:
    settings = tiny_settings.model_copy(update={"explain_max_targets": 2})
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        response = client.post("/explain", json={"prompt": "Hello", "max_new_tokens": 8, "methods": ["saliency"]})
        assert response.status_code == 422 and response.json()["error"]["type"] == "budget_exceeded"
        # nothing was generated (and so nothing stored) for the /generate of the same input
        assert client.post("/generate", json={"prompt": "Hello", "max_new_tokens": 8}).headers["x-cache"] == "miss"


def test_documents_citations_and_self_explanation_stream_and_cache(client: TestClient) -> None:
    """The checkable-answer features go down the same path: progress events per unit, the response in
    `done`, and a cache hit that returns the same citations and self-explanation."""
    request = {
        "messages": CHAT,
        "documents": [{"title": "Atlas", "text": "Paris is the capital of France."}, {"title": "", "text": "Hi."}],
        "target": "Paris.",
        "methods": ["context_attribution"],
        "self_explanation": True,
        "self_explanation_tokens": 4,
        "context_attribution": {"n_ablations": 8, "held_out": 2},
    }
    with client.stream("POST", "/explain", json={**request, "stream": True}) as response:
        raw = "".join(response.iter_text())
    events = raw.replace("\r\n", "\n").split("\n\n")
    assert sum(e.startswith("event: progress") for e in events) >= 2
    done = json.loads(next(e for e in events if e.startswith("event: done")).split("data: ", 1)[1])
    assert [s["label"] for s in done["sources"][: done["sequence_sources"]]] == ["Atlas", "document 2"]
    assert len(done["citations"]) == 1 and done["self_explanation"]["question"]
    again = client.post("/explain", json=request)
    assert again.headers["x-cache"] == "hit"
    assert again.json()["citations"] == done["citations"]
    assert again.json()["self_explanation"] == done["self_explanation"]
