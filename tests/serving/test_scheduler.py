"""The scheduler on the tiny model: explanations interleave with generation without changing either's
results, and stop at a checkpoint on deadline, disconnect and shutdown."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

from service.engine.prompt import build_prompt
from service.engine.sampling import SamplingParams
from service.errors import ClientClosedRequest, DeadlineExceeded, ShuttingDown
from service.explain import engine
from service.explain.options import IntegratedGradientsParams
from service.explain.task import Task
from service.models.loaded import LoadedModel
from service.serving.deadline import Deadline
from service.serving.scheduler import Checkpoint, Scheduler

PARAMS = SamplingParams(max_new_tokens=40, temperature=1.0, seed=7, top_logprobs=2)


def task(lm: LoadedModel) -> Task:
    ids = build_prompt(lm.tokenizer, prompt="The Eiffel Tower was designed by Gustave Eiffel and built in").ids
    target = build_prompt(lm.tokenizer, prompt=" Paris is the capital").ids
    seq = tuple(ids) + tuple(target)
    methods: dict[str, Any] = {
        "input_x_gradient": None,
        "integrated_gradients": IntegratedGradientsParams(n_steps=8),
        "occlusion": None,
    }
    return Task(
        ids=seq,
        prompt_len=len(ids),
        rows=tuple(range(len(ids), len(seq))),
        span=(len(ids), len(seq)),
        scopes=frozenset({"tokens", "sequence"}),
        units=tuple((p,) for p in range(len(ids))),
        methods=methods,
    )


def test_explanation_and_generation_are_identical_alone_and_interleaved(tiny_lm: LoadedModel) -> None:
    work = task(tiny_lm)
    prompt = build_prompt(tiny_lm.tokenizer, prompt="Hello").ids

    async def scenario() -> tuple[Any, Any, Any, Any, int]:
        scheduler = Scheduler(tiny_lm, max_batch_size=4, work_share=0.05)  # many decode ticks per explanation
        ticks = 0
        tick = scheduler.batcher.tick

        def counting() -> None:
            nonlocal ticks
            ticks += scheduler.busy  # a tick run at one of the explanation's checkpoints
            tick()

        scheduler.batcher.tick = counting  # type: ignore[method-assign]
        try:
            alone = await scheduler.run(lambda cp: engine.explain(tiny_lm.model, work, cp), deadline=None)
            generated_alone, _ = await scheduler.batcher.generate(prompt, PARAMS)
            generation = asyncio.ensure_future(scheduler.batcher.generate(prompt, PARAMS))
            await asyncio.sleep(0.01)  # the row is decoding
            together = await scheduler.run(lambda cp: engine.explain(tiny_lm.model, work, cp), deadline=None)
            generated_together, _ = await generation
            return alone, together, generated_alone, generated_together, ticks
        finally:
            await scheduler.close()

    alone, together, gen_alone, gen_together, ticks = asyncio.run(scenario())
    assert ticks > 0, "no decode step ran inside the explanation"
    for name, out in alone.outputs.items():
        other = together.outputs[name]
        for a, b in ((out.tokens, other.tokens), (out.sequence, other.sequence)):
            assert (a is None) == (b is None)
            if a is not None:
                np.testing.assert_array_equal(a, b)
    assert gen_alone.ids == gen_together.ids
    assert [t.logprob for t in gen_alone.tokens] == [t.logprob for t in gen_together.tokens]


def _endless(stop: threading.Event) -> Any:
    def work(checkpoint: Checkpoint) -> None:
        while not stop.is_set():
            checkpoint()

    return work


@pytest.mark.parametrize("how", ["deadline", "disconnect", "shutdown"])
def test_work_stops_at_its_next_checkpoint(tiny_lm: LoadedModel, how: str) -> None:
    stop = threading.Event()

    async def scenario() -> BaseException | None:
        scheduler = Scheduler(tiny_lm, max_batch_size=2)
        deadline = Deadline(0.2 if how == "deadline" else 60)
        running = asyncio.ensure_future(scheduler.run(_endless(stop), deadline=deadline))
        await asyncio.sleep(0.05)
        if how == "disconnect":
            deadline.cancel()
        elif how == "shutdown":
            await scheduler.close()
        try:
            await asyncio.wait_for(running, 5)
        except BaseException as exc:
            return exc
        finally:
            stop.set()
            await scheduler.close()
        return None

    error = asyncio.run(scenario())
    expected = {"deadline": DeadlineExceeded, "disconnect": ClientClosedRequest, "shutdown": ShuttingDown}[how]
    assert isinstance(error, expected), error


def test_queued_work_answers_its_deadline_while_other_work_runs(tiny_lm: LoadedModel) -> None:
    stop = threading.Event()

    async def scenario() -> tuple[BaseException | None, bool]:
        scheduler = Scheduler(tiny_lm, max_batch_size=2)
        first = asyncio.ensure_future(scheduler.run(_endless(stop), deadline=Deadline(60)))
        await asyncio.sleep(0.05)
        try:
            await scheduler.run(lambda cp: None, deadline=Deadline(0.2))
            error = None
        except DeadlineExceeded as exc:
            error = exc
        still_running = not first.done()
        stop.set()
        await first
        await scheduler.close()
        return error, still_running

    error, still_running = asyncio.run(scenario())
    assert isinstance(error, DeadlineExceeded) and still_running


def test_an_uninterruptible_stretch_is_repaid_with_several_decode_ticks(tiny_lm: LoadedModel) -> None:
    """Time share is an account: after work ran 10 ms without an interleaving checkpoint (as a vmapped
    backward pass does), generation gets about twice that before the work goes on, not a single tick."""
    prompt = build_prompt(tiny_lm.tokenizer, prompt="Hello").ids
    params = SamplingParams(max_new_tokens=200, temperature=0.0)
    turns: list[int] = []

    def work(checkpoint: Checkpoint) -> None:
        import time

        for _ in range(3):
            busy_until = time.perf_counter() + 0.01
            while time.perf_counter() < busy_until:
                checkpoint(interleave=False)  # inside a backward pass: stop checks only
            before = ticks
            checkpoint()
            turns.append(ticks - before)

    ticks = 0

    async def scenario() -> None:
        nonlocal ticks
        scheduler = Scheduler(tiny_lm, max_batch_size=4)  # the default share: work 1/3, generation 2/3
        tick = scheduler.batcher.tick

        def counting() -> None:
            nonlocal ticks
            ticks += 1
            tick()

        scheduler.batcher.tick = counting  # type: ignore[method-assign]
        try:
            generation = asyncio.ensure_future(scheduler.batcher.generate(prompt, params))
            await asyncio.sleep(0.05)  # the row is decoding
            await scheduler.run(work, deadline=None)
            generation.cancel()
        finally:
            await scheduler.close()

    asyncio.run(scenario())
    assert len(turns) == 3
    assert min(turns) >= 2, turns  # one tick per checkpoint was the old rule
