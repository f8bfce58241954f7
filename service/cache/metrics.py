"""Prometheus metrics of the response cache (``glassbox_cache_*``).

One :class:`CacheMetrics` per registry: building a second cache in the same process (tests, app
reloads) reuses the collectors instead of failing with "Duplicated timeseries".
"""

from __future__ import annotations

import threading
import weakref

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

#: Values of ``glassbox_cache_breaker_state``.
BREAKER_CLOSED, BREAKER_OPEN, BREAKER_HALF_OPEN = 0, 1, 2


class CacheMetrics:
    """The cache's counters and gauges, registered on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.hits = Counter("glassbox_cache_hits", "Responses served from the cache.", registry=registry)
        self.misses = Counter(
            "glassbox_cache_misses", "Lookups that found no usable value (the model ran).", registry=registry
        )
        self.bypasses = Counter(
            "glassbox_cache_bypasses",
            "Requests that skipped the cache lookup (reason: uncacheable, no-cache, disabled).",
            ["reason"],
            registry=registry,
        )
        self.errors = Counter(
            "glassbox_cache_errors", "Cache backend failures, by operation.", ["op"], registry=registry
        )
        self.coalesced = Counter(
            "glassbox_cache_coalesced",
            "Requests that shared another request's computation (scope: process, replica).",
            ["scope"],
            registry=registry,
        )
        self.stored_bytes = Counter("glassbox_cache_stored_bytes", "Bytes written to the cache.", registry=registry)
        self.skipped_too_large = Counter(
            "glassbox_cache_skipped_too_large",
            "Values not stored because they exceed the size limit.",
            registry=registry,
        )
        self.decode_failures = Counter(
            "glassbox_cache_decode_failures", "Stored values that failed to decode (deleted).", registry=registry
        )
        self.breaker_state = Gauge(
            "glassbox_cache_breaker_state", "Redis circuit breaker: 0 closed, 1 open, 2 half-open.", registry=registry
        )


_lock = threading.Lock()
_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, CacheMetrics] = weakref.WeakKeyDictionary()


def cache_metrics(registry: CollectorRegistry | None = None) -> CacheMetrics:
    """The metrics on *registry* (default: the global one), created on first use."""
    registry = REGISTRY if registry is None else registry
    with _lock:
        metrics = _by_registry.get(registry)
        if metrics is None:
            metrics = _by_registry[registry] = CacheMetrics(registry)
        return metrics
