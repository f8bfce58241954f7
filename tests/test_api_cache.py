"""The response cache through the HTTP API: X-Cache, exact keys, opt-outs, shared Redis, Redis down."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.settings import Settings
from tests.conftest import wait_ready
from tests.support.redis_server import RedisServer

REQUEST = {"prompt": "Glassbox explains", "max_new_tokens": 6}


def without_cache_field(body: dict) -> dict:
    return {k: v for k, v in body.items() if k != "cache"}


@pytest.fixture
def memory_client(tiny_settings: Settings) -> Iterator[TestClient]:
    """A fresh app (and so a fresh in-process cache) per test."""
    with TestClient(create_app(tiny_settings)) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def test_cache_hit_after_miss_returns_identical_body(memory_client: TestClient) -> None:
    first = memory_client.post("/generate", json=REQUEST)
    second = memory_client.post("/generate", json=REQUEST)
    assert first.headers["x-cache"] == "miss" and first.json()["cache"] == "miss"
    assert second.headers["x-cache"] == "hit" and second.json()["cache"] == "hit"
    assert without_cache_field(first.json()) == without_cache_field(second.json())


def test_cache_key_ignores_key_order_whitespace_and_explicit_defaults(memory_client: TestClient) -> None:
    memory_client.post("/generate", json=REQUEST)
    reordered = json.dumps({"max_new_tokens": 6, "temperature": 0.0, "top_p": 1, "prompt": "Glassbox explains"})
    response = memory_client.post("/generate", content=f"  {reordered}\n", headers={"content-type": "application/json"})
    assert response.headers["x-cache"] == "hit"
    changed = memory_client.post("/generate", json={**REQUEST, "max_new_tokens": 5})
    assert changed.headers["x-cache"] == "miss"


def test_cache_seeded_sampling_cached_unseeded_not(memory_client: TestClient) -> None:
    seeded = {**REQUEST, "temperature": 1.0, "seed": 5}
    assert memory_client.post("/generate", json=seeded).headers["x-cache"] == "miss"
    assert memory_client.post("/generate", json=seeded).headers["x-cache"] == "hit"
    unseeded = {**REQUEST, "temperature": 1.0}
    assert memory_client.post("/generate", json=unseeded).headers["x-cache"] == "bypass"
    assert memory_client.post("/generate", json=unseeded).headers["x-cache"] == "bypass"


def test_cache_control_no_cache_and_no_store(memory_client: TestClient) -> None:
    assert (
        memory_client.post("/generate", json=REQUEST, headers={"cache-control": "no-store"}).headers["x-cache"]
        == "miss"
    )
    assert memory_client.post("/generate", json=REQUEST).headers["x-cache"] == "miss"  # nothing was stored
    assert (
        memory_client.post("/generate", json=REQUEST, headers={"cache-control": "no-cache"}).headers["x-cache"]
        == "bypass"
    )


def test_cache_errors_are_never_cached(memory_client: TestClient) -> None:
    bad = {"prompt": "x y z", "max_new_tokens": 255}
    assert memory_client.post("/generate", json=bad).status_code == 422
    assert memory_client.post("/generate", json=bad).status_code == 422


def test_cache_stream_bypasses(memory_client: TestClient) -> None:
    with memory_client.stream("POST", "/generate", json={**REQUEST, "stream": True}) as response:
        assert response.headers["x-cache"] == "bypass"
        "".join(response.iter_text())


def test_cache_shared_by_two_instances_on_one_redis(tiny_settings: Settings, redis_server: RedisServer) -> None:
    settings = tiny_settings.model_copy(update={"redis_url": redis_server.url})
    request = {**REQUEST, "max_new_tokens": 7}
    with TestClient(create_app(settings)) as one, TestClient(create_app(settings)) as two:
        wait_ready(one)
        wait_ready(two)
        first = one.post("/generate", json=request)
        second = two.post("/generate", json=request)
    assert first.headers["x-cache"] == "miss" and second.headers["x-cache"] == "hit"
    assert without_cache_field(first.json()) == without_cache_field(second.json())


def test_cache_redis_down_still_answers(tiny_settings: Settings) -> None:
    with RedisServer() as server:
        settings = tiny_settings.model_copy(update={"redis_url": server.url})
        server.kill()
        with TestClient(create_app(settings)) as client:
            wait_ready(client)
            response = client.post("/generate", json=REQUEST)
    assert response.status_code == 200 and response.headers["x-cache"] == "error"
    assert response.json()["tokens"]
