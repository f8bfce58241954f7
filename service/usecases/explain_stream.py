"""Streaming /explain: the response starts only once the explanation is accepted (its first event, or its
end), so every refusal keeps its status code; then progress and rows flow, then the response or an error."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel

from schemas.common import ErrorBody, ErrorDetail
from schemas.explain import ExplainRequest
from service.cache import CacheOutcome, ResponseCache
from service.errors import GlassboxError
from service.metrics import record_failure
from service.models.registry import ModelRegistry
from service.serving import Deadline, Serving
from service.settings import Settings
from service.usecases.explain import EventSink, ExplainEvent
from service.usecases.explain_cached import explain_cached

log = logging.getLogger(__name__)


class ExplainStream:
    """Events of one streaming explanation; ``close`` (idempotent) stops its model work at the next unit."""

    def __init__(
        self,
        task: asyncio.Task[tuple[dict[str, Any], CacheOutcome]],
        sink: EventSink,
        first: ExplainEvent | None,
    ) -> None:
        self._task, self._sink, self._first = task, sink, first
        self.cache_header = task.result()[1].value if task.done() and first is None else "miss"

    async def events(self) -> AsyncIterator[BaseModel | dict[str, Any]]:
        try:
            if self._first is not None:
                yield self._first
            while not self._task.done():
                getter = asyncio.ensure_future(self._sink.queue.get())
                done, _ = await asyncio.wait({getter, self._task}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                yield getter.result()
            await asyncio.sleep(0)
            while not self._sink.queue.empty():
                yield self._sink.queue.get_nowait()
            yield self._task.result()[0]
        except GlassboxError as exc:
            record_failure("/explain", exc.type)
            yield ErrorBody(error=ErrorDetail(message=exc.message, type=exc.type, param=exc.param, code=exc.code))
        except asyncio.CancelledError:
            record_failure("/explain", "cancelled")
            raise
        except Exception:
            log.exception("streaming explanation failed")
            record_failure("/explain", "internal_error")
            yield ErrorBody(error=ErrorDetail(message="internal error; it has been logged", type="internal_error"))
        finally:
            await self.close()

    async def close(self) -> None:
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


async def open_explain_stream(
    registry: ModelRegistry,
    settings: Settings,
    cache: ResponseCache,
    req: ExplainRequest,
    *,
    serving: Serving,
    deadline: Deadline,
    cache_control: str | None,
) -> ExplainStream:
    """Start the explanation; return once it is accepted (raising its error, with its status, if refused)."""
    sink = EventSink(asyncio.get_running_loop())
    task = asyncio.ensure_future(
        explain_cached(
            registry, settings, cache, req, serving=serving, deadline=deadline, cache_control=cache_control, sink=sink
        )
    )
    getter = asyncio.ensure_future(sink.queue.get())
    try:
        done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        getter.cancel()
        task.cancel()
        raise
    if getter in done:
        return ExplainStream(task, sink, getter.result())
    getter.cancel()
    task.result()  # raises the refusal (422, 429, 504, ...) before the response starts
    return ExplainStream(task, sink, None)
