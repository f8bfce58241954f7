"""Streaming helpers: yield an explanation's events while it runs, then its result."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

from service.usecases.explain import EventSink, ExplainEvent

T = TypeVar("T")


async def drain_events(sink: EventSink, work: Coroutine[Any, Any, T]) -> AsyncIterator[ExplainEvent | T]:
    """Run ``work``; yield each event put on ``sink`` as it comes, then ``work``'s result (or raise its error).

    If the consumer stops early (the client left), ``work`` is cancelled: its model work stops at the next unit.
    """
    task = asyncio.ensure_future(work)
    try:
        while True:
            getter = asyncio.ensure_future(sink.queue.get())
            done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                break
            yield getter.result()
        await asyncio.sleep(0)  # events the model thread scheduled just before finishing
        while not sink.queue.empty():
            yield sink.queue.get_nowait()
        yield task.result()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
