"""Graceful shutdown state: after SIGTERM, readiness fails at once, new work is refused, and the process
exits when in-flight requests finish or the drain timeout passes (whichever is first)."""

from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger(__name__)


class Drain:
    """Counts requests in flight and says when shutting down may proceed.

    Plain attributes on purpose: ``begin`` runs inside a signal handler (between two bytecodes of the event
    loop's thread), where only setting flags is safe; everything else runs on the event loop.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        #: Requests doing work (their body has arrived): only these hold the drain open.
        self.inflight = 0
        self.started_at: float | None = None
        self._warned = False
        self._cut: asyncio.Event | None = None

    def cut_event(self) -> asyncio.Event:
        """Set when the drain ends: whatever is still open is answered 503 ``shutting_down`` (event loop only)."""
        if self._cut is None:
            self._cut = asyncio.Event()
        return self._cut

    def cut(self) -> None:
        """The drain is over: requests still open (working past the timeout, or bodies still arriving) end
        now with the documented 503 instead of being dropped by the server's shutdown."""
        self.cut_event().set()

    @property
    def draining(self) -> bool:
        return self.started_at is not None

    def begin(self) -> None:
        if self.started_at is None:
            self.started_at = time.monotonic()

    def finished(self) -> bool:
        """True once draining and nothing is in flight, or the timeout has passed."""
        if self.started_at is None:
            return False
        if self.inflight <= 0:
            return True
        if time.monotonic() - self.started_at >= self.timeout_s:
            if self._warned:
                return True
            self._warned = True
            log.warning("drain timeout of %.0f s passed with %d request(s) in flight", self.timeout_s, self.inflight)
            return True
        return False
