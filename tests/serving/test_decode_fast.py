"""The fast decode loop: the batched chooser against the per-row reference, the preallocated KV batch
against a concatenating one, one read-back per step, joins and leaves that copy no whole cache, and
orjson response bodies."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any, cast

import pytest
import torch
import torch.nn.functional as F
from fastapi.responses import JSONResponse
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from service.api.json_body import OrjsonResponse
from service.engine.prompt import build_prompt
from service.engine.sampling import Pick, SamplingParams, choose, pick
from service.models.loaded import LoadedModel
from service.serving.cache_support import SerialRow
from service.serving.kv_batch import KVBatch
from service.serving.scheduler import Scheduler
from tests.serving.conftest import patched_forward

ROWS = [
    SamplingParams(),
    SamplingParams(temperature=1.0, seed=3, top_logprobs=3),
    SamplingParams(temperature=0.8, top_p=0.9, seed=5),
    SamplingParams(top_logprobs=5),
    SamplingParams(temperature=1.3, top_k=20, seed=9, top_logprobs=1),
    SamplingParams(temperature=5e-7, seed=1),
    SamplingParams(temperature=1.0, top_p=0.3, top_k=50, seed=2),
]


def generator(params: SamplingParams) -> torch.Generator | None:
    return None if params.greedy else torch.Generator().manual_seed(params.seed or 0)


def reference(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator | None) -> Pick:
    """What the decode loop did per row before: choose, then a 1-D log_softmax and topk."""
    logits = logits.float()
    token = choose(logits, params, gen)
    logprobs = torch.log_softmax(logits, dim=-1)
    top: list[tuple[int, float]] = []
    if params.top_logprobs:
        values, indices = torch.topk(logprobs, params.top_logprobs)
        top = list(zip(indices.tolist(), values.tolist(), strict=True))
    return Pick(token, float(logprobs[token]), top)


def test_pick_equals_the_per_row_reference_step_after_step() -> None:
    torch.manual_seed(0)
    ours = [generator(p) for p in ROWS]
    theirs = [generator(p) for p in ROWS]
    for _ in range(20):  # the generators advance in step
        logits = torch.randn(len(ROWS), 1000) * 3
        batched = pick(logits, list(zip(ROWS, ours, strict=True)))
        for row, params in enumerate(ROWS):
            assert batched[row] == reference(logits[row], params, theirs[row]), (row, params)


def test_pick_gives_a_seeded_row_the_same_tokens_alone_and_in_any_batch() -> None:
    torch.manual_seed(1)
    logits = torch.randn(30, len(ROWS), 500)
    target = ROWS[2]
    alone_gen, batch_gen = generator(target), generator(target)
    others = [generator(p) for p in ROWS]
    for step in range(30):
        alone = pick(logits[step, 2:3], [(target, alone_gen)])[0]
        order = list(range(len(ROWS)))
        random.Random(step).shuffle(order)  # the row sits anywhere in the batch
        samplers = [(ROWS[i], batch_gen if i == 2 else others[i]) for i in order]
        batched = pick(logits[step, order], samplers)
        assert batched[order.index(2)] == alone


def test_pick_of_greedy_rows_is_the_argmax_and_leaves_no_generator_needed() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 5.0, -1.0]])
    picks = pick(logits, [(SamplingParams(top_logprobs=2), None), (SamplingParams(), None)])
    assert [p.id for p in picks] == [1, 0]  # ties go to the first index, as torch.argmax
    assert [i for i, _ in picks[0].top] == [1, 2] and picks[1].top == []
    assert picks[0].logprob == pytest.approx(float(torch.log_softmax(logits[0], dim=-1)[1]))


class ReadBacks:
    """Counts tensor-to-Python conversions (each one a device synchronisation on an accelerator).

    Patches the tensor class rather than using a torch function mode, which is thread-local: the batcher
    works on the model's thread.
    """

    NAMES = ("tolist", "item", "__bool__", "__int__", "__float__", "__index__")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.paused = False
        for name in self.NAMES:
            monkeypatch.setattr(torch.Tensor, name, self._counting(getattr(torch.Tensor, name)))

    def _counting(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def counted(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if not self.paused:
                self.count += 1
            return method(tensor, *args, **kwargs)

        return counted


def test_pick_reads_back_to_the_host_once_for_the_whole_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    # Top-p rows are left out: on a CPU the nucleus shortcut checks its candidates' mass on the host
    # (free there); on an accelerator it sorts instead, with no read-back.
    rows = [p for p in ROWS if p.top_p == 1.0]
    samplers = [(p, generator(p)) for p in rows]
    logits = torch.randn(len(rows), 800)
    reads = ReadBacks(monkeypatch)
    pick(logits, samplers)
    assert reads.count == 1


def test_batcher_reads_back_once_per_forward_pass(tiny_lm: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside the model's own forward (transformers' mask code reads the padding mask back once)."""
    prompts = ["Hello", "What is the capital of France?", "Café, naïve", "The Eiffel Tower was"]
    params = [replace(p, max_new_tokens=12) for p in ROWS if p.top_p == 1.0][: len(prompts)]
    ids = [build_prompt(tiny_lm.tokenizer, prompt=text).ids for text in prompts]
    calls: list[int] = []

    def forward(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        reads.paused = True
        try:
            return forward(*args, **kwargs)
        finally:
            reads.paused = False

    async def scenario() -> None:
        scheduler = Scheduler(tiny_lm, max_batch_size=4)
        batcher = scheduler.batcher
        await asyncio.gather(*(batcher.generate(i, p) for i, p in zip(ids, params, strict=True)))
        await scheduler.close()

    reads = ReadBacks(monkeypatch)
    with patched_forward(tiny_lm, forward):
        asyncio.run(scenario())
    assert len(calls) > len(prompts) and reads.count == len(calls)  # one per prefill, one per decode step


# --- the preallocated KV batch against a concatenating one ---


class ConcatBatch:
    """The reference: the previous KV batch, which pads and concatenates whole caches on every change."""

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.mask = torch.zeros((0, 0), dtype=torch.long)
        self.lengths: list[int] = []

    def add(self, cache: DynamicCache, length: int) -> None:
        keys = [t(layer.keys) for layer in cache.layers]
        values = [t(layer.values) for layer in cache.layers]
        if not self.lengths:
            self.keys, self.values = keys, values
            self.mask, self.lengths = torch.ones((1, length), dtype=torch.long), [length]
            return
        width = max(self.mask.shape[1], length)
        grow, pad = width - self.mask.shape[1], width - length

        def merged(mine: list[torch.Tensor], theirs: list[torch.Tensor]) -> list[torch.Tensor]:
            pairs = zip(mine, theirs, strict=True)
            return [torch.cat([F.pad(a, (0, 0, grow, 0)), F.pad(b, (0, 0, pad, 0))]) for a, b in pairs]

        self.keys, self.values = merged(self.keys, keys), merged(self.values, values)
        row = torch.zeros((1, width), dtype=torch.long)
        row[0, pad:] = 1
        self.mask = torch.cat([F.pad(self.mask, (grow, 0)), row])
        self.lengths.append(length)

    def keep(self, rows: list[int]) -> None:
        start = self.mask.shape[1] - max(self.lengths[r] for r in rows)
        self.keys = [k[rows, :, start:] for k in self.keys]
        self.values = [v[rows, :, start:] for v in self.values]
        self.mask = self.mask[rows, start:]
        self.lengths = [self.lengths[r] for r in rows]

    def step(self, lm: LoadedModel, last: list[int]) -> torch.Tensor:
        cache = DynamicCache()
        for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            cache.update(k, v, i)
        self.mask = torch.cat([self.mask, torch.ones((len(last), 1), dtype=torch.long)], dim=1)
        out = lm.model(
            input_ids=torch.tensor(last).unsqueeze(1),
            attention_mask=self.mask,
            position_ids=torch.tensor(self.lengths).unsqueeze(1),
            cache=cache,
            use_cache=True,
        )
        self.lengths = [n + 1 for n in self.lengths]
        self.keys = [t(layer.keys) for layer in out.cache.layers]
        self.values = [t(layer.values) for layer in out.cache.layers]
        return out.logits[:, -1]


def t(tensor: torch.Tensor | None) -> torch.Tensor:
    assert tensor is not None
    return tensor


def prefill(lm: LoadedModel, ids: list[int]) -> tuple[DynamicCache, int]:
    out = lm.model(input_ids=torch.tensor([ids]), use_cache=True)
    return out.cache, int(out.logits[0, -1].argmax())


def test_kv_batch_decodes_exactly_like_the_concatenating_cache(tiny_lm: LoadedModel) -> None:
    """Joins (shorter, longer than the window), leaves (first, middle, last) and enough steps to outgrow
    the buffers: every step's logits equal the concatenating cache's, row for row."""
    rng = random.Random(0)
    ours, theirs = KVBatch(tiny_lm.device), ConcatBatch()
    rows: list[tuple[int, int]] = []  # (row id, last token): the row order of ``ours``; ``theirs`` keeps its own
    order_theirs: list[int] = []
    next_id = 0
    with torch.inference_mode():
        for step in range(260):
            if step in (0, 1, 2, 40, 41, 90, 150, 151, 200) and len(rows) < 6:
                length = rng.choice([3, 9, 30, 70]) if step < 200 else 180
                ids = [rng.randrange(3, 300) for _ in range(length)]
                cache, first = prefill(tiny_lm, ids)
                theirs.add(cache, length)
                cache, _ = prefill(tiny_lm, ids)  # each batch takes its own copy
                ours.add(cache, length)
                rows.append((next_id, first))
                order_theirs.append(next_id)
                next_id += 1
            if step in (30, 60, 61, 120, 180, 230) and len(rows) > 1:
                leaving = [rows[0][0]] if step != 61 else [rows[len(rows) // 2][0], rows[-1][0]]
                order = ours.remove([i for i, (r, _) in enumerate(rows) if r in leaving])
                rows = [rows[i] for i in order]
                kept = [i for i, r in enumerate(order_theirs) if r not in leaving]
                theirs.keep(kept)
                order_theirs = [order_theirs[i] for i in kept]
            last_theirs = dict(rows)
            reference = theirs.step(tiny_lm, [last_theirs[r] for r in order_theirs])
            logits = tiny_lm.model(**ours.step_inputs([t for _, t in rows])).logits[:, -1]
            assert ours.lengths == [theirs.lengths[order_theirs.index(r)] for r, _ in rows]
            for i, (r, _) in enumerate(rows):
                torch.testing.assert_close(logits[i], reference[order_theirs.index(r)], rtol=0, atol=1e-5)
            rows = [(r, int(logits[i].argmax())) for i, (r, _) in enumerate(rows)]
    assert ours.relayouts >= 3  # row growth, a longer prompt, and the columns running out were all exercised


def storage(batch: KVBatch) -> list[int]:
    return [b.data_ptr() for b in batch.buffers]


def test_kv_batch_joins_leaves_and_steps_copy_no_whole_cache(tiny_lm: LoadedModel) -> None:
    with torch.inference_mode():
        batch = KVBatch(tiny_lm.device)
        for i in range(4):  # grow to four row slots, four different prompts of 20 tokens
            batch.add(prefill(tiny_lm, list(range(5 + i, 25 + i)))[0], 20)
        settled, relayouts = storage(batch), batch.relayouts
        before = [layer.keys.clone() for layer in batch.cache.layers]  # type: ignore[union-attr]
        remaining = batch.remove([1])  # the last row fills the hole: one row moves, nothing else
        assert remaining == [0, 3, 2]
        for old, layer in zip(before, batch.cache.layers, strict=True):  # type: ignore[union-attr]
            assert torch.equal(layer.keys, old[[0, 3, 2]])
        batch.add(prefill(tiny_lm, list(range(7, 19)))[0], 12)  # a shorter prompt joins a free slot
        for _ in range(40):
            tiny_lm.model(**batch.step_inputs([1] * len(batch)))
        batch.remove([0, 3])
        batch.add(prefill(tiny_lm, list(range(9, 40)))[0], 31)
        assert storage(batch) == settled and batch.relayouts == relayouts


def test_kv_batch_relayouts_are_amortised_over_many_steps(tiny_lm: LoadedModel) -> None:
    with torch.inference_mode():
        batch = KVBatch(tiny_lm.device)
        batch.add(prefill(tiny_lm, list(range(5, 25)))[0], 20)
        batch.add(prefill(tiny_lm, list(range(5, 25)))[0], 20)
        start = batch.relayouts
        steps = 400
        for _ in range(steps):
            tiny_lm.model(**batch.step_inputs([1, 2]))
        # The window grows to 420 columns; each relayout leaves at least half the width spare to the right.
        assert batch.relayouts - start <= 8 and batch.columns == 420


def test_kv_batch_refuses_an_unmergeable_cache_and_holds_a_serial_row_as_it_is(tiny_lm: LoadedModel) -> None:
    class OtherLayer(DynamicLayer):
        """Any layer kind but the plain dynamic and sliding-window ones (linear attention, ...)."""

    with torch.inference_mode():
        batch = KVBatch(tiny_lm.device)
        out = tiny_lm.model(input_ids=torch.tensor([[5, 6, 7]]), use_cache=True)
        for layer in out.cache.layers:
            layer.__class__ = OtherLayer
        with pytest.raises(ValueError, match="OtherLayer"):
            batch.add(out.cache, 3)
        assert len(batch) == 0
        batch.add_serial(SerialRow("cache", out, [5, 6, 7], tiny_lm.device))
        assert batch.cache is None and batch.columns == 3
        inputs = batch.step_inputs([8])
        assert inputs["cache"] is out.cache and batch.columns == 4
        assert cast(torch.Tensor, inputs["input_ids"]).tolist() == [[8]]
        with pytest.raises(ValueError, match="alone"):
            batch.add(prefill(tiny_lm, [5, 6, 7])[0], 3)
        batch.keep([])
        assert batch.serial is None and len(batch) == 0


# --- response bodies ---


def test_orjson_bodies_hold_the_same_json_and_non_finite_floats_become_null() -> None:
    body = {
        "text": 'Café, 東京 \u2028 "quoted" \\ \x00',
        "tokens": [{"id": 7, "logprob": -1e-05, "top": [[3, -0.1], [9, -2.5e-12]]}],
        "seed": 2**63 - 1,
    }
    assert json.loads(OrjsonResponse(body).body) == json.loads(JSONResponse(body).body)
    non_finite = {"scores": [float("nan"), float("inf"), -float("inf"), 1.5]}
    with pytest.raises(ValueError):
        JSONResponse(non_finite)  # what the routes answered before: a 500

    def refuse(constant: str) -> None:
        raise AssertionError(f"invalid JSON constant {constant}")

    assert json.loads(OrjsonResponse(non_finite).body, parse_constant=refuse) == {"scores": [None, None, None, 1.5]}
