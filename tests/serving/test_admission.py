"""Admission: bounded slots and queue per model, 429 past them, FIFO hand-over, and clean exits."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY

from service.errors import ClientClosedRequest, DeadlineExceeded, Overloaded
from service.serving.admission import Admission
from service.serving.deadline import Deadline


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(fn())  # type: ignore[arg-type]


def gauge(name: str, model: str) -> float:
    return REGISTRY.get_sample_value(name, {"model": model}) or 0.0


async def hold(admission: Admission, model: str, release: asyncio.Event, log: list[str], tag: str) -> None:
    async with admission.slot(model):
        log.append(tag)
        await release.wait()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_admission_bounds_running_and_queued_then_429_with_retry_after() -> None:
    async def scenario() -> None:
        admission = Admission(max_concurrency=2, max_queue=1)
        release, log = asyncio.Event(), []
        tasks = [asyncio.create_task(hold(admission, "m-429", release, log, str(i))) for i in range(3)]
        await settle()
        assert log == ["0", "1"] and admission.load("m-429") == (2, 1)
        assert gauge("glassbox_inflight_requests", "m-429") == 2 and gauge("glassbox_queue_depth", "m-429") == 1
        with pytest.raises(Overloaded) as info:
            async with admission.slot("m-429"):
                pass
        assert info.value.status == 429 and int(info.value.headers["Retry-After"]) >= 1
        assert "2 running, 1 waiting" in info.value.message
        release.set()
        await asyncio.gather(*tasks)
        assert log == ["0", "1", "2"] and admission.load("m-429") == (0, 0)
        assert gauge("glassbox_inflight_requests", "m-429") == 0 and gauge("glassbox_queue_depth", "m-429") == 0

    run(scenario)


def test_admission_models_have_separate_pools() -> None:
    async def scenario() -> None:
        admission = Admission(max_concurrency=1, max_queue=0)
        release, log = asyncio.Event(), []
        task = asyncio.create_task(hold(admission, "m-a", release, log, "a"))
        await settle()
        async with admission.slot("m-b"):
            log.append("b")
        release.set()
        await task
        assert sorted(log) == ["a", "b"]

    run(scenario)


def test_admission_hands_slots_over_in_arrival_order() -> None:
    async def scenario() -> None:
        admission = Admission(max_concurrency=1, max_queue=10)
        release, log = asyncio.Event(), []
        first = asyncio.create_task(hold(admission, "m-fifo", release, log, "first"))
        await settle()
        waiters = []
        for i in range(4):
            waiters.append(asyncio.create_task(hold(admission, "m-fifo", asyncio.Event(), log, f"w{i}")))
            await settle()
        release.set()
        await first
        await settle()
        assert log == ["first", "w0"]
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        assert admission.load("m-fifo") == (0, 0)

    run(scenario)


def test_admission_deadline_in_queue_is_504_and_frees_the_place() -> None:
    async def scenario() -> None:
        admission = Admission(max_concurrency=1, max_queue=1)
        release, log = asyncio.Event(), []
        task = asyncio.create_task(hold(admission, "m-504", release, log, "holder"))
        await settle()
        with pytest.raises(DeadlineExceeded):
            async with admission.slot("m-504", Deadline(0.05)):
                pass
        assert admission.load("m-504") == (1, 0)
        release.set()
        await task
        assert admission.load("m-504") == (0, 0)

    run(scenario)


def test_admission_client_leaving_the_queue_frees_its_place_at_once() -> None:
    async def scenario() -> None:
        admission = Admission(max_concurrency=1, max_queue=1)
        release, log = asyncio.Event(), []
        task = asyncio.create_task(hold(admission, "m-gone", release, log, "holder"))
        await settle()
        deadline = Deadline(60)

        async def queued() -> None:
            async with admission.slot("m-gone", deadline):
                log.append("queued ran")

        waiter = asyncio.create_task(queued())
        await settle()
        assert admission.load("m-gone") == (1, 1)
        deadline.cancel()  # what the disconnect watcher does
        with pytest.raises(ClientClosedRequest):
            await waiter
        assert admission.load("m-gone") == (1, 0)
        release.set()
        await task
        assert log == ["holder"] and admission.load("m-gone") == (0, 0)

    run(scenario)


def test_admission_cancelled_waiter_passes_a_handed_over_slot_on() -> None:
    async def scenario() -> None:
        admission = Admission(max_concurrency=1, max_queue=5)
        release, log = asyncio.Event(), []
        doomed: asyncio.Task[None] | None = None

        async def holder() -> None:
            async with admission.slot("m-pass"):
                log.append("holder")
                await release.wait()
            assert doomed is not None
            doomed.cancel()  # the slot was just handed to `doomed`, which has not run yet

        first = asyncio.create_task(holder())
        await settle()
        doomed = asyncio.create_task(hold(admission, "m-pass", asyncio.Event(), log, "doomed"))
        await settle()
        last = asyncio.create_task(hold(admission, "m-pass", asyncio.Event(), log, "last"))
        await settle()
        release.set()
        await asyncio.gather(first, doomed, return_exceptions=True)
        await settle()
        assert log == ["holder", "last"] and admission.load("m-pass") == (1, 0)
        last.cancel()
        await asyncio.gather(last, return_exceptions=True)
        assert admission.load("m-pass") == (0, 0)

    run(scenario)
