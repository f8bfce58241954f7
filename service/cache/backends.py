"""Where cached bytes live: an in-process LRU, or Redis (single server, Sentinel or Cluster).

Both implement :class:`CacheBackend`. Keys passed in are request keys (hex digests); each backend
derives its own storage keys. A backend never lets a failure through as anything but
:class:`CacheUnavailable`, and the Redis one bounds every operation by a short timeout, never
retries, and stops calling Redis altogether while its circuit breaker is open: a cache that is
down, hung or full must cost a request a few milliseconds, not seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ClusterError, ResponseError

from service.cache.keys import lock_key, value_key
from service.cache.metrics import BREAKER_CLOSED, BREAKER_HALF_OPEN, BREAKER_OPEN, CacheMetrics

log = logging.getLogger(__name__)

T = TypeVar("T")

# Followers poll for the leader's value: quickly at first (a hit is usually close), then less often.
_POLL_FIRST_S = 0.005
_POLL_MAX_S = 0.05

_UNLOCK_SCRIPT = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_RENEW_SCRIPT = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
)


class CacheUnavailable(Exception):
    """A backend operation failed (down, slow, full, breaker open). Callers fail open on it."""

    def __init__(self, op: str, reason: str) -> None:
        super().__init__(f"cache {op} failed: {reason}")
        self.op = op
        self.reason = reason


class CacheBackend(Protocol):
    """Async byte store with a lease lock per key, the primitives of cross-replica single flight."""

    async def get(self, key: str) -> bytes | None:
        """The stored value, or None when absent or expired."""

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        """Store *value* for *ttl_s* seconds."""

    async def delete(self, key: str) -> None:
        """Remove the value (e.g. one that failed to decode)."""

    async def try_lock(self, key: str, token: str, lease_s: float) -> bool:
        """Take the key's compute lock for at most *lease_s*; False if someone else holds it."""

    async def unlock(self, key: str, token: str) -> None:
        """Release the lock if *token* still holds it (an expired lease may belong to another)."""

    async def renew(self, key: str, token: str, lease_s: float) -> bool:
        """Extend the lease to *lease_s* from now if *token* still holds it; False if it does not."""

    async def wait(self, key: str, timeout_s: float) -> bytes | None:
        """The value once it appears; None as soon as the lock is gone without one, or at timeout."""

    async def close(self) -> None:
        """Release connections."""


class MemoryBackend:
    """In-process LRU bounded by bytes: the default when no Redis is configured.

    Single flight inside one process is handled above the backend; the lock methods (polled, like
    Redis) make two caches sharing one MemoryBackend behave like two replicas sharing a Redis.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used_bytes = 0
        self._values: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._locks: dict[str, tuple[str, float]] = {}

    def _cost(self, key: str, value: bytes) -> int:
        return len(key) + len(value)

    def _drop(self, key: str) -> None:
        entry = self._values.pop(key, None)
        if entry is not None:
            self.used_bytes -= self._cost(key, entry[0])

    async def get(self, key: str) -> bytes | None:
        entry = self._values.get(key)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            self._drop(key)
            return None
        self._values.move_to_end(key)
        return entry[0]

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        self._drop(key)
        cost = self._cost(key, value)
        if cost <= self.max_bytes:
            self._values[key] = (value, time.monotonic() + ttl_s)
            self.used_bytes += cost
            while self.used_bytes > self.max_bytes:
                self._drop(next(iter(self._values)))

    async def delete(self, key: str) -> None:
        self._drop(key)

    def _lock_holder(self, key: str) -> str | None:
        held = self._locks.get(key)
        if held is None:
            return None
        if held[1] <= time.monotonic():
            del self._locks[key]
            return None
        return held[0]

    async def try_lock(self, key: str, token: str, lease_s: float) -> bool:
        if self._lock_holder(key) is not None:
            return False
        self._locks[key] = (token, time.monotonic() + lease_s)
        return True

    async def unlock(self, key: str, token: str) -> None:
        if self._lock_holder(key) == token:
            del self._locks[key]

    async def renew(self, key: str, token: str, lease_s: float) -> bool:
        if self._lock_holder(key) != token:
            return False
        self._locks[key] = (token, time.monotonic() + lease_s)
        return True

    async def wait(self, key: str, timeout_s: float) -> bytes | None:
        deadline = time.monotonic() + timeout_s
        pause = _POLL_FIRST_S
        while True:
            value = await self.get(key)
            if value is not None:
                return value
            remaining = deadline - time.monotonic()
            if self._lock_holder(key) is None or remaining <= 0:
                return None
            await asyncio.sleep(min(pause, remaining))
            pause = min(pause * 2, _POLL_MAX_S)

    async def close(self) -> None:
        self._values.clear()
        self._locks.clear()
        self.used_bytes = 0


class CircuitBreaker:
    """Stops calling a failing dependency: open after *threshold* consecutive failures, for
    *reset_s*; then one probe call is let through (half-open) and its result closes or reopens it."""

    def __init__(
        self,
        threshold: int,
        reset_s: float,
        on_change: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.reset_s = reset_s
        self.state = BREAKER_CLOSED
        self.failures = 0
        self._opened_at = 0.0
        self._probing = False
        self._on_change = on_change
        self._clock = clock

    def _set(self, state: int) -> None:
        if state != self.state:
            self.state = state
            if self._on_change is not None:
                self._on_change(state)

    def allow(self) -> bool:
        """Whether a call may go ahead now. In half-open state only one probe at a time may."""
        if self.state == BREAKER_CLOSED:
            return True
        if self.state == BREAKER_OPEN:
            if self._clock() - self._opened_at < self.reset_s:
                return False
            self._set(BREAKER_HALF_OPEN)
        if self._probing:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        self.failures = 0
        self._probing = False
        self._set(BREAKER_CLOSED)

    def failure(self) -> None:
        self.failures += 1
        self._probing = False
        if self.state == BREAKER_HALF_OPEN or self.failures >= self.threshold:
            self._opened_at = self._clock()
            self._set(BREAKER_OPEN)

    def abandon(self) -> None:
        """A call ended without a verdict (cancelled): let another probe through."""
        self._probing = False


def _no_retry() -> Retry:
    # redis-py's defaults retry with backoff (seconds on a dead server); a cache must not wait.
    return Retry(NoBackoff(), 0)


def _sentinel_client(url: str, common: dict[str, Any]) -> tuple[Redis, Sentinel]:
    """``redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db][?sentinel_password=...]``:
    the credentials are the master's; sentinels get ``sentinel_password`` if given."""
    parts = urlsplit(url)
    auth, _, hosts = parts.netloc.rpartition("@")
    username, _, password = auth.partition(":") if auth else ("", "", "")
    sentinels: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        sentinels.append((host.strip("[]") or item, int(port or 26379)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("redis+sentinel:// URL needs the service name as its path")
    service, db = unquote(path[0]), int(path[1]) if len(path) > 1 else 0
    query = parse_qs(parts.query)
    sentinel_kwargs = dict(common)
    if "sentinel_password" in query:
        sentinel_kwargs["password"] = query["sentinel_password"][0]
    sentinel = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs, **common)
    master = sentinel.master_for(
        service,
        db=db,
        username=unquote(username) or None,
        password=unquote(password) or None,
    )
    return master, sentinel


class RedisBackend:
    """Redis via redis.asyncio, failing fast and open.

    Every call is bounded by ``timeout_s`` (socket and connect) and a hard ceiling of a few times
    that; no retries. Connection-level failures feed a circuit breaker. Server replies that are
    errors (``OOM`` when ``maxmemory`` is reached with ``noeviction``) fail only that call: Redis
    is responsive, and reads still work.
    """

    def __init__(
        self,
        client: Any,
        *,
        timeout_s: float,
        breaker_threshold: int,
        breaker_reset_s: float,
        metrics: CacheMetrics | None = None,
        extra_closers: tuple[Callable[[], Awaitable[None]], ...] = (),
    ) -> None:
        self._client = client
        self._hard_timeout_s = 3 * timeout_s + 0.01
        self._metrics = metrics
        self._extra_closers = extra_closers
        self.breaker = CircuitBreaker(breaker_threshold, breaker_reset_s, on_change=self._breaker_changed)
        self._last_error = ""
        self._unlock = client.register_script(_UNLOCK_SCRIPT)
        self._renew = client.register_script(_RENEW_SCRIPT)
        if metrics is not None:
            metrics.breaker_state.set(BREAKER_CLOSED)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout_s: float,
        breaker_threshold: int,
        breaker_reset_s: float,
        metrics: CacheMetrics | None = None,
    ) -> RedisBackend:
        """A backend for ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://`` or
        ``redis+cluster://`` / ``rediss+cluster://`` (one seed node; the rest are discovered)."""
        common: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            "retry": _no_retry(),
            "client_name": "glassbox-cache",
        }
        scheme = urlsplit(url).scheme.lower()
        closers: tuple[Callable[[], Awaitable[None]], ...] = ()
        client: Any
        if scheme in ("redis+cluster", "rediss+cluster"):
            seed_url = scheme.removesuffix("+cluster") + url[len(scheme) :]
            client = RedisCluster.from_url(seed_url, **common)
        elif scheme == "redis+sentinel":
            client, sentinel = _sentinel_client(url, common)
            closers = (sentinel.aclose,)
        elif scheme in ("redis", "rediss", "unix"):
            client = Redis.from_url(url, **common)
        else:
            raise ValueError(f"unsupported Redis URL scheme {scheme!r}")
        return cls(
            client,
            timeout_s=timeout_s,
            breaker_threshold=breaker_threshold,
            breaker_reset_s=breaker_reset_s,
            metrics=metrics,
            extra_closers=closers,
        )

    def _breaker_changed(self, state: int) -> None:
        if self._metrics is not None:
            self._metrics.breaker_state.set(state)
        if state == BREAKER_OPEN:
            log.warning(
                "Redis cache unavailable (%s); serving without it for %.1fs",
                self._last_error,
                self.breaker.reset_s,
            )
        elif state == BREAKER_CLOSED:
            log.warning("Redis cache reachable again; resuming")

    async def _call(self, op: str, command: Callable[[], Awaitable[T]]) -> T:
        if not self.breaker.allow():
            raise CacheUnavailable(op, "circuit breaker open")
        try:
            result = await asyncio.wait_for(command(), self._hard_timeout_s)
        except asyncio.CancelledError:
            self.breaker.abandon()
            raise
        except ResponseError as exc:
            if isinstance(exc, ClusterError):
                self._failed(exc)
            else:  # Redis answered (OOM, ...): it is up, only this command failed.
                self.breaker.success()
            raise CacheUnavailable(op, f"{type(exc).__name__}: {exc}") from exc
        except Exception as exc:  # timeouts, refused/reset connections, cluster discovery, ...
            self._failed(exc)
            raise CacheUnavailable(op, f"{type(exc).__name__}: {exc}") from exc
        self.breaker.success()
        return result

    def _failed(self, exc: BaseException) -> None:
        self._last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self.breaker.failure()

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self._call("get", lambda: self._client.get(value_key(key)))
        return value

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        ttl_ms = max(1, int(ttl_s * 1000))
        await self._call("set", lambda: self._client.set(value_key(key), value, px=ttl_ms))

    async def delete(self, key: str) -> None:
        await self._call("delete", lambda: self._client.delete(value_key(key)))

    async def try_lock(self, key: str, token: str, lease_s: float) -> bool:
        lease_ms = max(1, int(lease_s * 1000))
        got = await self._call("lock", lambda: self._client.set(lock_key(key), token, nx=True, px=lease_ms))
        return bool(got)

    async def unlock(self, key: str, token: str) -> None:
        await self._call("unlock", lambda: self._unlock(keys=[lock_key(key)], args=[token]))

    async def renew(self, key: str, token: str, lease_s: float) -> bool:
        lease_ms = max(1, int(lease_s * 1000))
        renewed = await self._call("renew", lambda: self._renew(keys=[lock_key(key)], args=[token, lease_ms]))
        return bool(renewed)

    async def wait(self, key: str, timeout_s: float) -> bytes | None:
        # Polling MGET of value and lock (one slot, thanks to the hash tag) works the same on a
        # single server, Sentinel and Cluster, and needs no pub/sub connection per waiter.
        deadline = time.monotonic() + timeout_s
        pause = _POLL_FIRST_S
        while True:
            value, holder = await self._call("wait", lambda: self._client.mget([value_key(key), lock_key(key)]))
            if value is not None:
                return bytes(value)
            remaining = deadline - time.monotonic()
            if holder is None or remaining <= 0:
                return None
            await asyncio.sleep(min(pause, remaining))
            pause = min(pause * 2, _POLL_MAX_S)

    async def ping(self) -> bool:
        """Whether Redis answers now (for readiness/health reporting)."""
        try:
            await self._call("ping", lambda: self._client.ping())
        except CacheUnavailable:
            return False
        return True

    async def close(self) -> None:
        await self._client.aclose()
        for closer in self._extra_closers:
            await closer()
