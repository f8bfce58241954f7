"""The serving machinery of one app, in one object the routes and use cases receive."""

from __future__ import annotations

import asyncio

from service.metrics import INFLIGHT, MODEL_BATCHING, MODEL_INFO, QUEUE_DEPTH
from service.models.loaded import LoadedModel
from service.models.registry import ModelRegistry
from service.serving.admission import Admission
from service.serving.cache_support import cache_support
from service.serving.deadline import Deadline
from service.serving.drain import Drain
from service.serving.scheduler import Scheduler
from service.settings import Settings


class Serving:
    """Admission per model, one scheduler per model (created on first use), deadlines and the drain state."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.admission = Admission(settings.max_concurrency, settings.max_queue)
        self.drain = Drain(settings.drain_timeout_s)
        self._schedulers: dict[str, Scheduler] = {}
        self.closing = False

    def deadline(self, requested_ms: int | None = None) -> Deadline:
        """A deadline starting now: the server's limit, lowered by the client's if it asked for less."""
        return Deadline.for_request(self.settings.request_timeout_s, requested_ms)

    def scheduler(self, lm: LoadedModel) -> Scheduler:
        """The one scheduler of ``lm`` (every piece of its model work goes through it)."""
        scheduler = self._schedulers.get(lm.name)
        if scheduler is None or scheduler.lm is not lm:
            scheduler = self._schedulers[lm.name] = Scheduler(
                lm, max_batch_size=self.settings.max_batch_size, work_share=self.settings.explain_time_share
            )
        return scheduler

    async def close(self) -> None:
        """Stop every model's work at its next unit (what is left is answered 503 shutting down)."""
        self.closing = True
        await asyncio.gather(*(s.close() for s in self._schedulers.values()))
        self._schedulers.clear()


def publish_model_info(registry: ModelRegistry) -> None:
    """``glassbox_model_info`` and ``glassbox_model_batching`` for each loaded model (called once loading
    ends), and the load gauges at 0 so the autoscaling series exist before the first request."""
    for slot in registry.slots:
        lm = slot.model
        if lm is not None:
            dtype = str(lm.dtype).removeprefix("torch.")
            MODEL_INFO.labels(model=lm.name, revision=lm.revision, device=str(lm.device), dtype=dtype).set(1)
            QUEUE_DEPTH.labels(model=lm.name)
            INFLIGHT.labels(model=lm.name)
            MODEL_BATCHING.labels(model=lm.name).set(1 if cache_support(lm.model).batching else 0)
