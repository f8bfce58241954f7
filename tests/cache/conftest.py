"""Fixtures of the cache tests: real Redis servers, a counting fake model, and caches built from Settings."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from service.cache import ResponseCache, build_cache
from service.settings import Settings
from tests.support.redis_server import RedisServer

# Short timeouts and breaker reset so fault tests run in seconds; the values the service ships
# with are in Settings.
REDIS_TIMEOUT_S = 0.05
BREAKER_RESET_S = 0.3


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def shared_redis() -> Iterator[RedisServer]:
    """One server for the tests that do not break it (started here: never the machine's own Redis)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_server(shared_redis: RedisServer) -> RedisServer:
    """The shared server, emptied."""
    shared_redis.flushall()
    return shared_redis


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A server of this test's own, free to be paused, killed, restarted or filled."""
    with RedisServer() as server:
        yield server


class FakeModel:
    """Stands in for the model: sleeps ``delay`` seconds per call, counts calls, returns a body with
    the shapes real responses have (text, token ids, float logprobs)."""

    def __init__(self, delay: float = 0.05, *, tokens: int = 64) -> None:
        self.delay = delay
        self.tokens = tokens
        self.calls = 0
        self.started = asyncio.Event()

    def body(self, tag: str = "") -> dict[str, Any]:
        return {
            "text": f"answer {tag}",
            "tokens": [{"id": i, "text": f"t{i}", "logprob": -0.1 * i} for i in range(4)],
            "ids": list(range(1000, 1000 + self.tokens)),
            "logprobs": [-1.0 / (i + 3) for i in range(self.tokens)],
            "usage": {"prompt_tokens": 7, "completion_tokens": self.tokens},
        }

    def compute(self, tag: str = "") -> Callable[[], Awaitable[dict[str, Any]]]:
        async def run() -> dict[str, Any]:
            self.calls += 1
            self.started.set()
            await asyncio.sleep(self.delay)
            return self.body(tag)

        return run

    async def measured_time(self, runs: int = 5) -> float:
        """Median wall time of the model alone on this (possibly busy) machine."""
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            await asyncio.sleep(self.delay)
            times.append(time.perf_counter() - start)
        return statistics.median(times)


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


def cache_settings(redis_url: str | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "redis_timeout_s": REDIS_TIMEOUT_S,
        "cache_breaker_threshold": 3,
        "cache_breaker_reset_s": BREAKER_RESET_S,
        "cache_lock_lease_s": 5.0,
    }
    values.update(overrides)
    return Settings(**values)


CacheFactory = Callable[..., ResponseCache]


@pytest.fixture
async def make_cache() -> AsyncIterator[CacheFactory]:
    """``make_cache(redis_url=None, **settings)``: a cache on its own metrics registry, closed afterwards."""
    caches: list[ResponseCache] = []

    def make(redis_url: str | None = None, **overrides: Any) -> ResponseCache:
        cache = build_cache(cache_settings(redis_url, **overrides), registry=CollectorRegistry())
        caches.append(cache)
        return cache

    yield make
    for cache in caches:
        await cache.close()


def metric(cache: ResponseCache, name: str, **labels: str) -> float:
    """Current value of one of the cache's metrics (``glassbox_cache_<name>``)."""
    value = cache.metrics.registry.get_sample_value(f"glassbox_cache_{name}", labels or None)
    return 0.0 if value is None else value
