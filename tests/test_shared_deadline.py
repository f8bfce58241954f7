"""The deadline of shared (single-flight) work: one waiter leaving does not stop it, the last one does."""

from __future__ import annotations

import contextlib

from service.serving import Deadline
from service.usecases.caching import _SHARED, shared_deadline


def test_shared_deadline_unshareable_work_keeps_the_request_deadline() -> None:
    own = Deadline(10)
    with shared_deadline("k0", own, reproducible=False) as run:
        assert run is own


def test_shared_deadline_survives_one_of_two_disconnects_and_stops_with_the_last() -> None:
    first, second = Deadline(10), Deadline(10)
    with contextlib.ExitStack() as stack:
        run_a = stack.enter_context(shared_deadline("k1", first, reproducible=True))
        run_b = stack.enter_context(shared_deadline("k1", second, reproducible=True))
        assert run_a is run_b and run_a is not first
        first.cancel()
        assert not run_a.cancelled
        second.cancel()
        assert run_a.cancelled
    assert "k1" not in _SHARED


def test_shared_deadline_normal_completion_cancels_nothing() -> None:
    own = Deadline(10)
    with shared_deadline("k2", own, reproducible=True) as run:
        pass
    assert not run.cancelled and "k2" not in _SHARED
    own.cancel()  # a late disconnect after the response must not reach the finished work
    assert not run.cancelled


def test_shared_deadline_keeps_the_first_waiters_time_limit() -> None:
    with shared_deadline("k3", Deadline(5), reproducible=True) as run:
        assert 4 < run.remaining() <= 5
