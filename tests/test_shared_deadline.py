"""The deadline of shared (single-flight) work: one waiter leaving does not stop it, the last one does."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from service.errors import ClientClosedRequest, DeadlineExceeded
from service.serving import Deadline
from service.usecases.caching import _SHARED, shared_deadline, wait_own


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


def test_shared_deadline_lasts_until_the_latest_waiters_deadline() -> None:
    now = [0.0]
    short, long_ = Deadline(1.5, clock=lambda: now[0]), Deadline(30, clock=lambda: now[0])
    with contextlib.ExitStack() as stack:
        run = stack.enter_context(shared_deadline("k3", short, reproducible=True))
        assert run.at == 1.5
        stack.enter_context(shared_deadline("k3", long_, reproducible=True))
        now[0] = 2.0  # the first waiter's deadline has passed: the work goes on for the second
        assert not short.remaining() and run.stop_reason() is None and run.remaining() == 28
        now[0] = 30.0
        assert run.stop_reason() == "timeout"


def test_shared_deadline_a_waiter_that_leaves_takes_its_deadline_with_it() -> None:
    short, long_ = Deadline(5), Deadline(100)
    with shared_deadline("k4", short, reproducible=True) as run:
        with shared_deadline("k4", long_, reproducible=True):
            assert run.remaining() > 90
        assert run.remaining() <= 5 and not run.cancelled


def test_shared_deadline_the_last_waiter_timing_out_cancels_the_work() -> None:
    own = Deadline(10)
    try:
        with shared_deadline("k5", own, reproducible=True) as run:
            raise TimeoutError("this waiter gave up")
    except TimeoutError:
        pass
    assert run.cancelled and "k5" not in _SHARED


def test_shared_deadline_nested_flight_follows_its_outer_flights_growth() -> None:
    """A cached /explain nests a cached /generate: the inner work's deadline is the outer one's, live."""
    now = [0.0]
    first, later = Deadline(1, clock=lambda: now[0]), Deadline(20, clock=lambda: now[0])
    with contextlib.ExitStack() as stack:
        outer = stack.enter_context(shared_deadline("explain", first, reproducible=True))
        inner = stack.enter_context(shared_deadline("generate", outer, reproducible=True))
        assert inner.at == 1
        stack.enter_context(shared_deadline("explain", later, reproducible=True))
        assert inner.at == 20 and inner.timeout_s == 20


@pytest.mark.anyio
async def test_wait_own_each_waiter_times_out_alone() -> None:
    work = asyncio.ensure_future(asyncio.sleep(0.3, result="answer"))
    impatient, patient = Deadline(0.05), Deadline(10)
    with pytest.raises(DeadlineExceeded, match=r"0\.05 s"):
        await wait_own(asyncio.shield(work), impatient)
    assert not work.done()  # the shared work goes on
    assert await wait_own(asyncio.shield(work), patient) == "answer"


@pytest.mark.anyio
async def test_wait_own_a_disconnected_waiter_stops_waiting_at_once() -> None:
    work = asyncio.ensure_future(asyncio.sleep(10))
    own = Deadline(10)
    asyncio.get_running_loop().call_later(0.01, own.cancel)
    with pytest.raises(ClientClosedRequest):
        await wait_own(asyncio.shield(work), own)
    assert not work.done()
    work.cancel()
