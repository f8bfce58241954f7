"""A failure in one batch fails its requests cleanly: a cache that passes the can-be-merged check but cannot
be merged (as MiniMax's, whose linear-attention layers hold no keys) and a decode step that raises. Every
request gets an answer, none past its deadline, no admission slot leaks, and later requests succeed."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from transformers.cache_utils import DynamicLayer

from service.engine.generation import GenerationOutput
from service.engine.prompt import build_prompt
from service.engine.sampling import SamplingParams
from service.errors import DeadlineExceeded, GlassboxError
from service.models.loaded import LoadedModel
from service.serving import batcher as batcher_module
from service.serving.batcher import Batcher
from service.serving.deadline import Deadline
from service.serving.kv_batch import is_mergeable
from service.serving.scheduler import Scheduler
from tests.serving.conftest import wait_for
from tests.support.run import generate

GREEDY = SamplingParams(max_new_tokens=8)


@contextlib.contextmanager
def forward_wrapped(lm: LoadedModel, wrapper: Callable[..., Any]) -> Iterator[None]:
    """Route the model's forward (whatever is installed, a slowed one too) through ``wrapper`` for the block."""
    saved = lm.model.__dict__.get("forward")
    forward = lm.model.forward

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        return wrapper(forward, *args, **kwargs)

    lm.model.forward = wrapped  # type: ignore[method-assign]
    try:
        yield
    finally:
        if saved is None:
            del lm.model.forward
        else:
            lm.model.forward = saved  # type: ignore[method-assign]


def keyless_cache(when: Callable[[int], bool] = lambda n: True) -> Callable[..., Any]:
    """A forward wrapper whose solo prefills (the ``n``-th for which ``when(n)``) return a cache with one more
    layer that holds no keys (as MiniMax's linear-attention layers): the model's batching was decided at load
    from its real cache, this one fails to merge, and it still decodes alone."""
    count = {"n": 0}

    def wrapper(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        out = forward(*args, **kwargs)
        if kwargs.get("cache") is None and out.cache is not None:
            count["n"] += 1
            if when(count["n"]):
                out.cache.layers.append(DynamicLayer())
                assert not is_mergeable(out.cache)
        return out

    return wrapper


def ids(lm: LoadedModel, text: str) -> list[int]:
    return build_prompt(lm.tokenizer, prompt=text).ids


async def _run_with_join(batcher: Batcher, first: list[int], second: list[int]) -> list[Any]:
    """``first`` runs (prefilled, one step), then ``second`` joins; ticks by hand until nothing is left."""
    a = asyncio.create_task(batcher.generate(first, GREEDY))
    await asyncio.sleep(0)
    with torch.inference_mode():
        batcher.tick()
    assert batcher.running == 1
    b = asyncio.create_task(batcher.generate(second, GREEDY))
    await asyncio.sleep(0)
    for _ in range(100):
        if not batcher.has_work():
            break
        with torch.inference_mode():
            batcher.tick()
        await asyncio.sleep(0)
    assert not batcher.has_work()
    return await asyncio.wait_for(asyncio.gather(a, b, return_exceptions=True), 5)


@pytest.mark.parametrize("faulty", ["joining", "every"])
def test_batcher_unmergeable_cache_falls_back_to_one_at_a_time(tiny_lm: LoadedModel, faulty: str) -> None:
    """The running row keeps going, the joining one decodes alone after it, both as they would alone."""
    first, second = ids(tiny_lm, "What is the capital of France?"), ids(tiny_lm, "Hello")
    alone = [
        generate(tiny_lm, build_prompt(tiny_lm.tokenizer, prompt=p), GREEDY).ids
        for p in ("What is the capital of France?", "Hello")
    ]
    when = (lambda n: n == 2) if faulty == "joining" else (lambda n: True)
    batcher = Batcher(tiny_lm, max_batch_size=4)
    with forward_wrapped(tiny_lm, keyless_cache(when)):
        results = asyncio.run(_run_with_join(batcher, first, second))
    for result in results:
        assert not isinstance(result, BaseException), result
    outputs: list[GenerationOutput] = [r[0] for r in results]
    assert [o.ids for o in outputs] == alone
    assert batcher._capacity == 1  # one sequence at a time from now on


def test_batcher_failing_decode_step_fails_every_row_and_recovers(tiny_lm: LoadedModel) -> None:
    first, second = ids(tiny_lm, "What is the capital of France?"), ids(tiny_lm, "Hello")
    state = {"fail": True}

    def fail_batched_steps(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if state["fail"] and kwargs.get("cache") is not None and kwargs["input_ids"].shape[0] > 1:
            raise RuntimeError("injected decode failure")
        return forward(*args, **kwargs)

    batcher = Batcher(tiny_lm, max_batch_size=4)
    with forward_wrapped(tiny_lm, fail_batched_steps):
        results = asyncio.run(_run_with_join(batcher, first, second))
        assert all(isinstance(r, GlassboxError) and r.status == 500 for r in results), results
        assert "batched decode step" in str(results[0])
        state["fail"] = False
        again = asyncio.run(_run_with_join(batcher, first, second))
    assert all(not isinstance(r, BaseException) for r in again), again


def _inflight(client: TestClient) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "glassbox_inflight_requests" and sample.labels.get("model") == "tiny":
                return float(sample.value)
    return 0.0


def test_api_unmergeable_cache_answers_everyone_and_frees_every_slot(
    serving_client: Callable[..., TestClient],
) -> None:
    client = serving_client(step_delay_s=0.02, max_concurrency=8)
    lm = client.app.state.registry.get(None)  # type: ignore[attr-defined]
    answers: dict[str, httpx.Response] = {}

    def post(name: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        answers[name] = client.post("/generate", json=body, headers=headers or {})

    with forward_wrapped(lm, keyless_cache()):
        long = threading.Thread(target=post, args=("long", {"prompt": "Hello", "max_new_tokens": 40}))
        long.start()
        wait_for(lambda: _inflight(client) >= 1, 10, "the first generation to start")
        joining = [
            threading.Thread(target=post, args=(f"join{i}", {"prompt": "The capital", "max_new_tokens": 3}))
            for i in range(3)
        ]
        # queued behind a model that now decodes one at a time: its own deadline answers it, in time
        short = threading.Thread(
            target=post,
            args=("deadline", {"prompt": "Paris", "max_new_tokens": 3}, {"X-Request-Timeout-Ms": "300"}),
        )
        for t in [*joining, short]:
            t.start()
        for t in [long, *joining, short]:
            t.join(60)
            assert not t.is_alive(), "a request was never answered"
    assert answers["long"].status_code == 200, answers["long"].text
    for i in range(3):
        assert answers[f"join{i}"].status_code == 200, answers[f"join{i}"].text
    assert answers["deadline"].status_code == 504, answers["deadline"].text
    assert answers["deadline"].elapsed.total_seconds() < 2, answers["deadline"].elapsed
    wait_for(lambda: _inflight(client) == 0, 5, "every admission slot to be freed")
    later = client.post("/generate", json={"prompt": "Hello", "max_new_tokens": 3})
    assert later.status_code == 200, later.text
    assert _inflight(client) == 0


def test_batcher_request_is_answered_by_its_deadline_even_if_the_model_thread_is_stuck(
    tiny_lm: LoadedModel,
) -> None:
    """A forward pass that does not return for long cannot hold a request past its deadline + the grace."""
    release = threading.Event()

    def stuck(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        release.wait(10)
        return forward(*args, **kwargs)

    async def scenario() -> tuple[BaseException | None, float]:
        scheduler = Scheduler(tiny_lm, max_batch_size=4)
        loop = asyncio.get_running_loop()
        started = loop.time()
        error: BaseException | None = None
        try:
            await scheduler.batcher.generate(ids(tiny_lm, "Hello"), GREEDY, deadline=Deadline(0.2))
        except DeadlineExceeded as exc:
            error = exc
        waited = loop.time() - started
        release.set()
        await scheduler.close()
        return error, waited

    with forward_wrapped(tiny_lm, stuck):
        error, waited = asyncio.run(scenario())
    assert isinstance(error, DeadlineExceeded) and error.status == 504
    assert waited < 0.2 + batcher_module._DEADLINE_GRACE_S + 1, waited
