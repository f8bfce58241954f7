"""A replica that takes a key's cross-replica lock and computes forever, for tests that ``kill -9`` it.

Run as ``python -m tests.cache.lock_owner REDIS_URL KEY LEASE_S``; prints ``computing`` once it holds the lock.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from prometheus_client import CollectorRegistry

from service.cache import build_cache
from tests.cache.conftest import cache_settings


async def main(url: str, key: str, lease_s: float) -> None:
    cache = build_cache(cache_settings(url, cache_lock_lease_s=lease_s), registry=CollectorRegistry())

    async def compute() -> dict[str, Any]:
        print("computing", flush=True)
        await asyncio.Event().wait()  # until killed
        return {}

    await cache.get_or_compute(key, compute, cacheable=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
