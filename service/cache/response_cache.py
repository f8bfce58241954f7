"""The response cache: look up, single-flight, compute, store — and never be the reason a request fails.

Flow of :meth:`ResponseCache.get_or_compute` for a cacheable request:

1. Identical concurrent requests in this process share one *flight* (an asyncio task). Callers
   await it through :func:`asyncio.shield`, so a client that disconnects (its handler is
   cancelled) does not cancel the computation the others are waiting for.
2. The flight reads the backend. A value that fails to decode is deleted, counted, and treated as
   a miss.
3. On a miss it takes a short lease lock in the backend, renewed by a background task while the holder
   is alive (so a holder that dies, even by ``kill -9``, frees the key within one lease): the holder
   computes and stores; other replicas wait for the value, for as long as their own patience (the
   flight's deadline) allows, and compute themselves as soon as the lock is gone without a value.
4. The first backend failure of a flight ends its use of the backend: the answer is computed and
   returned, reported as ``error``, at a cost bounded by the backend's timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from service.cache import codec
from service.cache.backends import CacheBackend, CacheUnavailable, MemoryBackend, RedisBackend
from service.cache.metrics import CacheMetrics, cache_metrics
from service.settings import Settings

log = logging.getLogger(__name__)

Body = dict[str, Any]
Compute = Callable[[], Awaitable[Body]]


class Patience(Protocol):
    """How long a flight may wait for another replica (a :class:`service.serving.Deadline` is one)."""

    def remaining(self) -> float: ...

    @property
    def cancelled(self) -> bool: ...


#: A follower re-reads its patience at least this often (it may grow, or be cancelled).
_WAIT_SLICE_S = 0.5

#: Values up to this size are decoded on the event loop; larger ones in the cache's thread.
_INLINE_DECODE_BYTES = 64 * 1024
_WARN_EVERY_S = 10.0


class CacheOutcome(enum.StrEnum):
    """What the cache did for one response; the value of the ``X-Cache`` header."""

    HIT = "hit"  # served from the cache (possibly after waiting for another replica to store it)
    MISS = "miss"  # computed (and stored, unless the request said no-store or it was too large)
    BYPASS = "bypass"  # lookup skipped: not reproducible, Cache-Control: no-cache, or cache disabled
    ERROR = "error"  # the backend failed during this request; the answer was computed anyway


def parse_cache_control(header: str | None) -> tuple[bool, bool]:
    """``(read, write)`` for a request's ``Cache-Control``: ``no-cache`` (or ``max-age=0``) skips the
    lookup, ``no-store`` skips the write. Unknown directives are ignored."""
    read = write = True
    for directive in (header or "").split(","):
        name, _, value = directive.strip().lower().partition("=")
        name = name.strip()
        if name == "no-cache" or (name == "max-age" and value.strip().strip('"') == "0"):
            read = False
        elif name == "no-store":
            write = False
    return read, write


@dataclass(eq=False)
class _Flight:
    """One shared computation. ``write`` is true if any participant allows storing the result."""

    write: bool
    patience: Patience | None = None
    task: asyncio.Task[tuple[Body, CacheOutcome]] | None = None


class ResponseCache:
    """Cache-aside with single flight in front of a :class:`CacheBackend` (``None``: disabled).

    The dict returned by :meth:`get_or_compute` may be shared by coalesced callers: copy it before
    mutating (``{**body, "cache": ...}``). ``compute`` may outlive the request that supplied it (it
    runs on for the other callers), so it must not depend on that request staying connected.
    """

    def __init__(
        self,
        backend: CacheBackend | None,
        *,
        ttl_s: float,
        ttl_jitter: float = 0.0,
        max_value_bytes: int,
        lock_lease_s: float,
        metrics: CacheMetrics | None = None,
    ) -> None:
        self.backend = backend
        self.ttl_s = ttl_s
        self.ttl_jitter = ttl_jitter
        self.max_value_bytes = max_value_bytes
        self.lock_lease_s = lock_lease_s
        self.metrics = metrics if metrics is not None else cache_metrics()
        self._flights: dict[str, _Flight] = {}
        # Encoding and large decodes run here, not in the default executor where model work may queue.
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="glassbox-cache")
        self._last_warning: dict[str, float] = {}

    @property
    def kind(self) -> str:
        """``redis``, ``memory`` or ``disabled`` (for logs and health output)."""
        if self.backend is None:
            return "disabled"
        return "redis" if isinstance(self.backend, RedisBackend) else "memory"

    def shares(self, *, cacheable: bool, read: bool = True) -> bool:
        """Whether :meth:`get_or_compute` runs such a request as a flight identical requests share."""
        return self.backend is not None and cacheable and read

    async def get_or_compute(
        self,
        key: str,
        compute: Compute,
        *,
        cacheable: bool,
        read: bool = True,
        write: bool = True,
        patience: Patience | None = None,
    ) -> tuple[Body, CacheOutcome]:
        """The response for *key*: from the cache, from an identical in-flight computation, or from
        ``compute()``. Exceptions of ``compute`` propagate (nothing is stored); cache failures never do.

        ``cacheable`` is False for responses that are not reproducible (:func:`is_reproducible`);
        ``read``/``write`` come from :func:`parse_cache_control`. ``patience`` bounds how long a flight
        waits for another replica's value (default: one lease); give every caller of a key the same one.
        """
        if self.backend is None or not cacheable or not read:
            reason = "disabled" if self.backend is None else "uncacheable" if not cacheable else "no-cache"
            self.metrics.bypasses.labels(reason=reason).inc()
            body = await compute()
            if reason == "no-cache" and write and await self._store(key, body) is CacheOutcome.ERROR:
                return body, CacheOutcome.ERROR
            return body, CacheOutcome.BYPASS

        flight = self._flights.get(key)
        if flight is None:
            flight = _Flight(write=write, patience=patience)
            flight.task = asyncio.create_task(self._fly(key, compute, flight), name=f"cache-flight-{key[:12]}")
            self._flights[key] = flight
            flight.task.add_done_callback(lambda task: self._landed(key, flight, task))
        else:
            flight.write = flight.write or write
            self.metrics.coalesced.labels(scope="process").inc()
        assert flight.task is not None
        return await asyncio.shield(flight.task)

    def _landed(self, key: str, flight: _Flight, task: asyncio.Task[Any]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # retrieved: no "never retrieved" noise when every caller went away

    async def _fly(self, key: str, compute: Compute, flight: _Flight) -> tuple[Body, CacheOutcome]:
        backend = self.backend
        assert backend is not None
        try:
            data = await backend.get(key)
        except CacheUnavailable as exc:
            self._backend_failed(exc)
            return await compute(), CacheOutcome.ERROR
        if data is not None:
            body = await self._decode(key, data)
            if body is not None:
                self.metrics.hits.inc()
                return body, CacheOutcome.HIT

        if not flight.write:  # no-store: nothing to share with other replicas, so no lock
            self.metrics.misses.inc()
            return await compute(), CacheOutcome.MISS

        token = secrets.token_hex(16)
        try:
            leader = await backend.try_lock(key, token, self.lock_lease_s)
        except CacheUnavailable as exc:
            self._backend_failed(exc)
            self.metrics.misses.inc()
            return await compute(), CacheOutcome.ERROR

        if not leader:
            # Another replica computes this key: wait for its value while it holds the lock and we may wait.
            try:
                data = await self._wait_for_other(key, flight.patience)
            except CacheUnavailable as exc:
                self._backend_failed(exc)
                self.metrics.misses.inc()
                return await compute(), CacheOutcome.ERROR
            if data is not None:
                body = await self._decode(key, data)
                if body is not None:
                    self.metrics.hits.inc()
                    self.metrics.coalesced.labels(scope="replica").inc()
                    return body, CacheOutcome.HIT
            # The holder is gone (its lease ran out), stored nothing (failed, too large), or our patience
            # ran out (then compute stops at once under the expired deadline): compute anyway.
            self.metrics.misses.inc()
            body = await compute()
            return body, await self._store(key, body)

        self.metrics.misses.inc()
        outcome = CacheOutcome.MISS
        renewal = asyncio.create_task(self._renew(key, token), name=f"cache-lease-{key[:12]}")
        try:
            body = await compute()
            outcome = await self._store(key, body)
        finally:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
            # Shielded: a flight cancelled at shutdown still frees the key for other replicas.
            if not await asyncio.shield(self._unlock(key, token)):
                outcome = CacheOutcome.ERROR
        return body, outcome

    async def _renew(self, key: str, token: str) -> None:
        """Keep the lock while this process computes: extend the lease every third of it. Stops when the
        lock is no longer ours or Redis fails (others then compute too: wasteful, never wrong)."""
        assert self.backend is not None
        while True:
            await asyncio.sleep(self.lock_lease_s / 3)
            try:
                if not await self.backend.renew(key, token, self.lock_lease_s):
                    return
            except CacheUnavailable as exc:
                self._backend_failed(exc)
                return

    async def _wait_for_other(self, key: str, patience: Patience | None) -> bytes | None:
        """Another replica's value for *key*; None once its lock is gone without one or patience ends."""
        assert self.backend is not None
        if patience is None:
            return await self.backend.wait(key, self.lock_lease_s)
        loop = asyncio.get_running_loop()
        while not patience.cancelled and (remaining := patience.remaining()) > 0:
            slice_s = min(remaining, _WAIT_SLICE_S)
            started = loop.time()
            data = await self.backend.wait(key, slice_s)
            if data is not None or loop.time() - started < slice_s * 0.9:
                return data  # the value, or the lock was released (or expired) without one
        return None

    async def _unlock(self, key: str, token: str) -> bool:
        assert self.backend is not None
        try:
            await self.backend.unlock(key, token)
        except CacheUnavailable as exc:
            self._backend_failed(exc)
            return False
        return True

    async def _store(self, key: str, body: Body) -> CacheOutcome:
        """Encode and write *body*: MISS when written or deliberately skipped, ERROR on failure."""
        assert self.backend is not None
        loop = asyncio.get_running_loop()
        try:
            blob = await loop.run_in_executor(self._executor, codec.encode, body)
        except codec.CodecError as exc:
            self.metrics.errors.labels(op="encode").inc()
            self._warn("encode", f"response not cached: {exc}")
            return CacheOutcome.MISS
        if len(blob) > self.max_value_bytes:
            self.metrics.skipped_too_large.inc()
            return CacheOutcome.MISS
        ttl = self.ttl_s * (1 - self.ttl_jitter * random.random())
        try:
            await self.backend.set(key, blob, max(ttl, 1.0))
        except CacheUnavailable as exc:
            self._backend_failed(exc)
            return CacheOutcome.ERROR
        self.metrics.stored_bytes.inc(len(blob))
        return CacheOutcome.MISS

    async def _decode(self, key: str, data: bytes) -> Body | None:
        """The stored body, or None (after deleting it) when it does not decode."""
        assert self.backend is not None
        try:
            if len(data) <= _INLINE_DECODE_BYTES:
                return codec.decode(data)
            return await asyncio.get_running_loop().run_in_executor(self._executor, codec.decode, data)
        except codec.CodecError as exc:
            self.metrics.decode_failures.inc()
            self._warn("decode", f"dropping undecodable cache value {key[:16]}…: {exc}")
        try:
            await self.backend.delete(key)
        except CacheUnavailable as exc:
            self._backend_failed(exc)
        return None

    def _backend_failed(self, exc: CacheUnavailable) -> None:
        self.metrics.errors.labels(op=exc.op).inc()
        self._warn(exc.op, f"{exc}; serving without the cache")

    def _warn(self, topic: str, message: str) -> None:
        """A warning at most every few seconds per topic: an outage must not flood the log."""
        now = time.monotonic()
        if now - self._last_warning.get(topic, -_WARN_EVERY_S) >= _WARN_EVERY_S:
            self._last_warning[topic] = now
            log.warning("response cache: %s", message)

    async def close(self) -> None:
        """Cancel flights still running, close the backend, stop the worker threads."""
        tasks = [flight.task for flight in self._flights.values() if flight.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.backend is not None:
            await self.backend.close()
        self._executor.shutdown(wait=False, cancel_futures=True)


def build_cache(settings: Settings, *, registry: CollectorRegistry | None = None) -> ResponseCache:
    """The cache the settings describe: Redis when ``redis_url`` is set, else in-process memory;
    disabled (every request ``bypass``) when ``cache_enabled`` is false."""
    metrics = cache_metrics(registry)
    backend: CacheBackend | None = None
    if not settings.cache_enabled:
        backend = None
    elif settings.redis_url:
        backend = RedisBackend.from_url(
            settings.redis_url,
            timeout_s=settings.redis_timeout_s,
            breaker_threshold=settings.cache_breaker_threshold,
            breaker_reset_s=settings.cache_breaker_reset_s,
            metrics=metrics,
        )
    else:
        backend = MemoryBackend(settings.cache_memory_max_bytes)
    return ResponseCache(
        backend,
        ttl_s=settings.cache_ttl_s,
        ttl_jitter=settings.cache_ttl_jitter,
        max_value_bytes=settings.cache_max_value_bytes,
        lock_lease_s=settings.cache_lock_lease_s,
        metrics=metrics,
    )
