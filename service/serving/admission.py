"""Admission control: a bounded number of requests per model at once and a bounded queue behind them.

A request takes its slot before tokenization, so a flood costs a 429, not CPU. Past the queue the answer
is 429 with ``Retry-After``; a deadline that passes while queued is a 504; a client that leaves the queue
frees its place at once. Cache hits never get here: the cache calls the use case only on a miss.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator

from service.errors import ClientClosedRequest, DeadlineExceeded, Overloaded
from service.metrics import INFLIGHT, QUEUE_DEPTH, QUEUE_WAIT
from service.observability.tracing import traced
from service.serving.deadline import Deadline

#: Weight of the newest sample in the moving average of slot hold times (for Retry-After).
_EWMA_ALPHA = 0.2


class _Pool:
    """Slots of one model. Only touched on the event loop, so plain counters are safe."""

    def __init__(self, model: str, limit: int, queue_limit: int) -> None:
        self.model = model
        self.limit = limit
        self.queue_limit = queue_limit
        self.active = 0
        self.waiting = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._hold_s = 0.0  # moving average of how long a slot is held

    def retry_after(self) -> int:
        """Seconds until a place is likely free: the queue ahead, served ``limit`` at a time."""
        if self._hold_s <= 0:
            return 1
        return max(1, min(60, math.ceil(self._hold_s * (self.waiting + 1) / self.limit)))

    async def acquire(self, deadline: Deadline | None) -> float:
        """Take a slot, waiting in line if need be; returns the time waited."""
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return 0.0
        if self.waiting >= self.queue_limit:
            seconds = self.retry_after()
            raise Overloaded(
                f"model {self.model!r} is at capacity ({self.limit} running, {self.waiting} waiting); "
                f"retry in {seconds} s",
                headers={"Retry-After": str(seconds)},
            )
        started = time.perf_counter()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.waiting += 1
        QUEUE_DEPTH.labels(model=self.model).inc()
        unregister = (
            deadline.on_cancel(lambda: _fail(waiter, ClientClosedRequest("client disconnected")))
            if (deadline is not None)
            else (lambda: None)
        )
        try:
            # Re-read: a shared deadline grows when a more patient identical request joins.
            while not waiter.done() and (deadline is None or deadline.remaining() > 0):
                await asyncio.wait({waiter}, timeout=deadline.remaining() if deadline is not None else None)
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise
        finally:
            unregister()
            self.waiting -= 1
            QUEUE_DEPTH.labels(model=self.model).dec()
        if not waiter.done():
            self._abandon(waiter)
            raise DeadlineExceeded(
                f"the request's deadline passed after {time.perf_counter() - started:.1f} s waiting for "
                f"model {self.model!r}"
            )
        waiter.result()  # raises ClientClosedRequest when the client left the queue
        return time.perf_counter() - started

    def _abandon(self, waiter: asyncio.Future[None]) -> None:
        """Leave the queue; a slot handed over in the meantime goes to the next in line."""
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            self.release(0.0)
        else:
            waiter.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def release(self, held_s: float) -> None:
        """Hand the slot to the first live waiter, or free it."""
        if held_s > 0:
            self._hold_s = held_s if self._hold_s <= 0 else (1 - _EWMA_ALPHA) * self._hold_s + _EWMA_ALPHA * held_s
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.active -= 1


def _fail(waiter: asyncio.Future[None], exc: BaseException) -> None:
    if not waiter.done():
        waiter.set_exception(exc)


class Admission:
    """Per-model pools of ``max_concurrency`` slots with ``max_queue`` waiting places each."""

    def __init__(self, max_concurrency: int, max_queue: int) -> None:
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self._pools: dict[str, _Pool] = {}

    def _pool(self, model: str) -> _Pool:
        pool = self._pools.get(model)
        if pool is None:
            pool = self._pools[model] = _Pool(model, self.max_concurrency, self.max_queue)
        return pool

    def load(self, model: str) -> tuple[int, int]:
        """(running, waiting) for ``model``."""
        pool = self._pool(model)
        return pool.active, pool.waiting

    @contextlib.asynccontextmanager
    async def slot(self, model: str, deadline: Deadline | None = None) -> AsyncIterator[float]:
        """Hold one of ``model``'s slots for the block; yields the seconds spent waiting for it.

        Raises ``Overloaded`` (429) when the queue is full, ``DeadlineExceeded`` (504) when the deadline
        passes in the queue, ``ClientClosedRequest`` when the client disconnects while queued.
        """
        pool = self._pool(model)
        with traced("glassbox.admission", model=model):
            waited = await pool.acquire(deadline)
        QUEUE_WAIT.labels(model=model).observe(waited)
        INFLIGHT.labels(model=model).inc()
        held_from = time.perf_counter()
        try:
            yield waited
        finally:
            INFLIGHT.labels(model=model).dec()
            pool.release(time.perf_counter() - held_from)
