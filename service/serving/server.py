"""uvicorn with a drain phase: SIGTERM turns readiness 503 and refuses new work while the listener stays
open (probes and late requests get a clear answer, not a refused connection); once in-flight requests end,
uvicorn's normal shutdown runs and the process exits 0. If the drain timeout passes first, the model work
still running is stopped at its next unit (its requests answered 503 ``shutting_down``), then the same."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from types import FrameType

import uvicorn

from service.observability.tracing import EXPORT_TIMEOUT_S
from service.serving.drain import Drain

log = logging.getLogger(__name__)

#: After stopping the remaining work at the drain timeout, how long its requests get to send their 503.
STOP_GRACE_S = 3.0
#: After draining, how long uvicorn may take to close connections before cancelling what is left.
CLOSE_TIMEOUT_S = 3
#: The most the process takes from the drain's end to its exit: closing connections, then the lifespan's
#: shutdown (model work failed at its next unit, a bounded trace flush of EXPORT_TIMEOUT_S + 1, the cache).
EXIT_BUDGET_S = CLOSE_TIMEOUT_S + EXPORT_TIMEOUT_S + 1 + 2


class DrainingServer(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, drain: Drain, stop_work: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        super().__init__(config)
        self.drain = drain
        self._stop_work = stop_work
        self._stopping: asyncio.Future[None] | None = None
        self._stop_started = 0.0

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First signal: start draining. Second: uvicorn's shutdown now (SIGINT twice: force quit).

        Not recorded in ``_captured_signals``: uvicorn would re-raise it after shutdown and the process
        would die by SIGTERM (exit 143) instead of exiting 0.
        """
        if not self.drain.draining:
            self.drain.begin()
            log.info("signal %s: draining (up to %.0f s)", signal.Signals(sig).name, self.drain.timeout_s)
            return
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if not self.should_exit and self.drain.finished():
            if self.drain.inflight > 0 and self._stop_work is not None and self._stopping is None:
                log.info("drain timeout: stopping the model work of %d request(s)", self.drain.inflight)
                self._stopping = asyncio.ensure_future(self._stop_work())
                self._stop_started = time.monotonic()
            elif self._stopping is None or self.drain.inflight <= 0 or self._grace_over():
                log.info("drained (%d request(s) still in flight); shutting down", self.drain.inflight)
                self.drain.cut()  # what is still open gets the 503 body before uvicorn closes connections
                self.should_exit = True
        return await super().on_tick(counter)

    def _grace_over(self) -> bool:
        return time.monotonic() - self._stop_started >= STOP_GRACE_S
