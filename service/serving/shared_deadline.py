"""The deadline of work that several identical requests wait for: it lasts until the latest of its waiters'
deadlines, so one impatient client never cuts short what a patient one is waiting for."""

from __future__ import annotations

from service.serving.deadline import Deadline


class SharedDeadline(Deadline):
    """A :class:`Deadline` whose ``at`` is the latest ``at`` of the waiters currently joined.

    ``at`` is read live (a joined waiter may itself be shared and grow later, as when a cached /explain
    nests a cached /generate); the model thread reads it through :meth:`stop_reason`, so the waiters are
    kept in a tuple that is replaced, never mutated. With no waiter left it keeps the last value.
    Cancelling is the owner's call (when the last waiter leaves early), not any one waiter's.
    """

    def __init__(self, first: Deadline) -> None:
        super().__init__(first.timeout_s, clock=first._clock)
        self.started = first.started
        self._waiters: tuple[Deadline, ...] = ()
        self._last_at = first.at

    @property  # type: ignore[override]
    def at(self) -> float:
        waiters = self._waiters
        if waiters:
            self._last_at = max(w.at for w in waiters)
        return self._last_at

    @at.setter
    def at(self, value: float) -> None:  # Deadline.__init__ assigns it
        self._last_at = value

    @property  # type: ignore[override]
    def timeout_s(self) -> float:
        return self.at - self.started

    @timeout_s.setter
    def timeout_s(self, value: float) -> None:  # Deadline.__init__ assigns it; ``at`` says it all
        pass

    @property
    def waiters(self) -> int:
        return len(self._waiters)

    def join(self, waiter: Deadline) -> None:
        self._waiters = (*self._waiters, waiter)
        self._last_at = max(self._last_at, waiter.at)

    def leave(self, waiter: Deadline) -> None:
        """Remove one waiter; the remaining ones' latest deadline applies from now on."""
        kept = list(self._waiters)
        if waiter in kept:
            kept.remove(waiter)
        if kept:
            self._last_at = max(w.at for w in kept)
        self._waiters = tuple(kept)
