"""Response caching for use cases: the exact key of a request, and the get-or-compute call around it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from pydantic import BaseModel

from service.cache import CacheOutcome, ResponseCache, is_reproducible, parse_cache_control, request_key
from service.errors import ClientClosedRequest, DeadlineExceeded
from service.models.loaded import LoadedModel
from service.serving import Deadline
from service.serving.shared_deadline import SharedDeadline

T = TypeVar("T")

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


_SHARED: dict[str, SharedDeadline] = {}


@contextlib.contextmanager
def shared_deadline(key: str, deadline: Deadline, *, reproducible: bool) -> Iterator[Deadline]:
    """Join the shared deadline of ``key`` for the time of this request.

    The shared work runs until the latest deadline of the waiters still there (a later, more patient waiter
    extends it; one that leaves takes its deadline with it), and is cancelled when the last waiter leaves
    early (disconnect, its own timeout, an error). One client's disconnect or impatience must not stop work
    that other identical requests wait for. Work that is not shared (not reproducible) keeps the request's
    own deadline.
    """
    if not reproducible:
        yield deadline
        return
    entry = _SHARED.get(key)
    if entry is None or entry.cancelled:
        entry = _SHARED[key] = SharedDeadline(deadline)
    entry.join(deadline)
    left = False

    def leave(cancel: bool) -> None:
        nonlocal left
        if left:
            return
        left = True
        entry.leave(deadline)
        if entry.waiters == 0:
            if _SHARED.get(key) is entry:
                del _SHARED[key]
            if cancel:
                entry.cancel()

    unregister = deadline.on_cancel(lambda: leave(True))
    try:
        yield entry
    except BaseException:
        unregister()
        leave(True)
        raise
    finally:
        unregister()
        leave(False)


async def wait_own(work: Awaitable[T], deadline: Deadline) -> T:
    """Await shared ``work`` only as long as this waiter's own deadline allows (504 for this waiter alone),
    and no longer once this waiter's client is gone (499). The work itself goes on for the others.

    ``deadline.at`` may grow while waiting (a shared deadline of an outer flight), so it is re-read.
    """
    task = asyncio.ensure_future(work)
    gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    unregister = deadline.on_cancel(lambda: None if gone.done() else gone.set_result(None))
    either: set[asyncio.Future[Any]] = {task, gone}
    try:
        while not task.done() and not gone.done() and deadline.remaining() > 0:
            await asyncio.wait(either, timeout=deadline.remaining(), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        unregister()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if gone.done():
        raise ClientClosedRequest("the client disconnected")
    raise DeadlineExceeded(
        f"the request's deadline of {deadline.timeout_s:g} s passed while an identical request's answer was "
        "being computed; ask for a longer X-Request-Timeout-Ms (up to the server's limit)"
    )


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

    ``compute`` gets the deadline to run under: shared by all identical waiters when the work is shared (one
    flight of the cache); each waiter still gives up at its own deadline.
    """
    read, write = parse_cache_control(cache_control)
    reproducible = is_reproducible(temperature, seed)
    shared = cache.shares(cacheable=reproducible, read=read)
    with shared_deadline(key, deadline, reproducible=shared) as run_deadline:

        async def compute_body() -> dict[str, Any]:
            return (await compute(run_deadline)).model_dump(mode="json", exclude_none=True)

        work = cache.get_or_compute(
            key, compute_body, cacheable=reproducible, read=read, write=write, patience=run_deadline
        )
        body, outcome = await (wait_own(work, deadline) if shared else work)
    return {**body, "cache": outcome.value}, outcome
