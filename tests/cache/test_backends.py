"""Backends: memory LRU, Redis in every topology, bounded failure, and the circuit breaker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from service.cache.backends import CacheUnavailable, CircuitBreaker, MemoryBackend, RedisBackend
from service.cache.keys import lock_key, value_key
from service.cache.metrics import BREAKER_CLOSED, BREAKER_HALF_OPEN, BREAKER_OPEN
from tests.cache.conftest import REDIS_TIMEOUT_S
from tests.support.redis_server import RedisSentinel, RedisServer

pytestmark = pytest.mark.anyio

# One Redis operation may take: connect + handshake + command, each bounded by the timeout.
OP_BOUND_S = 3 * REDIS_TIMEOUT_S + 0.1


def redis_backend(url: str, **overrides: float) -> RedisBackend:
    options = {"timeout_s": REDIS_TIMEOUT_S, "breaker_threshold": 3, "breaker_reset_s": 0.3, **overrides}
    return RedisBackend.from_url(
        url,
        timeout_s=float(options["timeout_s"]),
        breaker_threshold=int(options["breaker_threshold"]),
        breaker_reset_s=float(options["breaker_reset_s"]),
    )


@pytest.fixture
async def backend(redis_server: RedisServer) -> AsyncIterator[RedisBackend]:
    b = redis_backend(redis_server.url)
    yield b
    await b.close()


# --- memory ---------------------------------------------------------------------------------


async def test_memory_backend_is_an_lru_bounded_by_bytes() -> None:
    b = MemoryBackend(max_bytes=1000)
    for i in range(5):
        await b.set(f"k{i}", bytes(200), ttl_s=60)  # ~202 bytes each with the key
    assert b.used_bytes <= 1000
    assert await b.get("k0") is None  # evicted first
    assert await b.get("k1") is not None  # touched: now most recent
    await b.set("k5", bytes(200), ttl_s=60)
    assert await b.get("k1") is not None
    assert await b.get("k2") is None
    await b.set("huge", bytes(5000), ttl_s=60)  # larger than the whole cache: not stored, nothing evicted
    assert await b.get("huge") is None
    assert await b.get("k1") is not None


async def test_memory_backend_expires_values() -> None:
    b = MemoryBackend(max_bytes=10_000)
    await b.set("k", b"v", ttl_s=0.05)
    assert await b.get("k") == b"v"
    await asyncio.sleep(0.08)
    assert await b.get("k") is None
    assert b.used_bytes == 0


async def test_memory_backend_lock_and_wait() -> None:
    b = MemoryBackend(max_bytes=10_000)
    assert await b.try_lock("k", "a", lease_s=5)
    assert not await b.try_lock("k", "b", lease_s=5)
    waiter = asyncio.create_task(b.wait("k", timeout_s=5))
    await asyncio.sleep(0.01)
    await b.set("k", b"value", ttl_s=60)
    assert await waiter == b"value"
    await b.unlock("k", "b")  # not the holder: no effect
    assert not await b.try_lock("k", "c", lease_s=5)
    await b.unlock("k", "a")
    assert await b.try_lock("k", "c", lease_s=0.05)
    await asyncio.sleep(0.08)  # lease ran out
    assert await b.wait("k2", timeout_s=1) is None  # no lock, no value: returns at once
    assert await b.try_lock("k", "d", lease_s=5)


# --- redis ----------------------------------------------------------------------------------


async def test_redis_set_get_delete_with_ttl(backend: RedisBackend, redis_server: RedisServer) -> None:
    assert await backend.get("k") is None
    await backend.set("k", b"\x00bytes\xff", ttl_s=100)
    assert await backend.get("k") == b"\x00bytes\xff"
    with redis_server.client() as client:
        assert 99_000 < client.pttl(value_key("k")) <= 100_000
    await backend.delete("k")
    assert await backend.get("k") is None


async def test_redis_lock_is_exclusive_leased_and_token_checked(
    backend: RedisBackend, redis_server: RedisServer
) -> None:
    assert await backend.try_lock("k", "a", lease_s=5)
    assert not await backend.try_lock("k", "b", lease_s=5)
    await backend.unlock("k", "b")  # someone else's token must not release it
    assert not await backend.try_lock("k", "b", lease_s=5)
    with redis_server.client() as client:
        assert 4000 < client.pttl(lock_key("k")) <= 5000
    await backend.unlock("k", "a")
    assert await backend.try_lock("k", "b", lease_s=0.1)
    await asyncio.sleep(0.15)
    assert await backend.try_lock("k", "c", lease_s=5)  # the lease expired


async def test_redis_wait_returns_the_value_or_gives_up(backend: RedisBackend) -> None:
    assert await backend.wait("k", timeout_s=5) is None  # nobody holds the lock: no waiting
    assert await backend.try_lock("k", "leader", lease_s=5)

    async def leader() -> None:
        await asyncio.sleep(0.1)
        await backend.set("k", b"done", ttl_s=60)
        await backend.unlock("k", "leader")

    start = time.perf_counter()
    task = asyncio.create_task(leader())
    assert await backend.wait("k", timeout_s=5) == b"done"
    assert time.perf_counter() - start < 0.1 + 0.2  # polling does not add much
    await task

    assert await backend.try_lock("k2", "leader", lease_s=5)
    start = time.perf_counter()
    assert await backend.wait("k2", timeout_s=0.2) is None  # bounded
    assert 0.2 <= time.perf_counter() - start < 0.5
    await backend.unlock("k2", "leader")
    assert await backend.wait("k2", timeout_s=5) is None  # released without a value: give up at once


async def test_redis_with_password(redis_server: RedisServer) -> None:
    with RedisServer(password="s3cret") as server:
        good = redis_backend(server.url)
        bad = redis_backend(server.url.replace("s3cret", "wrong"))
        try:
            await good.set("k", b"v", ttl_s=60)
            assert await good.get("k") == b"v"
            with pytest.raises(CacheUnavailable):
                await bad.get("k")
        finally:
            await good.close()
            await bad.close()


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[RedisServer]:
    server = RedisServer(tls=True, password="s3cret")
    try:
        server.start()
    except Exception as exc:
        server.stop()
        if "TLS" in str(exc) or "tls" in str(exc):
            pytest.skip(f"this redis-server has no TLS support: {exc}")
        raise
    yield server
    server.stop()


async def test_rediss_url_with_auth(tls_redis: RedisServer) -> None:
    assert tls_redis.url.startswith("rediss://:s3cret@")
    b = redis_backend(tls_redis.url, timeout_s=1.0)  # a TLS handshake on a busy CI box
    try:
        await b.set("k", b"v", ttl_s=60)
        assert await b.get("k") == b"v"
    finally:
        await b.close()


async def test_redis_sentinel_url() -> None:
    with RedisServer(password="s3cret") as master, RedisSentinel(master) as sentinel:
        assert sentinel.url.startswith("redis+sentinel://")
        b = redis_backend(sentinel.url, timeout_s=0.5)
        try:
            await b.set("k", b"v", ttl_s=60)
            assert await b.get("k") == b"v"
            with master.client() as client:
                assert client.get(value_key("k")) is not None  # it went to the master
        finally:
            await b.close()


async def test_redis_cluster_url_and_one_slot_per_request() -> None:
    with RedisServer(cluster=True) as server:
        assert server.url.startswith("redis+cluster://")
        b = redis_backend(server.url, timeout_s=0.5)
        try:
            await b.set("k", b"v", ttl_s=60)
            assert await b.get("k") == b"v"
            assert await b.try_lock("k2", "t", lease_s=5)
            # MGET of value and lock would fail with CROSSSLOT without the hash tag.
            assert await b.wait("k2", timeout_s=0.05) is None
            await b.unlock("k2", "t")
            assert await b.try_lock("k2", "u", lease_s=5)
        finally:
            await b.close()


def test_unknown_url_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="scheme"):
        redis_backend("memcached://127.0.0.1:11211")


# --- failure is fast ----------------------------------------------------------------------------


async def timed_get(b: RedisBackend) -> tuple[float, CacheUnavailable | None]:
    start = time.perf_counter()
    try:
        await b.get("k")
    except CacheUnavailable as exc:
        return time.perf_counter() - start, exc
    return time.perf_counter() - start, None


async def test_dead_server_fails_at_once_without_retries(own_redis: RedisServer) -> None:
    b = redis_backend(own_redis.url, breaker_threshold=100)
    try:
        assert (await timed_get(b))[1] is None
        own_redis.kill()
        for _ in range(5):
            elapsed, error = await timed_get(b)
            assert error is not None
            assert elapsed < 0.1  # redis-py's default retries would take seconds
    finally:
        await b.close()


async def test_hung_server_fails_within_the_timeout(own_redis: RedisServer) -> None:
    b = redis_backend(own_redis.url, breaker_threshold=100)
    fresh = redis_backend(own_redis.url, breaker_threshold=100)  # must connect while hung
    try:
        assert (await timed_get(b))[1] is None
        own_redis.pause()
        for client in (b, fresh, b):
            elapsed, error = await timed_get(client)
            assert error is not None
            assert REDIS_TIMEOUT_S * 0.8 <= elapsed < OP_BOUND_S
    finally:
        own_redis.resume()
        await b.close()
        await fresh.close()


async def test_breaker_opens_after_consecutive_errors_and_recovers_by_itself(own_redis: RedisServer) -> None:
    b = redis_backend(own_redis.url, breaker_threshold=3, breaker_reset_s=0.3)
    try:
        own_redis.pause()
        for _ in range(3):
            assert (await timed_get(b))[1] is not None
        assert b.breaker.state == BREAKER_OPEN
        elapsed, error = await timed_get(b)
        assert error is not None and "breaker" in str(error)
        assert elapsed < 0.02  # open: Redis is not even asked
        own_redis.resume()
        await asyncio.sleep(0.35)
        assert (await timed_get(b))[1] is None  # the half-open probe succeeds
        assert b.breaker.state == BREAKER_CLOSED
    finally:
        own_redis.resume()
        await b.close()


async def test_full_redis_fails_writes_only_and_does_not_open_the_breaker(own_redis: RedisServer) -> None:
    b = redis_backend(own_redis.url, breaker_threshold=2)
    try:
        await b.set("old", b"v", ttl_s=60)
        own_redis.set_maxmemory(1)  # anything is over the limit
        for _ in range(4):
            with pytest.raises(CacheUnavailable, match=r"OOM|OutOfMemory"):
                await b.set("new", b"v" * 1000, ttl_s=60)
        assert await b.get("old") == b"v"  # reads still work
        assert b.breaker.state == BREAKER_CLOSED
    finally:
        await b.close()


def test_circuit_breaker_states() -> None:
    now = [0.0]
    changes: list[int] = []
    breaker = CircuitBreaker(threshold=2, reset_s=10, on_change=changes.append, clock=lambda: now[0])
    assert breaker.allow()
    breaker.failure()
    breaker.success()  # success resets the count: errors must be consecutive
    breaker.failure()
    assert breaker.state == BREAKER_CLOSED
    breaker.failure()
    assert breaker.state == BREAKER_OPEN
    assert not breaker.allow()
    now[0] = 10.0
    assert breaker.allow()  # one probe
    assert breaker.state == BREAKER_HALF_OPEN
    assert not breaker.allow()  # only one
    breaker.failure()  # probe failed: open again for a full period
    assert breaker.state == BREAKER_OPEN
    now[0] = 15.0
    assert not breaker.allow()
    now[0] = 20.0
    assert breaker.allow()
    breaker.abandon()  # the probe was cancelled: another may try
    assert breaker.allow()
    breaker.success()
    assert breaker.state == BREAKER_CLOSED
    assert changes == [BREAKER_OPEN, BREAKER_HALF_OPEN, BREAKER_OPEN, BREAKER_HALF_OPEN, BREAKER_CLOSED]


def test_backend_never_uses_the_machines_own_redis(redis_server: RedisServer) -> None:
    assert redis_server.port != 6379
    with redis.Redis(port=redis_server.port, socket_timeout=2) as client:
        assert client.ping()
