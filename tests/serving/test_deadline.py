"""Deadlines: the client may lower the server's limit, never raise it; cancel wakes waiters once."""

from __future__ import annotations

from service.serving.deadline import Deadline


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_deadline_client_can_lower_but_not_raise_the_server_limit() -> None:
    assert Deadline.for_request(30.0, None).timeout_s == 30.0
    assert Deadline.for_request(30.0, 500).timeout_s == 0.5
    assert Deadline.for_request(30.0, 600_000).timeout_s == 30.0


def test_deadline_expires_with_the_clock() -> None:
    clock = FakeClock()
    deadline = Deadline(2.0, clock=clock)
    assert deadline.stop_reason() is None and deadline.remaining() == 2.0
    clock.now += 1.5
    assert not deadline.expired and deadline.remaining() == 0.5
    clock.now += 0.5
    assert deadline.expired and deadline.stop_reason() == "timeout" and deadline.remaining() == 0.0


def test_deadline_cancel_wins_over_timeout_and_calls_back_once() -> None:
    clock = FakeClock()
    deadline = Deadline(1.0, clock=clock)
    calls: list[str] = []
    deadline.on_cancel(lambda: calls.append("a"))
    unregister = deadline.on_cancel(lambda: calls.append("b"))
    unregister()
    clock.now += 5
    deadline.cancel()
    deadline.cancel()
    assert calls == ["a"] and deadline.cancelled and deadline.stop_reason() == "cancelled"
    deadline.on_cancel(lambda: calls.append("late"))  # already cancelled: called at once
    assert calls == ["a", "late"]
