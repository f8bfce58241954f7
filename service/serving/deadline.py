"""A request's stop conditions: a time limit and the client's disconnect, checked while waiting and per token."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Deadline:
    """When a request's work must stop. The model thread polls :meth:`stop_reason` at every token; waiters
    on the event loop register :meth:`on_cancel` so a disconnect wakes them at once.

    ``cancel`` is called on the event loop (by the disconnect watcher or the stream's cleanup); the flag it
    sets is a ``threading.Event`` so the model thread reads it safely.
    """

    def __init__(self, timeout_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.timeout_s = timeout_s
        self.started = clock()
        self.at = self.started + timeout_s
        self._cancelled = threading.Event()
        self._callbacks: list[Callable[[], None]] = []

    @classmethod
    def for_request(cls, server_timeout_s: float, requested_ms: int | None) -> Deadline:
        """The server's limit, lowered (never raised) by what the client asked for."""
        timeout_s = server_timeout_s if requested_ms is None else min(server_timeout_s, requested_ms / 1000)
        return cls(timeout_s)

    def detached(self) -> Deadline:
        """The same time limit with a cancel flag of its own (for work that several requests share)."""
        copy = Deadline(self.timeout_s, clock=self._clock)
        copy.started, copy.at = self.started, self.at
        return copy

    def remaining(self) -> float:
        return max(0.0, self.at - self._clock())

    def elapsed(self) -> float:
        return self._clock() - self.started

    @property
    def expired(self) -> bool:
        return self._clock() >= self.at

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def stop_reason(self) -> str | None:
        """``"cancelled"``, ``"timeout"`` or None (keep going); the generation finish reasons of the same name."""
        if self._cancelled.is_set():
            return "cancelled"
        if self._clock() >= self.at:
            return "timeout"
        return None

    def cancel(self) -> None:
        """The client is gone: stop queued and running work. Idempotent."""
        if self._cancelled.is_set():
            return
        self._cancelled.set()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` on cancel (at once if already cancelled); returns a function that unregisters it."""
        if self._cancelled.is_set():
            callback()
            return lambda: None
        self._callbacks.append(callback)

        def remove() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return remove
