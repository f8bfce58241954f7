"""Response cache for ``/generate`` and ``/explain``: exact keys, shared across replicas, fail-open.

Interface (everything a route needs)::

    from service.cache import (
        CacheOutcome, ResponseCache, build_cache, is_reproducible, parse_cache_control, request_key,
    )

    cache = build_cache(settings)                      # app start-up; ``await cache.close()`` at shutdown
    key = request_key(
        endpoint="generate",
        model_fingerprint={"id": ..., "revision": ..., "tokenizer": ..., "dtype": ..., "device": ...},
        params=request.model_dump(mode="json"),        # defaults filled in
    )
    read, write = parse_cache_control(http_request.headers.get("cache-control"))
    body, outcome = await cache.get_or_compute(
        key, compute, cacheable=is_reproducible(request.temperature, request.seed), read=read, write=write
    )
    # respond with header ``X-Cache: {outcome}`` and the outcome in the body's provenance;
    # ``body`` may be shared by coalesced requests: copy before changing it.

``compute`` is an ``async () -> dict`` returning the JSON-able response body; only bodies it
returns (no exceptions) are stored. ``/explain`` reuses ``/generate`` by calling
``cache.get_or_compute(generate_key, run_generate, ...)`` inside its own ``compute``, so the answer
it explains comes from the cache (or is stored there) rather than being generated again.

Modules: :mod:`~service.cache.keys` (key derivation), :mod:`~service.cache.codec` (value bytes),
:mod:`~service.cache.backends` (memory / Redis storage, circuit breaker),
:mod:`~service.cache.response_cache` (single flight and policy), :mod:`~service.cache.metrics`.
Configuration: the ``cache``/``redis`` fields of :class:`service.settings.Settings`.
"""

from service.cache.backends import CacheBackend, CacheUnavailable, MemoryBackend, RedisBackend
from service.cache.codec import CodecError, decode, encode
from service.cache.keys import CACHE_FORMAT_VERSION, is_reproducible, request_key
from service.cache.metrics import CacheMetrics, cache_metrics
from service.cache.response_cache import CacheOutcome, ResponseCache, build_cache, parse_cache_control

__all__ = [
    "CACHE_FORMAT_VERSION",
    "CacheBackend",
    "CacheMetrics",
    "CacheOutcome",
    "CacheUnavailable",
    "CodecError",
    "MemoryBackend",
    "RedisBackend",
    "ResponseCache",
    "build_cache",
    "cache_metrics",
    "decode",
    "encode",
    "is_reproducible",
    "parse_cache_control",
    "request_key",
]
