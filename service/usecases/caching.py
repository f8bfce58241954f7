"""Response caching for use cases: the exact key of a request, and the get-or-compute call around it."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from pydantic import BaseModel

from service.cache import CacheOutcome, ResponseCache, is_reproducible, parse_cache_control, request_key
from service.models.loaded import LoadedModel
from service.serving import Deadline

#: Bump when the engine's outputs change for the same inputs (e.g. the sampling algorithm), so old cached
#: answers are never served for new computations.
ENGINE_VERSION = "2"

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
        "engine": ENGINE_VERSION,
    }


def key_for(endpoint: str, lm: LoadedModel, req: BaseModel) -> str:
    """Defaults are filled in by pydantic, so omitted and explicit defaults share a key."""
    params = req.model_dump(mode="json", exclude=set(DELIVERY_FIELDS))
    params["model"] = lm.name  # `model: null` and the default model's name are the same request
    return request_key(endpoint=endpoint, model_fingerprint=model_fingerprint(lm), params=params)


class _SharedDeadline:
    """The deadline of a computation identical requests share: cancelled only when every waiter has left."""

    def __init__(self, first: Deadline) -> None:
        self.deadline = first.detached()
        self.waiters = 0


_SHARED: dict[str, _SharedDeadline] = {}


@contextlib.contextmanager
def shared_deadline(key: str, deadline: Deadline, *, reproducible: bool) -> Iterator[Deadline]:
    """Join the shared deadline of ``key`` for the time of this request.

    One client's disconnect must not stop work that other identical requests wait for (issue: single flight);
    but when the last waiter is gone, the work stops at its next token (issue: cancellation). Work that is not
    shared (not reproducible) keeps the request's own deadline.
    """
    if not reproducible:
        yield deadline
        return
    entry = _SHARED.get(key)
    if entry is None or entry.deadline.cancelled:
        entry = _SHARED[key] = _SharedDeadline(deadline)
    entry.waiters += 1
    left = False

    def leave(cancel: bool) -> None:
        nonlocal left
        if left:
            return
        left = True
        entry.waiters -= 1
        if entry.waiters == 0:
            if _SHARED.get(key) is entry:
                del _SHARED[key]
            if cancel:
                entry.deadline.cancel()

    unregister = deadline.on_cancel(lambda: leave(True))
    try:
        yield entry.deadline
    finally:
        unregister()
        leave(False)


async def cached(
    cache: ResponseCache,
    key: str,
    compute: Callable[[Deadline], Awaitable[BaseModel]],
    *,
    deadline: Deadline,
    temperature: float,
    seed: int | None,
    cache_control: str | None,
) -> tuple[dict[str, Any], CacheOutcome]:
    """Serve from the cache or compute (once, however many identical requests wait); returns a fresh dict.

    ``compute`` gets the deadline to run under: shared by all identical waiters when the work is shareable.
    """
    read, write = parse_cache_control(cache_control)
    reproducible = is_reproducible(temperature, seed)
    with shared_deadline(key, deadline, reproducible=reproducible) as run_deadline:

        async def compute_body() -> dict[str, Any]:
            return (await compute(run_deadline)).model_dump(mode="json", exclude_none=True)

        body, outcome = await cache.get_or_compute(key, compute_body, cacheable=reproducible, read=read, write=write)
    return {**body, "cache": outcome.value}, outcome
