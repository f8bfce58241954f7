"""ResponseCache on a real Redis: hits, policy, size limits, corrupt values, single flight."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from service.cache import (
    CacheOutcome,
    MemoryBackend,
    ResponseCache,
    cache_metrics,
    is_reproducible,
    parse_cache_control,
    request_key,
)
from service.cache.codec import encode
from service.cache.keys import lock_key, value_key
from service.settings import Settings
from tests.cache.conftest import CacheFactory, FakeModel, metric
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.anyio

FINGERPRINT = {"id": "m", "revision": "r1", "tokenizer": "t", "dtype": "float32", "device": "cpu"}


def gen_key(prompt: str = "hi", **params: Any) -> str:
    return request_key(endpoint="generate", model_fingerprint=FINGERPRINT, params={"prompt": prompt, **params})


@pytest.fixture(params=["redis", "memory"])
def backend_url(request: pytest.FixtureRequest, redis_server: RedisServer) -> str | None:
    """The policy tests run on Redis and on the embedded in-process default alike."""
    return redis_server.url if request.param == "redis" else None


async def test_hit_after_miss_returns_the_identical_body(
    make_cache: CacheFactory, model: FakeModel, backend_url: str | None
) -> None:
    cache = make_cache(backend_url)
    assert cache.kind == ("redis" if backend_url else "memory")
    first, outcome1 = await cache.get_or_compute(gen_key(), model.compute(), cacheable=True)
    second, outcome2 = await cache.get_or_compute(gen_key(), model.compute("other"), cacheable=True)
    assert (outcome1, outcome2) == (CacheOutcome.MISS, CacheOutcome.HIT)
    assert second == first == model.body()
    assert model.calls == 1
    assert metric(cache, "hits_total") == 1
    assert metric(cache, "misses_total") == 1
    assert metric(cache, "stored_bytes_total") > 0
    _, outcome3 = await cache.get_or_compute(gen_key("other prompt"), model.compute(), cacheable=True)
    assert outcome3 == CacheOutcome.MISS  # a different request is not served the first answer
    assert model.calls == 2


async def test_seeded_sampling_is_cached_and_unseeded_is_not(make_cache: CacheFactory, model: FakeModel) -> None:
    cache = make_cache()
    seeded = gen_key(temperature=0.8, seed=7)
    for expected in (CacheOutcome.MISS, CacheOutcome.HIT):
        _, outcome = await cache.get_or_compute(seeded, model.compute(), cacheable=is_reproducible(0.8, 7))
        assert outcome == expected
    unseeded = gen_key(temperature=0.8, seed=None)
    for _ in range(2):
        _, outcome = await cache.get_or_compute(unseeded, model.compute(), cacheable=is_reproducible(0.8, None))
        assert outcome == CacheOutcome.BYPASS
    assert model.calls == 3
    assert metric(cache, "bypasses_total", reason="uncacheable") == 2


async def test_unseeded_requests_are_not_coalesced(make_cache: CacheFactory, model: FakeModel) -> None:
    cache = make_cache()
    key = gen_key(temperature=0.8)
    results = await asyncio.gather(
        *(cache.get_or_compute(key, model.compute(str(i)), cacheable=False) for i in range(5))
    )
    assert model.calls == 5  # each sample is its own
    assert {body["text"] for body, _ in results} == {f"answer {i}" for i in range(5)}


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, (True, True)),
        ("", (True, True)),
        ("no-cache", (False, True)),
        ("No-Store", (True, False)),
        ("no-cache, no-store", (False, False)),
        ("max-age=0", (False, True)),
        ("max-age=60", (True, True)),
        ('private, max-age="0"', (False, True)),
    ],
)
def test_parse_cache_control(header: str | None, expected: tuple[bool, bool]) -> None:
    assert parse_cache_control(header) == expected


async def test_no_cache_skips_the_read_and_no_store_skips_the_write(
    make_cache: CacheFactory, model: FakeModel, backend_url: str | None
) -> None:
    cache = make_cache(backend_url)
    key = gen_key()
    read, write = parse_cache_control("no-store")
    _, outcome = await cache.get_or_compute(key, model.compute(), cacheable=True, read=read, write=write)
    assert outcome == CacheOutcome.MISS
    _, outcome = await cache.get_or_compute(key, model.compute(), cacheable=True)
    assert outcome == CacheOutcome.MISS  # the no-store response was not stored
    read, write = parse_cache_control("no-cache")
    body, outcome = await cache.get_or_compute(key, model.compute("fresh"), cacheable=True, read=read, write=write)
    assert outcome == CacheOutcome.BYPASS
    assert body["text"] == "answer fresh"  # computed again despite the stored value
    body, outcome = await cache.get_or_compute(key, model.compute(), cacheable=True)
    assert (outcome, body["text"]) == (CacheOutcome.HIT, "answer fresh")  # ...and it replaced it
    assert model.calls == 3
    assert metric(cache, "bypasses_total", reason="no-cache") == 1


async def test_disabled_cache_bypasses_everything(make_cache: CacheFactory, model: FakeModel) -> None:
    cache = make_cache(cache_enabled=False)
    assert cache.kind == "disabled"
    for _ in range(2):
        _, outcome = await cache.get_or_compute(gen_key(), model.compute(), cacheable=True)
        assert outcome == CacheOutcome.BYPASS
    assert model.calls == 2


async def test_a_corrupt_stored_value_is_a_miss_and_is_deleted(
    make_cache: CacheFactory, model: FakeModel, redis_server: RedisServer
) -> None:
    cache = make_cache(redis_server.url)
    key = gen_key()
    good = encode(model.body())
    for corrupt in (b"garbage", good[:-5], good[:10] + bytes([good[10] ^ 0xFF]) + good[11:]):
        with redis_server.client() as client:
            client.set(value_key(key), corrupt)
        body, outcome = await cache.get_or_compute(key, model.compute(), cacheable=True)
        assert outcome == CacheOutcome.MISS
        assert body == model.body()
        _, outcome = await cache.get_or_compute(key, model.compute(), cacheable=True)
        assert outcome == CacheOutcome.HIT  # the recomputed value replaced the corrupt one
    assert metric(cache, "decode_failures_total") == 3
    assert model.calls == 3


async def test_a_corrupt_value_is_deleted_even_when_not_replaced(
    make_cache: CacheFactory, model: FakeModel, redis_server: RedisServer
) -> None:
    cache = make_cache(redis_server.url)
    key = gen_key()
    with redis_server.client() as client:
        client.set(value_key(key), b"garbage")
    _, outcome = await cache.get_or_compute(key, model.compute(), cacheable=True, write=False)
    assert outcome == CacheOutcome.MISS
    with redis_server.client() as client:
        assert client.exists(value_key(key)) == 0


async def test_values_over_the_size_limit_are_skipped_and_counted(
    make_cache: CacheFactory, redis_server: RedisServer, backend_url: str | None
) -> None:
    cache = make_cache(backend_url, cache_max_value_bytes=2048)
    big = FakeModel(tokens=5000)  # ~20 KB even as raw float32 + zstd
    small = FakeModel(tokens=8)
    for expected in (CacheOutcome.MISS, CacheOutcome.MISS):
        _, outcome = await cache.get_or_compute(gen_key("big"), big.compute(), cacheable=True)
        assert outcome == expected
    assert big.calls == 2
    assert metric(cache, "skipped_too_large_total") == 2
    for expected in (CacheOutcome.MISS, CacheOutcome.HIT):
        _, outcome = await cache.get_or_compute(gen_key("small"), small.compute(), cacheable=True)
        assert outcome == expected
    if backend_url:
        assert len(redis_server.keys("glassbox:*")) == 1  # only the small value (no lock left behind)


async def test_values_are_stored_compact_with_a_jittered_ttl(
    make_cache: CacheFactory, redis_server: RedisServer
) -> None:
    cache = make_cache(redis_server.url, cache_ttl_s=1000, cache_ttl_jitter=0.2)
    model = FakeModel(tokens=2000)
    ttls = []
    for i in range(8):
        await cache.get_or_compute(gen_key(str(i)), model.compute(), cacheable=True)
        with redis_server.client() as client:
            ttls.append(client.pttl(value_key(gen_key(str(i)))) / 1000)
            stored = client.get(value_key(gen_key(str(i))))
        assert stored is not None
        assert len(stored) < len(json.dumps(model.body())) / 2
    assert all(800 - 1 <= ttl <= 1000 for ttl in ttls)
    assert len({round(ttl) for ttl in ttls}) > 1  # jittered, not all equal


async def test_model_errors_propagate_and_nothing_is_stored(
    make_cache: CacheFactory, redis_server: RedisServer
) -> None:
    cache = make_cache(redis_server.url)
    calls = 0

    async def failing() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        raise RuntimeError("model exploded")

    results = await asyncio.gather(
        *(cache.get_or_compute(gen_key(), failing, cacheable=True) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)
    assert calls == 1  # shared failure, not five
    assert redis_server.keys("glassbox:*") == []  # no value, lock released
    model = FakeModel()
    _, outcome = await cache.get_or_compute(gen_key(), model.compute(), cacheable=True)
    assert outcome == CacheOutcome.MISS  # the next request computes afresh


# --- single flight ------------------------------------------------------------------------------


async def test_concurrent_identical_requests_run_the_model_once(
    make_cache: CacheFactory, backend_url: str | None
) -> None:
    cache = make_cache(backend_url)
    model = FakeModel(delay=0.2)
    results = await asyncio.gather(
        *(cache.get_or_compute(gen_key(), model.compute(), cacheable=True) for _ in range(20))
    )
    assert model.calls == 1
    assert all(body == model.body() for body, _ in results)
    assert {outcome for _, outcome in results} == {CacheOutcome.MISS}
    assert metric(cache, "coalesced_total", scope="process") == 19


async def test_one_client_disconnecting_does_not_cancel_the_others(
    make_cache: CacheFactory, redis_server: RedisServer
) -> None:
    cache = make_cache(redis_server.url)
    model = FakeModel(delay=0.2)
    tasks = [asyncio.create_task(cache.get_or_compute(gen_key(), model.compute(), cacheable=True)) for _ in range(20)]
    await model.started.wait()
    tasks[0].cancel()  # the client that started the computation goes away
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert all(result == (model.body(), CacheOutcome.MISS) for result in results[1:])
    assert model.calls == 1
    _, outcome = await cache.get_or_compute(gen_key(), model.compute(), cacheable=True)
    assert outcome == CacheOutcome.HIT


async def test_a_computation_everyone_abandoned_still_completes_and_is_stored(
    make_cache: CacheFactory, redis_server: RedisServer
) -> None:
    cache = make_cache(redis_server.url)
    model = FakeModel(delay=0.1)
    tasks = [asyncio.create_task(cache.get_or_compute(gen_key(), model.compute(), cacheable=True)) for _ in range(3)]
    await model.started.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0.2)
    _, outcome = await cache.get_or_compute(gen_key(), model.compute(), cacheable=True)
    assert outcome == CacheOutcome.HIT
    assert model.calls == 1


async def test_two_service_instances_on_one_redis_run_the_model_once(
    make_cache: CacheFactory, redis_server: RedisServer
) -> None:
    replica_a, replica_b = make_cache(redis_server.url), make_cache(redis_server.url)
    model = FakeModel(delay=0.3)
    requests = [
        replica.get_or_compute(gen_key(), model.compute(), cacheable=True)
        for _ in range(10)
        for replica in (replica_a, replica_b)
    ]
    results = await asyncio.gather(*requests)
    assert model.calls == 1
    assert all(body == model.body() for body, _ in results)
    outcomes = sorted(str(outcome) for _, outcome in results)
    assert outcomes == ["hit"] * 10 + ["miss"] * 10  # the other replica waited for the value
    assert (
        metric(replica_a, "coalesced_total", scope="replica") + metric(replica_b, "coalesced_total", scope="replica")
        == 1
    )


async def test_followers_compute_anyway_when_the_lease_runs_out(
    make_cache: CacheFactory, redis_server: RedisServer, model: FakeModel
) -> None:
    # A replica took the lock and died: nothing will ever be stored for it.
    with redis_server.client() as client:
        client.set(lock_key(gen_key()), "dead-replica", px=300)
    cache = make_cache(redis_server.url)
    loop = asyncio.get_running_loop()
    start = loop.time()
    body, outcome = await cache.get_or_compute(gen_key(), model.compute(), cacheable=True)
    elapsed = loop.time() - start
    assert (body, outcome) == (model.body(), CacheOutcome.MISS)
    assert 0.3 <= elapsed < 0.3 + model.delay + 0.3
    _, outcome = await cache.get_or_compute(gen_key(), model.compute(), cacheable=True)
    assert outcome == CacheOutcome.HIT  # the follower stored what it computed


async def test_follower_waits_at_most_its_own_lease(make_cache: CacheFactory, redis_server: RedisServer) -> None:
    with redis_server.client() as client:
        client.set(lock_key(gen_key()), "stuck")  # no expiry at all
    cache = make_cache(redis_server.url, cache_lock_lease_s=0.25)
    model = FakeModel()
    loop = asyncio.get_running_loop()
    start = loop.time()
    _, outcome = await cache.get_or_compute(gen_key(), model.compute(), cacheable=True)
    assert outcome == CacheOutcome.MISS
    assert 0.25 <= loop.time() - start < 0.25 + model.delay + 0.3


async def test_explain_reuses_a_cached_generate(make_cache: CacheFactory, backend_url: str | None) -> None:
    """The pattern for /explain: its compute gets the answer through the cache under generate's key."""
    cache = make_cache(backend_url)
    generate_model = FakeModel(delay=0.1)
    explained = 0

    async def explain() -> dict[str, Any]:
        nonlocal explained
        answer, _ = await cache.get_or_compute(gen_key(), generate_model.compute(), cacheable=True)
        explained += 1
        return {"answer": answer["text"], "attributions": [0.5] * 16}

    explain_key = request_key(endpoint="explain", model_fingerprint=FINGERPRINT, params={"prompt": "hi"})
    _, generate_outcome = await cache.get_or_compute(gen_key(), generate_model.compute(), cacheable=True)
    body, explain_outcome = await cache.get_or_compute(explain_key, explain, cacheable=True)
    assert (generate_outcome, explain_outcome) == (CacheOutcome.MISS, CacheOutcome.MISS)
    assert generate_model.calls == 1  # explaining did not generate again
    assert body["answer"] == "answer "
    _, outcome = await cache.get_or_compute(explain_key, explain, cacheable=True)
    assert outcome == CacheOutcome.HIT
    assert explained == 1


async def test_build_cache_without_redis_is_in_process_and_bounded(make_cache: CacheFactory) -> None:
    cache = make_cache(None, cache_memory_max_bytes=12_345)
    assert isinstance(cache.backend, MemoryBackend)
    assert cache.backend.max_bytes == 12_345


async def test_two_caches_sharing_a_memory_backend_run_the_model_once() -> None:
    """The memory backend's lock behaves like Redis's, so the single-flight logic is the same."""
    backend = MemoryBackend(max_bytes=1_000_000)
    replicas = [
        ResponseCache(
            backend, ttl_s=60, max_value_bytes=100_000, lock_lease_s=5, metrics=cache_metrics(CollectorRegistry())
        )
        for _ in range(2)
    ]
    model = FakeModel(delay=0.2)
    try:
        results = await asyncio.gather(
            *(r.get_or_compute(gen_key(), model.compute(), cacheable=True) for _ in range(5) for r in replicas)
        )
    finally:
        for replica in replicas:
            await replica.close()
    assert model.calls == 1
    assert sorted(str(outcome) for _, outcome in results) == ["hit"] * 5 + ["miss"] * 5


def test_metrics_are_created_once_per_registry() -> None:
    registry = CollectorRegistry()
    assert cache_metrics(registry) is cache_metrics(registry)
    names = {metric.name for metric in registry.collect()}
    assert names and all(name.startswith("glassbox_cache_") for name in names)
    assert cache_metrics() is cache_metrics()  # the default registry: no "Duplicated timeseries"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"REDIS_URL": "redis://plain:6379/0"}, "redis://plain:6379/0"),
        ({"GLASSBOX_REDIS_URL": "redis://ours:6379/0", "REDIS_URL": "redis://plain:6379/0"}, "redis://ours:6379/0"),
    ],
)
def test_redis_url_setting_honours_the_plain_redis_url_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str | None
) -> None:
    monkeypatch.delenv("GLASSBOX_REDIS_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings().redis_url == expected
    assert Settings(redis_url="redis://explicit:1/0").redis_url == "redis://explicit:1/0"
