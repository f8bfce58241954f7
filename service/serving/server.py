"""uvicorn with a drain phase: SIGTERM turns readiness 503 and refuses new work while the listener stays
open (probes and late requests get a clear answer, not a refused connection); once in-flight requests end
or the drain timeout passes, uvicorn's normal shutdown runs and the process exits 0."""

from __future__ import annotations

import logging
import signal
from types import FrameType

import uvicorn

from service.observability.tracing import EXPORT_TIMEOUT_S
from service.serving.drain import Drain

log = logging.getLogger(__name__)

#: After draining, how long uvicorn may take to close connections before cancelling what is left.
CLOSE_TIMEOUT_S = 3
#: The most the process takes from the drain's end to its exit: closing connections, then the lifespan's
#: shutdown (model work failed at its next unit, a bounded trace flush of EXPORT_TIMEOUT_S + 1, the cache).
EXIT_BUDGET_S = CLOSE_TIMEOUT_S + EXPORT_TIMEOUT_S + 1 + 2


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain

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
            log.info("drained (%d request(s) still in flight); shutting down", self.drain.inflight)
            self.drain.cut()  # what is still open gets the 503 body before uvicorn closes connections
            self.should_exit = True
        return await super().on_tick(counter)
