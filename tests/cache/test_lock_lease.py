"""The cross-replica lock dies with its owner: a short lease renewed while the owner lives (issue 10).

Before: the lease was 60 s and never renewed, and a follower waited out the whole lease whatever its own
deadline, so after a replica was killed mid-request the same request waited ~35 s and then failed.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
import redis

from service.cache import CacheOutcome
from service.cache.keys import lock_key
from service.serving import Deadline
from tests.cache.conftest import CacheFactory, FakeModel
from tests.cache.test_faults import key
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.anyio

LEASE_S = 1.0


def start_owner(server: RedisServer, k: str, lease_s: float) -> subprocess.Popen[str]:
    owner = subprocess.Popen(
        [sys.executable, "-m", "tests.cache.lock_owner", server.url, k, str(lease_s)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    assert owner.stdout.readline().strip() == "computing"
    return owner


async def test_lock_of_a_killed_owner_expires_within_one_lease(
    redis_server: RedisServer, make_cache: CacheFactory
) -> None:
    k = key("killed-owner")
    owner = start_owner(redis_server, k, LEASE_S)
    client = redis.Redis.from_url(redis_server.url)
    try:
        await asyncio.sleep(LEASE_S * 1.5)  # past one lease: the live owner renewed it
        assert client.get(lock_key(k)) is not None
        owner.kill()  # SIGKILL: no cleanup runs
        owner.wait()
        model = FakeModel(delay=0.01)
        patience = Deadline(30)
        cache = make_cache(redis_server.url, cache_lock_lease_s=LEASE_S)
        body, outcome = await cache.get_or_compute(k, model.compute(), cacheable=True, patience=patience)
    finally:
        owner.kill()
        owner.wait()
        client.close()
    assert outcome is CacheOutcome.MISS and model.calls == 1 and body == model.body()
    # Computed once the dead owner's lease ran out, not after the waiter's own 30 s.
    assert patience.elapsed() < LEASE_S + 1.0


async def test_live_owner_keeps_the_lock_past_its_lease(redis_server: RedisServer, make_cache: CacheFactory) -> None:
    """A computation longer than the lease is not duplicated: the renewal keeps other replicas waiting."""
    k = key("slow-owner")
    leader_model, follower_model = FakeModel(delay=LEASE_S * 3), FakeModel(delay=0.01)
    leader = make_cache(redis_server.url, cache_lock_lease_s=LEASE_S)
    follower = make_cache(redis_server.url, cache_lock_lease_s=LEASE_S)
    leading = asyncio.create_task(leader.get_or_compute(k, leader_model.compute("L"), cacheable=True))
    await leader_model.started.wait()
    body, outcome = await follower.get_or_compute(k, follower_model.compute("F"), cacheable=True, patience=Deadline(30))
    assert (await leading)[1] is CacheOutcome.MISS
    assert outcome is CacheOutcome.HIT and body == leader_model.body("L") and follower_model.calls == 0


async def test_follower_waits_no_longer_than_its_own_patience(
    redis_server: RedisServer, make_cache: CacheFactory
) -> None:
    k = key("impatient-follower")
    leader_model, follower_model = FakeModel(delay=30), FakeModel(delay=0.0)
    leader = make_cache(redis_server.url, cache_lock_lease_s=60)
    follower = make_cache(redis_server.url, cache_lock_lease_s=60)
    leading = asyncio.create_task(leader.get_or_compute(k, leader_model.compute(), cacheable=True))
    await leader_model.started.wait()
    patience = Deadline(0.3)
    await follower.get_or_compute(k, follower_model.compute(), cacheable=True, patience=patience)
    # It gave up waiting at its own deadline (its compute then runs under the expired deadline), while the
    # holder still computes, well inside the holder's 60 s lease.
    assert follower_model.calls == 1 and not leading.done()
    leading.cancel()
