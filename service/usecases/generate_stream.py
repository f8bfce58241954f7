"""Streaming /generate: the slot is taken and the prompt checked before the response starts (so errors keep
their status codes), then tokens flow as the batch produces them, and the slot is held until the stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from schemas.common import ErrorBody, ErrorDetail
from schemas.explain import ExplainProgressEvent, ExplainRowEvent
from schemas.generate import GenerateRequest, GenerateResponse, TokenEvent
from service.engine.generation import GeneratedToken, GenerationOutput
from service.errors import GlassboxError
from service.metrics import record_failure
from service.models.registry import ModelRegistry
from service.serving import Batcher, Deadline, Serving
from service.settings import Settings
from service.usecases.explain import EventSink
from service.usecases.generate import Admitted, admit, respond
from service.usecases.limits import raise_if_stopped, sampling_params
from service.usecases.streams import drain_events
from service.usecases.tokens import generated_token

log = logging.getLogger(__name__)

StreamItem = TokenEvent | ExplainProgressEvent | ExplainRowEvent | GenerateResponse | ErrorBody


class GenerationStream:
    """One streaming generation. ``events`` yields token events, then (with ``explain``) the explanation's
    progress and row events, then the response or an error body;
    ``close`` (idempotent) stops the model at its next token and frees the slot, and must always run."""

    def __init__(self, job: Admitted, req: GenerateRequest, batcher: Batcher, slot: contextlib.AsyncExitStack) -> None:
        self._job, self._req, self._batcher, self._slot = job, req, batcher, slot
        self._lm, self._prompt, self._deadline = job.lm, job.prompt, job.deadline
        self._task: asyncio.Future[tuple[GenerationOutput, float]] | None = None

    def _token(self, index: int, token: GeneratedToken) -> TokenEvent:
        return TokenEvent(index=index, token=generated_token(self._lm, token, logprobs=self._req.logprobs))

    async def events(self) -> AsyncIterator[StreamItem]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[GeneratedToken] = asyncio.Queue()

        def on_token(token: GeneratedToken) -> None:  # on the model thread
            loop.call_soon_threadsafe(queue.put_nowait, token)

        params = sampling_params(self._req)
        task = self._task = asyncio.ensure_future(
            self._batcher.generate(self._prompt.ids, params, deadline=self._deadline, on_token=on_token)
        )
        index = 0
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                yield self._token(index, getter.result())
                index += 1
            while not queue.empty():  # tokens scheduled before the generation finished
                yield self._token(index, queue.get_nowait())
                index += 1
            output, queue_s = task.result()
            raise_if_stopped(output, self._deadline)
            sink = EventSink(loop)
            async for item in drain_events(sink, respond(self._job, self._req, output, queue_s, sink)):
                yield item
        except GlassboxError as exc:
            record_failure("/generate", exc.type)
            yield ErrorBody(error=ErrorDetail(message=exc.message, type=exc.type, param=exc.param, code=exc.code))
        except asyncio.CancelledError:  # the client went away (the response's disconnect watcher cancels us)
            record_failure("/generate", "cancelled")
            raise
        except Exception:
            log.exception("streaming generation failed")
            record_failure("/generate", "internal_error")
            yield ErrorBody(error=ErrorDetail(message="internal error; it has been logged", type="internal_error"))
        finally:
            await self.close()

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._deadline.cancel()  # the row stops at its next token
            self._task.cancel()
        await self._slot.aclose()


async def open_stream(
    registry: ModelRegistry,
    settings: Settings,
    req: GenerateRequest,
    *,
    serving: Serving,
    deadline: Deadline | None = None,
) -> GenerationStream:
    """Everything that can fail with a status code happens here, before the response starts."""
    slot = contextlib.AsyncExitStack()
    try:
        job = await admit(registry, settings, req, serving, deadline, slot)
    except BaseException:
        await slot.aclose()
        raise
    return GenerationStream(job, req, serving.scheduler(job.lm).batcher, slot)
