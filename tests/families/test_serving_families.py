"""Serving every family of the zoo: load from a saved folder, generate (plain, chat, stream), and decode in a
batch exactly as transformers decodes alone; the batching check agrees with a real merge of every family's
cache, and /metrics says which models batch.

One app serves all families (``GLASSBOX_MODELS``), so each model is loaded, probed and calibrated once. The
reference for decoding is ``model.generate`` (greedy, its own cache) with its scores: the batch must give
the same tokens and the same log-probabilities, which catches a misplaced key even where greedy ids agree.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.api.app import create_app
from service.engine.generation import GenerationOutput
from service.engine.sampling import SamplingParams
from service.models.loaded import LoadedModel
from service.serving.cache_support import SerialRow, cache_support, is_mergeable
from service.serving.kv_batch import KVBatch
from service.serving.scheduler import Scheduler
from service.settings import Settings
from tests.conftest import wait_ready
from tests.families import zoo

#: Prompt ids of different lengths, the longest past the zoo's sliding windows (8) before decoding starts.
PROMPTS = [[1, 5, 9, 13, 17, 21, 25, 29, 33, 37, 41], [1, 7, 3], [1, 40, 41, 42, 43, 44]]
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("zoo")
    models = ",".join(f"{family}={zoo.save(family, root / family)}" for family in zoo.ALL)
    settings = Settings(
        models=models,
        cache_dir=Path(tmp_path_factory.mktemp("cache")),
        device="cpu",
        offline=True,
        warmup=False,
        max_context=64,  # short calibration passes at load (33 models)
    )
    with TestClient(create_app(settings)) as app_client:
        wait_ready(app_client, timeout=900)
        yield app_client


def served(client: TestClient, family: str) -> LoadedModel:
    return client.app.state.registry.get(family)  # type: ignore[attr-defined,no-any-return]


def sse_events(raw: str) -> list[tuple[str, Any]]:
    events = []
    for block in raw.replace("\r\n", "\n").split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


@pytest.mark.parametrize("family", zoo.ALL)
def test_family_generates_plain_chat_and_stream(client: TestClient, family: str) -> None:
    base = {"model": family, "max_new_tokens": 3}
    plain = client.post("/generate", json={**base, "prompt": "Hello"})
    assert plain.status_code == 200, plain.text
    assert len(plain.json()["tokens"]) <= 3
    chat = client.post("/generate", json={**base, "messages": [{"role": "user", "content": "Hello"}]})
    assert chat.status_code == 200, chat.text
    with client.stream("POST", "/generate", json={**base, "prompt": "Hello", "stream": True}) as response:
        assert response.status_code == 200
        events = sse_events("".join(response.iter_text()))
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "done" and set(kinds[:-1]) <= {"token"}, events
    assert [data["token"]["id"] for kind, data in events if kind == "token"] == [
        t["id"] for t in events[-1][1]["tokens"]
    ]
    assert events[-1][1]["tokens"] == plain.json()["tokens"]  # greedy: the stream is the plain answer


def reference(lm: LoadedModel, prompt: list[int]) -> tuple[list[int], list[torch.Tensor]]:
    """transformers' own greedy decode of ``prompt`` (ids up to the end-of-sequence token, and scores)."""
    with torch.inference_mode():
        out = lm.model.generate(  # type: ignore[operator]
            torch.tensor([prompt]),
            attention_mask=torch.ones((1, len(prompt)), dtype=torch.long),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
    ids = out.sequences[0, len(prompt) :].tolist()
    ends = [i for i, token in enumerate(ids) if token in lm.eos_ids]
    return ids[: ends[0]] if ends else ids, list(out.scores)


@pytest.mark.parametrize("family", zoo.ALL)
def test_family_batch_decodes_like_transformers_alone(client: TestClient, family: str) -> None:
    """Concurrent greedy requests (rows of different lengths, sliding windows passed) give transformers'
    tokens and log-probabilities; models that batch did share decode steps, the others decoded alone."""
    lm = served(client, family)
    sizes: list[int] = []

    async def together() -> list[GenerationOutput]:
        scheduler = Scheduler(lm, max_batch_size=8)
        step = scheduler.batcher._step

        def spy() -> None:
            sizes.append(scheduler.batcher.running)
            step()

        scheduler.batcher._step = spy  # type: ignore[method-assign]
        params = SamplingParams(max_new_tokens=NEW_TOKENS)
        try:
            outs = await asyncio.gather(*(scheduler.batcher.generate(p, params) for p in PROMPTS))
        finally:
            await scheduler.close()
        return [out for out, _ in outs]

    outputs = asyncio.run(together())
    for prompt, output in zip(PROMPTS, outputs, strict=True):
        ids, scores = reference(lm, prompt)
        assert output.ids == ids, (prompt, output.ids, ids)
        for token, score in zip(output.tokens, scores, strict=False):
            assert token.logprob == pytest.approx(float(score[0].float().log_softmax(-1)[token.id]), abs=1e-4)
    assert max(sizes) == (len(PROMPTS) if cache_support(lm.model).batching else 1), sizes


@pytest.mark.parametrize("family", zoo.ALL)
def test_family_batching_check_agrees_with_a_real_merge(client: TestClient, family: str) -> None:
    """The model batches exactly when its real cache is mergeable, and then merging two rows of different
    lengths and decoding past the sliding window gives each row's solo logits step after step."""
    lm = served(client, family)
    model, device = lm.model, lm.device
    support = cache_support(model)
    prompts = [PROMPTS[0], PROMPTS[1]]
    with torch.inference_mode():
        outs = [model(input_ids=torch.tensor([p]), use_cache=support.decode_mode != "recompute") for p in prompts]
        mergeable = support.decode_mode == "cache" and all(is_mergeable(out.cache) for out in outs)
        assert support.batching == mergeable, support
        if not mergeable:
            return
        solo = [SerialRow("cache", out, p, device) for out, p in zip(outs, prompts, strict=True)]
        fresh = [model(input_ids=torch.tensor([p]), use_cache=True) for p in prompts]
        batch = KVBatch(device)
        for out, p in zip(fresh, prompts, strict=True):
            batch.add(out.cache, len(p))
        for step in range(8):
            feed = [(p[step % len(p)] * 3 + step) % 300 for p in prompts]
            merged = model(**batch.step_inputs(feed)).logits[:, -1]
            for row, (serial, token) in enumerate(zip(solo, feed, strict=True)):
                alone = model(**serial.step_inputs(token)).logits[0, -1]
                torch.testing.assert_close(merged[row], alone, atol=1e-4, rtol=1e-4)


def metric(client: TestClient, name: str, model: str) -> float | None:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("model") == model:
                return float(sample.value)
    return None


@pytest.mark.parametrize("family", ["minimax", "rwkv", "recurrent_gemma", "jamba", "mistral_window", "gemma3"])
def test_family_concurrent_http_requests_all_answered_and_every_slot_freed(client: TestClient, family: str) -> None:
    """Concurrent /generate requests (MiniMax's used to hang the joining one and leak a slot): every one is
    answered 200 with its single-request answer, and the in-flight gauge is back to 0."""
    prompts = ["Hello", "The capital of France is", "What", "Glassbox explains why"]
    bodies = [{"model": family, "prompt": p, "max_new_tokens": 4} for p in prompts]
    single = [client.post("/generate", json=body).json() for body in bodies]
    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda body: client.post("/generate", json=body), bodies))
    assert [a.status_code for a in answers] == [200] * len(bodies), [a.text for a in answers]
    for answer, alone in zip(answers, single, strict=True):
        assert [t["id"] for t in answer.json()["tokens"]] == [t["id"] for t in alone["tokens"]]
        assert answer.json()["text"] == alone["text"]
    assert metric(client, "glassbox_inflight_requests", family) == 0


def test_metrics_say_which_models_batch(client: TestClient) -> None:
    batching = {
        sample.labels["model"]: sample.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for sample in family.samples
        if sample.name == "glassbox_model_batching"
    }
    for family in zoo.ALL:
        assert batching[family] == (1.0 if cache_support(served(client, family).model).batching else 0.0), family
    assert batching["llama_gqa"] == 1.0 and batching["mistral"] == 1.0 and batching["gemma2"] == 1.0
    assert batching["rwkv"] == 0.0 and batching["minimax"] == 0.0 and batching["recurrent_gemma"] == 0.0
