"""Response caching for use cases: the exact key of a request, and the get-or-compute call around it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel

from service.cache import CacheOutcome, ResponseCache, is_reproducible, parse_cache_control, request_key
from service.models.loaded import LoadedModel

#: Fields that change how a response is delivered, not what it says.
DELIVERY_FIELDS = frozenset({"stream"})


def model_fingerprint(lm: LoadedModel) -> dict[str, str]:
    """Everything about the served model that changes an answer."""
    return {
        "id": lm.name,
        "revision": lm.revision,
        "tokenizer": lm.tokenizer_fingerprint,
        "dtype": str(lm.dtype).removeprefix("torch."),
        "device": lm.device_class,
        "max_context": str(lm.max_context),
    }


def key_for(endpoint: str, lm: LoadedModel, req: BaseModel) -> str:
    """Defaults are filled in by pydantic, so omitted and explicit defaults share a key."""
    params = req.model_dump(mode="json", exclude=set(DELIVERY_FIELDS))
    params["model"] = lm.name  # `model: null` and the default model's name are the same request
    return request_key(endpoint=endpoint, model_fingerprint=model_fingerprint(lm), params=params)


async def cached(
    cache: ResponseCache,
    key: str,
    compute: Callable[[], Awaitable[BaseModel]],
    *,
    temperature: float,
    seed: int | None,
    cache_control: str | None,
) -> tuple[dict[str, Any], CacheOutcome]:
    """Serve from the cache or compute (once, however many identical requests wait); returns a fresh dict."""
    read, write = parse_cache_control(cache_control)

    async def compute_body() -> dict[str, Any]:
        return (await compute()).model_dump(mode="json", exclude_none=True)

    body, outcome = await cache.get_or_compute(
        key, compute_body, cacheable=is_reproducible(temperature, seed), read=read, write=write
    )
    return {**body, "cache": outcome.value}, outcome
