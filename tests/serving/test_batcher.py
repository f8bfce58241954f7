"""Continuous batching on the tiny model: outputs alone vs in a batch, per-row stops, cancel, deadline, OOM."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import torch
from prometheus_client import REGISTRY

from service.engine.generation import GeneratedToken, GenerationOutput
from service.engine.prompt import build_prompt
from service.engine.sampling import SamplingParams
from service.errors import OutOfMemory
from service.models.loaded import LoadedModel
from service.serving.batcher import Batcher
from service.serving.cache_support import CacheSupport
from service.serving.deadline import Deadline
from service.serving.scheduler import Scheduler
from tests.serving.conftest import oom_when, patched_forward
from tests.support.run import generate

PROMPTS = [
    "What is the capital of France?",
    "Hello",
    "The Eiffel Tower was designed by Gustave Eiffel and built in",
    "Café, naïve, 東京 and emoji",
    "Glassbox explains why a language model said what it said.",
    "user assistant",
]
PARAMS = [
    SamplingParams(max_new_tokens=30),
    SamplingParams(max_new_tokens=30, temperature=1.0, seed=3, top_logprobs=3),
    SamplingParams(max_new_tokens=25, temperature=0.8, top_p=0.9, seed=5),
    SamplingParams(max_new_tokens=12),
    SamplingParams(max_new_tokens=30, temperature=1.3, top_k=20, seed=9),
    SamplingParams(max_new_tokens=30, temperature=1.0, seed=1, stop=("o",)),
]


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(fn())  # type: ignore[arg-type]


def ids(lm: LoadedModel, text: str) -> list[int]:
    return build_prompt(lm.tokenizer, prompt=text).ids


def batch_sizes(batcher: Batcher) -> list[int]:
    """Record the batch size at every decode step of ``batcher`` into the returned list."""
    sizes: list[int] = []
    step = batcher._step

    def spy() -> None:
        sizes.append(batcher.running)
        step()

    batcher._step = spy  # type: ignore[method-assign]
    return sizes


def same_output(a: GenerationOutput, b: GenerationOutput) -> None:
    assert a.ids == b.ids and a.text == b.text and a.finish_reason == b.finish_reason and a.seed == b.seed
    for x, y in zip(a.tokens, b.tokens, strict=True):
        assert (x.text, x.offset) == (y.text, y.offset)
        assert x.logprob == pytest.approx(y.logprob, abs=1e-4)
        assert [i for i, _ in x.top] == [i for i, _ in y.top]


def test_batcher_output_is_the_same_alone_and_inside_a_batch(tiny_lm: LoadedModel) -> None:
    """Greedy and seeded requests, with stops and alternatives, give identical tokens alone or batched."""

    async def scenario() -> tuple[list[GenerationOutput], list[GenerationOutput], list[int]]:
        scheduler = Scheduler(tiny_lm, max_batch_size=8)
        batcher = scheduler.batcher
        alone = [(await batcher.generate(ids(tiny_lm, p), sp))[0] for p, sp in zip(PROMPTS, PARAMS, strict=True)]
        sizes = batch_sizes(batcher)

        async def staggered(i: int) -> GenerationOutput:
            await asyncio.sleep(0.002 * i)  # arrivals join a batch that is already decoding
            return (await batcher.generate(ids(tiny_lm, PROMPTS[i]), PARAMS[i]))[0]

        together = await asyncio.gather(*(staggered(i) for i in range(len(PROMPTS))))
        await scheduler.close()
        return alone, list(together), sizes

    alone, together, sizes = run(scenario)
    assert max(sizes) >= 3, f"requests were not batched: {sizes}"
    for a, b in zip(alone, together, strict=True):
        same_output(a, b)
    assert any(out.finish_reason == "stop_sequence" for out in alone)
    assert alone[3].finish_reason in ("length", "stop") and len(alone[3].tokens) <= 12


def test_batcher_matches_the_single_sequence_decode_loop(tiny_lm: LoadedModel) -> None:
    async def scenario() -> list[GenerationOutput]:
        scheduler = Scheduler(tiny_lm, max_batch_size=4)
        batcher = scheduler.batcher
        outs = await asyncio.gather(
            *(batcher.generate(ids(tiny_lm, p), sp) for p, sp in zip(PROMPTS[:4], PARAMS[:4], strict=True))
        )
        await scheduler.close()
        return [out for out, _ in outs]

    batched = run(scenario)
    for text, params, out in zip(PROMPTS, PARAMS, batched, strict=False):
        same_output(generate(tiny_lm, build_prompt(tiny_lm.tokenizer, prompt=text), params), out)


def test_batcher_streams_each_rows_tokens_once_in_order(tiny_lm: LoadedModel) -> None:
    streamed: dict[int, list[GeneratedToken]] = {i: [] for i in range(3)}

    async def scenario() -> list[GenerationOutput]:
        scheduler = Scheduler(tiny_lm, max_batch_size=4)
        batcher = scheduler.batcher
        outs = await asyncio.gather(
            *(batcher.generate(ids(tiny_lm, PROMPTS[i]), PARAMS[i], on_token=streamed[i].append) for i in range(3))
        )
        await scheduler.close()
        return [out for out, _ in outs]

    for i, out in enumerate(run(scenario)):
        assert [t.id for t in streamed[i]] == out.ids


def test_batcher_model_work_runs_on_the_model_thread(tiny_lm: LoadedModel) -> None:
    threads: set[str] = set()

    def record(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        threads.add(threading.current_thread().name)
        return forward(*args, **kwargs)

    async def scenario() -> None:
        scheduler = Scheduler(tiny_lm, max_batch_size=4)
        batcher = scheduler.batcher
        await asyncio.gather(*(batcher.generate(ids(tiny_lm, p), PARAMS[0]) for p in PROMPTS[:3]))
        await scheduler.close()

    with patched_forward(tiny_lm, record):
        run(scenario)
    assert threads and all(name.startswith(f"model-{tiny_lm.name}") for name in threads), threads


def test_batcher_cancel_stops_only_that_row_at_its_next_token(tiny_lm: LoadedModel) -> None:
    async def scenario() -> tuple[GenerationOutput, GenerationOutput, int]:
        scheduler = Scheduler(tiny_lm, max_batch_size=4)
        batcher = scheduler.batcher
        deadline = Deadline(60)
        seen: list[GeneratedToken] = []

        def on_token(token: GeneratedToken) -> None:
            seen.append(token)
            if len(seen) == 3:
                deadline.cancel()  # from the model thread, like a disconnect arriving mid-step

        long = SamplingParams(max_new_tokens=200, temperature=1.0, seed=4)
        cancelled, other = await asyncio.gather(
            batcher.generate(ids(tiny_lm, "Hello"), long, deadline=deadline, on_token=on_token),
            batcher.generate(ids(tiny_lm, "Hello"), SamplingParams(max_new_tokens=40, temperature=1.0, seed=4)),
        )
        await scheduler.close()
        return cancelled[0], other[0], len(seen)

    cancelled, other, seen = run(scenario)
    assert cancelled.finish_reason == "cancelled" and len(cancelled.tokens) <= 4 and seen <= 4
    assert other.finish_reason in ("length", "stop") and other.ids[: len(cancelled.ids)] == cancelled.ids


def test_batcher_deadline_stops_generation_with_timeout(tiny_lm: LoadedModel) -> None:
    def slow(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        threading.Event().wait(0.02)
        return forward(*args, **kwargs)

    async def scenario() -> GenerationOutput:
        scheduler = Scheduler(tiny_lm, max_batch_size=4)
        batcher = scheduler.batcher
        out, _ = await batcher.generate(
            ids(tiny_lm, "Hello"), SamplingParams(max_new_tokens=200, temperature=1.0, seed=1), deadline=Deadline(0.2)
        )
        await scheduler.close()
        return out

    with patched_forward(tiny_lm, slow):
        out = run(scenario)
    assert out.finish_reason == "timeout" and 0 < len(out.tokens) < 200


def test_batcher_queued_request_past_its_deadline_costs_no_model_time(tiny_lm: LoadedModel) -> None:
    calls: list[int] = []

    def count(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return forward(*args, **kwargs)

    async def scenario() -> GenerationOutput:
        scheduler = Scheduler(tiny_lm, max_batch_size=4)
        batcher = scheduler.batcher
        deadline = Deadline(60)
        deadline.cancel()
        out, _ = await batcher.generate(ids(tiny_lm, "Hello"), PARAMS[0], deadline=deadline)
        await scheduler.close()
        return out

    with patched_forward(tiny_lm, count):
        out = run(scenario)
    assert out.finish_reason == "cancelled" and out.tokens == [] and calls == []


def test_batcher_oom_in_one_prefill_fails_only_that_request(tiny_lm: LoadedModel) -> None:
    marker = ids(tiny_lm, "Café, naïve, 東京 and emoji")
    is_marked = oom_when(lambda kw: kw["input_ids"].shape[-1] > 1 and kw["input_ids"][0].tolist() == marker)

    async def scenario() -> list[Any]:
        scheduler = Scheduler(tiny_lm, max_batch_size=4)
        batcher = scheduler.batcher
        results = await asyncio.gather(
            batcher.generate(ids(tiny_lm, "Hello"), PARAMS[0]),
            batcher.generate(marker, PARAMS[0]),
            batcher.generate(ids(tiny_lm, "user assistant"), PARAMS[1]),
            return_exceptions=True,
        )
        results.append(await batcher.generate(ids(tiny_lm, "Hello"), PARAMS[0]))
        await scheduler.close()
        return results

    with patched_forward(tiny_lm, is_marked):
        first, marked, third, after = run(scenario)
    assert isinstance(marked, OutOfMemory) and marked.status == 503 and "memory" in marked.message
    assert isinstance(first, tuple) and isinstance(third, tuple) and isinstance(after, tuple)
    assert after[0].ids == first[0].ids


def test_batcher_oom_in_a_decode_step_fails_that_batch_and_recovers(tiny_lm: LoadedModel) -> None:
    armed = [True]

    def once(kwargs: dict[str, Any]) -> bool:
        if armed[0] and kwargs["input_ids"].shape[-1] == 1:
            armed[0] = False
            return True
        return False

    async def scenario() -> tuple[Any, GenerationOutput]:
        scheduler = Scheduler(tiny_lm, max_batch_size=4)
        batcher = scheduler.batcher
        failed = await asyncio.gather(batcher.generate(ids(tiny_lm, "Hello"), PARAMS[0]), return_exceptions=True)
        after, _ = await batcher.generate(ids(tiny_lm, "Hello"), PARAMS[0])
        await scheduler.close()
        return failed[0], after

    with patched_forward(tiny_lm, oom_when(once)):
        failed, after = run(scenario)
    assert isinstance(failed, OutOfMemory)
    assert after.ids == generate(tiny_lm, build_prompt(tiny_lm.tokenizer, prompt="Hello"), PARAMS[0]).ids


def test_batcher_runs_unbatchable_caches_one_at_a_time(tiny_lm: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model whose cache does not batch (decided once, when the batcher is built) decodes one at a time."""
    serial = CacheSupport("cache", False, "cache_class", "a cache class the batch does not know")
    monkeypatch.setattr("service.serving.batcher.cache_support", lambda model: serial)
    before = REGISTRY.get_sample_value("glassbox_serial_decodes_total", {"model": "tiny", "reason": "cache_class"})

    async def scenario() -> tuple[list[GenerationOutput], list[int]]:
        scheduler = Scheduler(tiny_lm, max_batch_size=8)
        batcher = scheduler.batcher
        sizes = batch_sizes(batcher)
        outs = await asyncio.gather(*(batcher.generate(ids(tiny_lm, p), PARAMS[0]) for p in PROMPTS[:3]))
        await scheduler.close()
        return [out for out, _ in outs], sizes

    outs, sizes = run(scenario)
    assert sizes and max(sizes) == 1
    after = REGISTRY.get_sample_value("glassbox_serial_decodes_total", {"model": "tiny", "reason": "cache_class"})
    assert (after or 0) - (before or 0) == 3
    assert REGISTRY.get_sample_value("glassbox_model_batching", {"model": "tiny"}) == 0
    monkeypatch.undo()
    for text, out in zip(PROMPTS, outs, strict=False):
        assert out.ids == generate(tiny_lm, build_prompt(tiny_lm.tokenizer, prompt=text), PARAMS[0]).ids
    assert REGISTRY.get_sample_value("glassbox_model_batching", {"model": "tiny"}) == 1


def test_batcher_close_fails_waiting_requests_with_503(tiny_lm: LoadedModel) -> None:
    async def scenario() -> BaseException | None:
        scheduler = Scheduler(tiny_lm, max_batch_size=1)
        batcher = scheduler.batcher
        await scheduler.close()
        try:
            await batcher.generate(ids(tiny_lm, "Hello"), PARAMS[0])
        except Exception as exc:
            return exc
        return None

    error = run(scenario)
    assert error is not None and getattr(error, "status", None) == 503


def test_kv_batch_pads_merges_and_trims(tiny_lm: LoadedModel) -> None:
    from service.serving.kv_batch import KVBatch

    with torch.inference_mode():
        batch = KVBatch(tiny_lm.device)
        lengths = [3, 7, 5]
        for n in lengths:
            out = tiny_lm.model(input_ids=torch.arange(10, 10 + n).unsqueeze(0), use_cache=True)
            batch.add(out.cache, n)
        assert batch.columns == 7 and batch.mask.sum(dim=1).tolist() == lengths
        assert batch.mask[0].tolist() == [0, 0, 0, 0, 1, 1, 1]
        keys = batch.cache.layers[0].keys  # type: ignore[union-attr]
        assert keys.shape[0] == 3 and keys.shape[2] == 7 and bool((keys[0, :, :4] == 0).all())
        inputs = batch.step_inputs([1, 2, 3])
        assert inputs["position_ids"].tolist() == [[3], [7], [5]]  # type: ignore[attr-defined]
        tiny_lm.model(**inputs)
        batch.keep([0, 2])  # the longest row leaves: two padding-only columns go
        assert batch.lengths == [4, 6] and batch.columns == 6
        assert batch.cache.layers[0].keys.shape[2] == 6  # type: ignore[union-attr]
        batch.keep([])
        assert len(batch) == 0 and batch.cache is None
